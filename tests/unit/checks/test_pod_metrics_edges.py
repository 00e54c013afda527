"""Pod metrics at the edges: the order pods and series come in, restarts that only some counters
show, windows of one request or no time, histograms with one observation or non-positive bounds, and
an IPv6 pod address."""

from __future__ import annotations

import math

import pytest
from aiohttp import web

from slotkeeper.checks.pod_metrics import PodMetrics, Series, derive, histogram_quantile, parse_pod_metrics
from slotkeeper.checks.scrape import scrape_pods

from .exposition import FakePod

REV = "a41b2e"
OLD = "5d8f9c"


def snapshot(pod: str, **series: Series) -> PodMetrics:
    return PodMetrics(pod=pod, series={("credit", version): s for version, s in series.items()})


def requests(success: float, failure: float = 0.0, count: float | None = None) -> Series:
    total = success + failure
    return Series(requests={"success": success, "failure": failure},
                  buckets={0.1: total, math.inf: total}, count=total if count is None else count, sum=0.0)


def test_a_new_pod_listed_first_does_not_hide_the_pods_that_can_be_compared():
    before = [snapshot("old", **{REV: requests(10)})]
    after = [snapshot("new", **{REV: requests(5)}), snapshot("old", **{REV: requests(18, 2)})]
    assert derive(before, after, 10.0, revision=REV)["error_ratio"] == 0.2


def test_another_versions_series_listed_first_does_not_hide_the_revisions_own():
    # A long-lived process that served the old version first, then the candidate's.
    pod = FakePod().serve(5, 0.02, version=OLD).serve(10, 0.02)
    before = [parse_pod_metrics("p", pod.text())]
    pod.serve(3, 0.02).serve(1, 0.02, "failure")
    after = [parse_pod_metrics("p", pod.text())]
    assert list(after[0].series) == [("credit", OLD), ("credit", REV)]
    assert derive(before, after, 2.0, revision=REV) == {
        "error_ratio": 0.25, "latency_p95_seconds": pytest.approx(0.0475), "request_rate": 2.0,  # 4 in (0, 0.05]
    }


def test_a_restart_is_seen_from_any_counter_going_down_even_when_the_count_overtook():
    """Restarted within the window: more requests since than before it (count 10 -> 12), but the
    failures went down (8 -> 1). The window is what the new process counted, not a negative delta."""
    before = [snapshot("p", **{REV: requests(2, 8)})]
    after = [snapshot("p", **{REV: requests(11, 1)})]
    assert derive(before, after, 10.0, revision=REV)["error_ratio"] == pytest.approx(1 / 12)


def test_a_window_of_a_single_failing_request_has_an_error_ratio():
    before = [snapshot("p", **{REV: requests(4)})]
    after = [snapshot("p", **{REV: requests(4, 1)})]
    assert derive(before, after, 10.0, revision=REV)["error_ratio"] == 1.0


@pytest.mark.parametrize("elapsed, rate", [(0.0, None), (0.5, 8.0)])
def test_request_rate_needs_time_to_have_passed(elapsed, rate):
    before = [snapshot("p", **{REV: requests(4)})]
    after = [snapshot("p", **{REV: requests(8)})]
    assert derive(before, after, elapsed, revision=REV)["request_rate"] == rate


def test_one_observation_has_a_quantile():
    assert histogram_quantile(0.95, {0.1: 0.0, 0.5: 1.0, math.inf: 1.0}) == pytest.approx(0.1 + 0.4 * 0.95)


def test_a_rank_in_a_first_bucket_with_a_negative_bound_answers_that_bound():
    # PromQL: the lowest bucket is not interpolated from 0 when its bound is not positive.
    assert histogram_quantile(0.25, {-1.0: 5.0, 1.0: 10.0, math.inf: 10.0}) == -1.0


def test_requests_of_one_outcome_in_several_samples_are_added_up():
    text = (
        "# TYPE slotkeeper_requests_total counter\n"
        f'slotkeeper_requests_total{{model="credit",version="{REV}",outcome="success",route="infer"}} 3\n'
        f'slotkeeper_requests_total{{model="credit",version="{REV}",outcome="success",route="explain"}} 4\n'
    )
    assert parse_pod_metrics("p", text).series[("credit", REV)].requests == {"success": 7.0}


async def test_a_pod_with_an_ipv6_address_is_scraped(serve, session):
    pod = FakePod().serve(2, 0.02)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=pod.text(), content_type="text/plain")

    try:
        base = await serve([web.get("/metrics", metrics)], host="::1")
    except OSError:  # pragma: no cover - a machine without IPv6 loopback
        pytest.skip("no IPv6 loopback")
    port = int(base.rsplit(":", 1)[1])
    scrape = await scrape_pods(session, [("credit-green-1", "::1")], port, timeout=2)
    assert scrape.failures == {} and [p.pod for p in scrape.pods] == ["credit-green-1"]
