"""Prometheus metrics: the contract the operator's rollout checks read.

Only infer requests addressed to the served model are recorded. Every such
request ends in exactly one counter increment (outcome "success" for 2xx,
"failure" for anything else, 4xx included) and one histogram observation,
so the histogram's _count equals the counter's sum.

With one worker the metrics live in a private registry; with several
(prometheus_client multiprocess mode, PROMETHEUS_MULTIPROC_DIR set before
prometheus_client is imported) each scrape aggregates every worker's files.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REQUESTS_TOTAL = "slotkeeper_requests"  # exposed as slotkeeper_requests_total
REQUEST_DURATION = "slotkeeper_request_duration_seconds"
REQUESTS_IN_FLIGHT = "slotkeeper_requests_in_flight"
MODEL_READY = "slotkeeper_model_ready"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class ModelMetrics:
    """The metric children for one (model, version), bound once so the hot path does no label lookups."""

    def __init__(self, model: str, version: str, registry: CollectorRegistry | None = None) -> None:
        # In multiprocess mode metrics must be registered nowhere: the
        # MultiProcessCollector reads them back from the files.
        registry = None if multiprocess_enabled() else (registry or CollectorRegistry())
        self.registry = registry
        kw = {"registry": registry}
        requests = Counter(
            REQUESTS_TOTAL,
            "Infer requests by outcome (success: 2xx, failure: anything else).",
            ["model", "version", "outcome"],
            **kw,
        )
        duration = Histogram(
            REQUEST_DURATION,
            "Infer request latency, body read to response sent.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            **kw,
        )
        in_flight = Gauge(
            REQUESTS_IN_FLIGHT, "Infer requests being handled.", ["model", "version"], multiprocess_mode="livesum", **kw
        )
        ready = Gauge(
            MODEL_READY,
            "1 once the model is loaded and serving, else 0.",
            ["model", "version"],
            multiprocess_mode="livemin",
            **kw,
        )
        self.success = requests.labels(model, version, "success")
        self.failure = requests.labels(model, version, "failure")
        self.duration = duration.labels(model, version)
        self.in_flight = in_flight.labels(model, version)
        self.ready = ready.labels(model, version)
        self.ready.set(0)

    def record(self, ok: bool, seconds: float) -> None:
        (self.success if ok else self.failure).inc()
        self.duration.observe(seconds)

    def render(self) -> bytes:
        if self.registry is not None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
