"""Pod /metrics text -> snapshots -> error ratio, p95 and rate between two scrapes."""

from __future__ import annotations

import math

import pytest

from slotkeeper.checks.pod_metrics import Series, derive, histogram_quantile, parse_pod_metrics

from .exposition import FakePod

REV = "a41b2e"
OLD = "5d8f9c"


def scrape(**pods: FakePod):
    return [parse_pod_metrics(name, pod.text()) for name, pod in pods.items()]


def test_parse_reads_counter_and_histogram_of_each_model_and_version():
    pod = FakePod().serve(3, 0.07).serve(1, 0.3, "failure").serve(2, 0.01, version=OLD)
    snapshot = parse_pod_metrics("credit-green-1", pod.text())

    assert snapshot.pod == "credit-green-1"
    assert set(snapshot.series) == {("credit", REV), ("credit", OLD)}
    series = snapshot.series[("credit", REV)]
    assert series.requests == {"success": 3.0, "failure": 1.0}
    assert series.buckets == {0.05: 0.0, 0.1: 3.0, 0.25: 3.0, 0.5: 4.0, 1.0: 4.0, math.inf: 4.0}
    assert series.count == 4.0
    assert series.sum == pytest.approx(0.51)


def test_parse_rejects_text_that_is_not_exposition_format():
    with pytest.raises(ValueError):
        parse_pod_metrics("p", "<html>not metrics</html>\n")


def test_error_ratio_p95_and_rate_come_from_the_deltas_summed_over_pods():
    a, b = FakePod().serve(50, 0.01), FakePod().serve(50, 0.01)  # before the window
    before = scrape(a=a, b=b)
    a.serve(90, 0.07)
    b.serve(5, 0.07).serve(5, 0.3, "failure")
    derived = derive(before, scrape(a=a, b=b), 10.0, revision=REV)

    assert derived["error_ratio"] == pytest.approx(5 / 100)
    assert derived["request_rate"] == pytest.approx(10.0)
    # rank 95 of 100 is the last of the 95 observations in (0.05, 0.1]: the top of that bucket
    assert derived["latency_p95_seconds"] == pytest.approx(0.1)


def test_p95_interpolates_inside_the_bucket_like_histogram_quantile():
    a = FakePod()
    before = scrape(a=a)
    a.serve(90, 0.01).serve(10, 0.3)  # rank 95: 5 of the 10 observations in (0.25, 0.5]
    assert derive(before, scrape(a=a), 10.0, revision=REV)["latency_p95_seconds"] == pytest.approx(0.375)


def test_a_pod_of_another_revision_never_pollutes_the_numbers():
    candidate, stable = FakePod(), FakePod(version=OLD)
    before = scrape(c=candidate, s=stable)
    candidate.serve(10, 0.07)
    stable.serve(1000, 0.9, "failure")
    derived = derive(before, scrape(c=candidate, s=stable), 5.0, revision=REV)
    assert derived == {"error_ratio": 0.0, "latency_p95_seconds": pytest.approx(0.0975), "request_rate": 2.0}


def test_a_counter_reset_takes_the_current_values_as_the_delta():
    first_life = FakePod().serve(100, 0.01)
    before = scrape(a=first_life)
    restarted = FakePod().serve(3, 0.07).serve(1, 0.07, "failure")  # same pod name, a new process
    derived = derive(before, scrape(a=restarted), 10.0, revision=REV)
    assert derived["error_ratio"] == pytest.approx(0.25)
    assert derived["request_rate"] == pytest.approx(0.4)


def test_a_series_created_during_the_window_counts_from_zero():
    a = FakePod().serve(10, 0.01)  # no failure yet: prometheus_client has no outcome="failure" series
    before = scrape(a=a)
    a.serve(1, 0.01, "failure").serve(1, 0.01)
    assert derive(before, scrape(a=a), 1.0, revision=REV)["error_ratio"] == pytest.approx(0.5)


def test_only_pods_in_both_scrapes_count():
    a, new = FakePod(), FakePod().serve(50, 0.9, "failure")  # e.g. validation requests before the window
    before = scrape(a=a)
    a.serve(10, 0.01)
    new.serve(10, 0.9, "failure")
    derived = derive(before, scrape(a=a, new=new), 10.0, revision=REV)
    assert derived["error_ratio"] == 0.0
    assert derived["request_rate"] == pytest.approx(1.0)


def test_a_vanished_pod_drops_out():
    a, gone = FakePod(), FakePod()
    before = scrape(a=a, gone=gone)
    a.serve(4, 0.01, "failure")
    assert derive(before, scrape(a=a), 2.0, revision=REV)["error_ratio"] == 1.0


def test_no_pod_in_both_scrapes_is_no_data():
    a = FakePod().serve(10, 0.01)
    assert derive([], scrape(a=a), 10.0, revision=REV) == \
        {"error_ratio": None, "latency_p95_seconds": None, "request_rate": None}


def test_no_request_in_the_window_is_no_ratio_no_latency_and_a_zero_rate():
    a = FakePod().serve(10, 0.01)
    before = scrape(a=a)
    assert derive(before, scrape(a=a), 10.0, revision=REV) == \
        {"error_ratio": None, "latency_p95_seconds": None, "request_rate": 0.0}


@pytest.mark.parametrize("buckets, q, expected", [
    ({}, 0.95, None),
    ({0.1: 5.0, 0.5: 10.0}, 0.95, None),                              # no +Inf bucket
    ({0.1: 0.0, math.inf: 0.0}, 0.95, None),                          # no observations
    ({0.1: 10.0, math.inf: 10.0}, 0.5, 0.05),                         # first bucket starts at 0
    ({0.1: 0.0, 0.5: 0.0, math.inf: 10.0}, 0.95, 0.5),                # in +Inf: the largest finite bound
    ({-1.0: 10.0, 0.0: 10.0, math.inf: 10.0}, 0.5, -1.0),             # a non-positive first bound
    ({0.1: 4.0, 0.2: 3.0, 0.4: 10.0, math.inf: 10.0}, 0.5, 0.2 + 0.2 * (1 / 6)),  # a dip is forced monotonic
])
def test_histogram_quantile(buckets, q, expected):
    result = histogram_quantile(q, buckets)
    assert result == (pytest.approx(expected) if expected is not None else None)


def test_series_default_is_empty():
    assert Series().requests == {} and Series().count == 0.0


def test_a_bucket_without_le_is_malformed_not_a_crash():
    with pytest.raises(ValueError, match="malformed"):
        parse_pod_metrics("p", 'slotkeeper_request_duration_seconds_bucket{model="m",version="v"} 1\n')
