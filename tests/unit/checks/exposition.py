"""The serving image's metrics as prometheus_client really writes them, for tests."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0)


class FakePod:
    """A pod's metrics registry: record requests, then read /metrics text."""

    def __init__(self, model: str = "credit", version: str = "a41b2e") -> None:
        self.model, self.version = model, version
        self.registry = CollectorRegistry()
        self.requests = Counter("slotkeeper_requests_total", "Inference requests by outcome.",
                                ["model", "version", "outcome"], registry=self.registry)
        self.duration = Histogram("slotkeeper_request_duration_seconds", "Inference latency.",
                                  ["model", "version"], buckets=BUCKETS, registry=self.registry)

    def serve(self, count: int, seconds: float, outcome: str = "success", version: str | None = None) -> FakePod:
        version = version or self.version
        for _ in range(count):
            self.requests.labels(self.model, version, outcome).inc()
            self.duration.labels(self.model, version).observe(seconds)
        return self

    def text(self) -> str:
        return generate_latest(self.registry).decode()
