"""The serving image's /metrics -> per-pod snapshots -> the numbers ``source: pods`` checks judge. Pure.

The serving image promises two metrics (labels ``model``, ``version``; ``version`` is the revision hash,
from ``SLOTKEEPER_MODEL_VERSION``):

- ``slotkeeper_requests_total{model,version,outcome}``: a counter, ``outcome`` is success | failure;
- ``slotkeeper_request_duration_seconds{model,version}``: a histogram (``_bucket{le}``, ``_count``, ``_sum``).

:func:`derive` compares two scrapes, like PromQL's ``increase`` over the window between them:

- Only series whose ``version`` is the revision under test count, so a pod of another revision (or an
  old series kept by a long-lived process) never pollutes the numbers.
- Only pods present in **both** scrapes count. A pod's counters hold everything since it started:
  for a pod missing from the previous scrape we cannot tell which part falls in the window (it may
  just have failed that scrape, and a fresh candidate's first requests are the validation requests,
  some of them deliberately bad). A new pod counts from its second scrape on, one interval later.
- Within a pod present in both, a series missing from the previous scrape counts from zero:
  prometheus_client creates a labelled series on first use (the first failure creates
  ``outcome="failure"``), and the pod did answer, so the series really was zero.
- A counter reset (the container restarted under the same pod name): when any value of a pod's series
  went down, the whole series restarted, so its current values are the window's delta, like PromQL's
  ``rate``; judging the series as a whole keeps its histogram buckets consistent with each other.
  As in PromQL, a restart whose new counts overtake the old ones within one window goes unnoticed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from prometheus_client.parser import text_string_to_metric_families

REQUESTS = "slotkeeper_requests_total"
DURATION = "slotkeeper_request_duration_seconds"
DERIVED_METRICS = ("error_ratio", "latency_p95_seconds", "request_rate")


@dataclass(frozen=True)
class Series:
    """One model and version on one pod: cumulative counts as scraped."""
    requests: Mapping[str, float] = field(default_factory=dict)  # outcome -> count
    buckets: Mapping[float, float] = field(default_factory=dict)  # upper bound (le) -> cumulative count
    count: float = 0.0
    sum: float = 0.0


@dataclass(frozen=True)
class PodMetrics:
    """One pod's scrape: its series by (model, version)."""
    pod: str
    series: Mapping[tuple[str, str], Series]


def parse_pod_metrics(pod: str, text: str) -> PodMetrics:
    """Parse Prometheus text exposition; raises ValueError when the text is not exposition format."""
    found: dict[tuple[str, str], dict] = {}

    def series(labels: Mapping[str, str]) -> dict:
        key = (labels.get("model", ""), labels.get("version", ""))
        return found.setdefault(key, {"requests": {}, "buckets": {}, "count": 0.0, "sum": 0.0})

    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == REQUESTS:
                    outcome = sample.labels.get("outcome", "")
                    requests = series(sample.labels)["requests"]
                    requests[outcome] = requests.get(outcome, 0.0) + sample.value
                elif sample.name == f"{DURATION}_bucket":
                    series(sample.labels)["buckets"][float(sample.labels["le"])] = sample.value
                elif sample.name == f"{DURATION}_count":
                    series(sample.labels)["count"] = sample.value
                elif sample.name == f"{DURATION}_sum":
                    series(sample.labels)["sum"] = sample.value
    except (KeyError, IndexError, TypeError) as error:  # the parser's other ways of saying "malformed"
        raise ValueError(f"malformed exposition: {error!r}") from None
    return PodMetrics(pod=pod, series={key: Series(**values) for key, values in found.items()})


def derive(
    previous: Sequence[PodMetrics], current: Sequence[PodMetrics], elapsed_seconds: float, *, revision: str,
) -> dict[str, float | None]:
    """``error_ratio``, ``latency_p95_seconds`` and ``request_rate`` of ``revision`` between two scrapes.

    None means no data: no pod in both scrapes (all three), no request (error ratio), no observation
    (p95). A window with comparable pods and no request has a real ``request_rate`` of 0.
    """
    before = {pod.pod: pod for pod in previous}
    requests: dict[str, float] = {}
    buckets: dict[float, float] = {}
    compared = 0
    for pod in current:
        if pod.pod not in before:
            continue
        compared += 1
        for (model, version), now in pod.series.items():
            if version != revision:
                continue
            was = before[pod.pod].series.get((model, version), Series())
            delta = _delta(was, now)
            _add(requests, delta.requests)
            _add(buckets, delta.buckets)
    if compared == 0:
        return dict.fromkeys(DERIVED_METRICS)
    total = sum(requests.values())
    return {
        "error_ratio": requests.get("failure", 0.0) / total if total > 0 else None,
        "latency_p95_seconds": histogram_quantile(0.95, buckets),
        "request_rate": total / elapsed_seconds if elapsed_seconds > 0 else None,
    }


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile of cumulative ``buckets`` (le -> count), interpolated like PromQL's histogram_quantile.

    Linear inside the bucket holding the rank; the first bucket starts at 0 (when its bound is
    positive); a rank in the +Inf bucket answers the largest finite bound. None without observations
    or without a +Inf bucket (PromQL's NaN).
    """
    bounds = sorted(buckets)
    if len(bounds) < 2 or not math.isinf(bounds[-1]):
        return None
    counts, highest = [], 0.0
    for bound in bounds:  # summed or reset-adjusted buckets may dip; PromQL forces them monotonic too
        highest = max(highest, buckets[bound])
        counts.append(highest)
    observations = counts[-1]
    if observations <= 0:
        return None
    rank = q * observations
    last = len(counts) - 1
    index = next((i for i in range(last) if counts[i] >= rank), last)
    if index == last:
        return bounds[-2]
    if index == 0 and bounds[0] <= 0:
        return bounds[0]
    start, below = (bounds[index - 1], counts[index - 1]) if index > 0 else (0.0, 0.0)
    in_bucket = counts[index] - below
    return start + (bounds[index] - start) * ((rank - below) / in_bucket)


def _delta(was: Series, now: Series) -> Series:
    """What ``now`` added since ``was``; the whole of ``now`` when the series restarted in between."""
    pairs = [(now.requests, was.requests), (now.buckets, was.buckets)]
    restarted = now.count < was.count or any(
        value < old.get(key, 0.0) for new, old in pairs for key, value in new.items()
    )
    if restarted:
        return now
    return Series(
        requests={k: v - was.requests.get(k, 0.0) for k, v in now.requests.items()},
        buckets={k: v - was.buckets.get(k, 0.0) for k, v in now.buckets.items()},
        count=now.count - was.count, sum=now.sum - was.sum,
    )


def _add(total: dict, values: Mapping) -> None:
    for key, value in values.items():
        total[key] = total.get(key, 0.0) + value
