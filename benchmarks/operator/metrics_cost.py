"""What the operator's metrics cost (README "Metrics"): the per-pass observation of one endpoint's
status, and one scrape of /metrics with N endpoints. In-process, no cluster.

    python benchmarks/operator/metrics_cost.py [--endpoints 1000]

Prints the figures and writes them to benchmarks/operator/results-metrics.json."""

from __future__ import annotations

import argparse
import json
import timeit
from pathlib import Path

from prometheus_client import generate_latest

from slotkeeper.metrics import OperatorMetrics

TIME = "2026-12-01T12:00:00Z"


def typical_status() -> dict:
    """A Healthy endpoint with a full history (revisionHistoryLimit 10) and six conditions."""
    return {
        "phase": "Healthy", "activeSlot": "blue", "stableRevision": "r9", "traffic": {"blue": 100, "green": 0},
        "slots": {"blue": {"revision": "r9", "replicas": 2, "readyReplicas": 2}, "green": {"revision": "r8"}},
        "history": [{"revision": f"r{i}", "outcome": "Promoted", "reason": "Validated", "time": TIME,
                     "modelUri": "file:///m"} for i in range(10)],
        "conditions": [{"type": kind, "status": "True", "reason": "X", "message": "m", "lastTransitionTime": TIME}
                       for kind in ("Ready", "Progressing", "Degraded", "RolledBack", "Stalled", "Reconciling")],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoints", type=int, default=1000)
    args = parser.parse_args()
    metrics, status = OperatorMetrics(), typical_status()
    passes = 20000
    per_pass = timeit.timeit(lambda: metrics.observe_endpoint(("default", "credit"), status, monitored=False),
                             number=passes) / passes
    for index in range(args.endpoints):
        metrics.observe_endpoint(("default", f"model-{index}"), status, monitored=True)
    scrapes = 50
    per_scrape = timeit.timeit(lambda: generate_latest(metrics.registry), number=scrapes) / scrapes
    results = {"observe_per_pass_us": round(per_pass * 1e6, 1), "endpoints": args.endpoints,
               "scrape_ms": round(per_scrape * 1e3, 1), "scrape_bytes": len(generate_latest(metrics.registry))}
    print(json.dumps(results, indent=2))
    (Path(__file__).with_name("results-metrics.json")).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
