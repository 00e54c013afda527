"""Verdicts, streaks and the promotion rule of metric checks."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest

from slotkeeper.api import CheckStatus, MetricCheck
from slotkeeper.checks.verdicts import (Verdict, check_state, due, evaluate, next_check_status, next_due,
                                        status_for, summarise_checks)
from slotkeeper.clock import format_time

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
REV = "a41b2e"


def check(**fields) -> MetricCheck:
    return MetricCheck(**{"name": "errors", "source": "pods", "metric": "error_ratio", "max": 0.05, **fields})


def run(c: MetricCheck, values: list[float | None], revision: str = REV, start: CheckStatus | None = None):
    """Evaluate ``values`` in order, one interval apart; the statuses after each."""
    status, statuses = start, []
    for i, value in enumerate(values):
        now_text = format_time(NOW + timedelta(seconds=10 * i))
        status = next_check_status(c, status, revision, evaluate(c, value), now_text)
        statuses.append(status)
    return statuses


# ------------------------------------------------------------------------------------ one verdict


@pytest.mark.parametrize("bounds, value, outcome, message", [
    ({"max": 0.05}, 0.01, "Pass", "error_ratio 0.01 is within max 0.05"),
    ({"max": 0.05}, 0.05, "Pass", "error_ratio 0.05 is within max 0.05"),  # max is inclusive
    ({"max": 0.05}, 0.050001, "Fail", "error_ratio 0.050001 is above max 0.05"),
    ({"min": 1.0, "max": None}, 1.0, "Pass", "error_ratio 1 is within min 1"),  # min is inclusive
    ({"min": 1.0, "max": None}, 0.5, "Fail", "error_ratio 0.5 is below min 1"),
    ({"min": 0.1, "max": 0.5}, 0.3, "Pass", "error_ratio 0.3 is within [0.1, 0.5]"),
    ({"min": 0.1, "max": 0.5}, 0.09, "Fail", "error_ratio 0.09 is below min 0.1"),
    ({"min": 0.1, "max": 0.5}, 0.51, "Fail", "error_ratio 0.51 is above max 0.5"),
    ({"max": 0.05}, 0.0, "Pass", "error_ratio 0 is within max 0.05"),
    # never "0.05 is above max 0.05"
    ({"max": 0.05}, 0.05000000000000001, "Fail", "error_ratio 0.05000000000000001 is above max 0.05"),
])
def test_finite_values_pass_within_inclusive_bounds_and_fail_outside(bounds, value, outcome, message):
    verdict = evaluate(check(**bounds), value)
    assert (verdict.outcome, verdict.value, verdict.message) == (outcome, value, message)


@pytest.mark.parametrize("value, says", [
    (None, "no data"), (math.nan, "NaN"), (math.inf, "+Inf"), (-math.inf, "-Inf"),
])
def test_missing_nan_and_infinite_values_are_inconclusive_and_say_why(value, says):
    verdict = evaluate(check(), value)
    assert verdict.outcome == "Inconclusive"
    assert says in verdict.message


def test_a_prometheus_check_calls_its_number_value():
    c = MetricCheck(name="p95", source="prometheus", address="http://prom:9090", query="q", max=0.3)
    assert evaluate(c, 0.4).message == "value 0.4 is above max 0.3"


# --------------------------------------------------------------------------------------- streaks


def test_failure_limit_is_reached_after_that_many_consecutive_fails():
    c = check(failure_limit=3)
    statuses = run(c, [0.5, 0.5, 0.5])
    assert [s.consecutive_failures for s in statuses] == [1, 2, 3]
    assert [check_state(c, s) for s in statuses] == ["ok", "ok", "failed"]
    assert statuses[-1].verdict == "Fail" and statuses[-1].last_value == 0.5


def test_a_pass_resets_the_failure_streak():
    c = check(failure_limit=2)
    statuses = run(c, [0.5, 0.01, 0.5])
    assert [s.consecutive_failures for s in statuses] == [1, 0, 1]
    assert check_state(c, statuses[-1]) == "ok"


def test_no_data_between_two_failures_keeps_the_failure_streak():
    c = check(failure_limit=2)
    statuses = run(c, [0.5, None, 0.5])
    assert [(s.consecutive_failures, s.consecutive_inconclusive) for s in statuses] == [(1, 0), (1, 1), (2, 0)]
    assert check_state(c, statuses[-1]) == "failed"


def test_inconclusive_limit_stalls_and_a_conclusive_verdict_lifts_it():
    c = check(inconclusive_limit=3)
    statuses = run(c, [None, math.nan, None, 0.01])
    assert [s.consecutive_inconclusive for s in statuses] == [1, 2, 3, 0]
    assert [check_state(c, s) for s in statuses] == ["ok", "ok", "stalled", "ok"]
    assert statuses[1].last_value is None  # NaN is not stored: it does not survive JSON


def test_failed_wins_over_stalled():
    c = check(failure_limit=1, inconclusive_limit=1)
    status = CheckStatus(name="errors", revision=REV, verdict="Inconclusive", consecutive_failures=1,
                         consecutive_inconclusive=1, last_run_time=format_time(NOW))
    assert check_state(c, status) == "failed"


def test_a_status_of_another_revision_counts_as_none():
    c = check(failure_limit=2)
    old = run(c, [0.5], revision="5d8f9c")[-1]
    assert run(c, [0.5], start=old)[-1].consecutive_failures == 1
    assert run(c, [0.5], revision="5d8f9c", start=old)[-1].consecutive_failures == 2


def test_never_run_is_ok():
    assert check_state(check(), None) == "ok"


# ---------------------------------------------------------------------------------------- timing


def ran_at(moment: datetime, revision: str = REV) -> CheckStatus:
    return CheckStatus(name="errors", revision=revision, verdict="Pass", last_run_time=format_time(moment))


@pytest.mark.parametrize("status, is_due", [
    (None, True),
    (ran_at(NOW - timedelta(seconds=9)), False),
    (ran_at(NOW - timedelta(seconds=10)), True),
    (ran_at(NOW - timedelta(seconds=9), revision="5d8f9c"), True),
    (ran_at(NOW + timedelta(hours=1)), True),  # the clock went back: run rather than go silent
])
def test_a_check_is_due_when_its_interval_passed_or_it_never_ran_for_the_revision(status, is_due):
    assert due(check(interval_seconds=10), status, REV, NOW) is is_due


def test_next_due_is_the_end_of_the_interval():
    c = check(interval_seconds=10)
    assert next_due(c, ran_at(NOW - timedelta(seconds=4)), REV, NOW) == NOW + timedelta(seconds=6)
    assert next_due(c, None, REV, NOW) == NOW


# ------------------------------------------------------------------------------ promotion rule


def test_status_for_ignores_other_revisions():
    statuses = [ran_at(NOW, "5d8f9c"), ran_at(NOW)]
    assert status_for(statuses, "errors", REV) is statuses[1]
    assert status_for(statuses, "errors", "other") is None


def test_analysis_passes_only_when_every_check_latest_verdict_is_pass():
    errors, p95 = check(), check(name="p95", metric="latency_p95_seconds", max=0.3)
    both_pass = run(errors, [0.01])[-1], run(p95, [0.1])[-1]
    assert summarise_checks([errors, p95], both_pass, REV).state == "passed"

    one_inconclusive = run(errors, [0.01])[-1], run(p95, [0.1, None])[-1]
    summary = summarise_checks([errors, p95], one_inconclusive, REV)
    assert summary.state == "pending"
    assert summary.message == 'waiting for a passing verdict from "p95" (Inconclusive)'

    not_run = [run(errors, [0.01])[-1]]
    assert summarise_checks([errors, p95], not_run, REV).message == \
        'waiting for a passing verdict from "p95" (not run yet)'

    other_revision = run(errors, [0.01], revision="5d8f9c")[-1], run(p95, [0.1])[-1]
    assert summarise_checks([errors, p95], other_revision, REV).state == "pending"


def test_a_fail_below_the_limit_holds_analysis_and_at_the_limit_fails_it():
    c = check(failure_limit=2)
    assert summarise_checks([c], run(c, [0.5]), REV).state == "pending"
    summary = summarise_checks([c], [run(c, [0.5, 0.5])[-1]], REV)
    assert summary.state == "failed"
    assert summary.message == 'check "errors" failed 2 time(s) in a row: error_ratio 0.5 is above max 0.05'


def test_stalled_checks_are_named():
    c = check(inconclusive_limit=2)
    summary = summarise_checks([c], [run(c, [None, None])[-1]], REV)
    assert summary.state == "stalled"
    assert summary.message == 'check "errors" inconclusive 2 time(s) in a row: error_ratio: no data'


def test_no_checks_pass():
    assert summarise_checks([], [], REV).state == "passed"


def test_verdicts_are_values():
    assert Verdict.inconclusive("prometheus down") == Verdict("Inconclusive", None, "prometheus down")


def test_a_check_that_ran_this_very_moment_is_not_due():
    assert due(check(interval_seconds=10), ran_at(NOW), REV, NOW) is False


def test_two_stalled_or_two_pending_checks_are_each_named():
    errors, p95 = check(inconclusive_limit=2), check(name="p95", metric="latency_p95_seconds", max=0.3,
                                                      inconclusive_limit=2)
    stalled = summarise_checks([errors, p95], [run(errors, [None, None])[-1], run(p95, [None, None])[-1]], REV)
    assert stalled.message == ('check "errors" inconclusive 2 time(s) in a row: error_ratio: no data; '
                               'check "p95" inconclusive 2 time(s) in a row: latency_p95_seconds: no data')
    pending = summarise_checks([errors, p95], [], REV)
    assert pending.message == 'waiting for a passing verdict from "errors" (not run yet), "p95" (not run yet)'


def test_small_bounds_are_written_as_people_write_them():
    assert evaluate(check(max=0.00001), 0.5).message == "error_ratio 0.5 is above max 1e-05"
