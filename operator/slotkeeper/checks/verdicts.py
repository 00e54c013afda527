"""Metric check verdicts and the streaks that turn verdicts into a rollout's fate. Pure.

One evaluation of a check gives a :class:`Verdict`:

- **Pass**: a finite value within ``[min, max]`` (both bounds inclusive, either may be absent).
- **Fail**: a finite value outside them.
- **Inconclusive**: no usable value: no data (no requests in the window, an empty Prometheus vector,
  JSON null), NaN (PromQL's answer to 0/0), ±Inf, or a source that could not be asked
  (:class:`MetricUnavailable`: Prometheus down, a web check answering 500, ...).

``status.checks`` keeps, per check and revision, two streaks (:func:`next_check_status`):

- a Pass resets both;
- a Fail adds one to ``consecutiveFailures`` and resets ``consecutiveInconclusive``;
- an Inconclusive adds one to ``consecutiveInconclusive`` and leaves ``consecutiveFailures`` as it is:
  a gap in the data is no evidence that the candidate recovered, so Fail, no data, Fail still reaches
  ``failureLimit: 2``. "Consecutive" failures therefore means "with no Pass in between".

What inconclusive does: it neither passes nor fails. :func:`check_state` says

- ``failed`` when ``consecutiveFailures >= failureLimit``: the rollout reverts;
- ``stalled`` when ``consecutiveInconclusive >= inconclusiveLimit``: the decision pauses the rollout
  where it is (traffic unchanged, condition ``Progressing=False`` reason ``ChecksInconclusive``) and
  keeps running the checks: the first conclusive verdict ends the streak and the stall with it
  (a Pass resumes; Fails count towards ``failureLimit``). A person may also ``promote`` or ``abort``;
- ``ok`` otherwise. Failed wins over stalled: reverting is the safe side.

**Promotion rule** (:func:`summarise_checks`): analysis completes, at or after its end, only when every
check has run for the candidate revision and its latest verdict is Pass. A latest Inconclusive (or a
Fail still below ``failureLimit``) extends the analysis until the next evaluation. No data is never
evidence of health: a candidate that gets no traffic, or whose metrics cannot be read, is not
promoted blind; it waits, and stalls after ``inconclusiveLimit`` evaluations for a person to decide.
The cost is at most a few ``intervalSeconds`` of extra analysis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable, Literal, Sequence

from ..clock import parse_time
from ..api import CheckStatus, MetricCheck

Outcome = Literal["Pass", "Fail", "Inconclusive"]
CheckState = Literal["ok", "failed", "stalled"]


class MetricUnavailable(Exception):
    """A source could not produce a value (unreachable, an error reply, an ambiguous answer).

    Not the candidate's fault as far as we know: the caller records an Inconclusive verdict with this
    message (:meth:`Verdict.inconclusive`).
    """


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    value: float | None
    message: str

    @classmethod
    def inconclusive(cls, message: str, value: float | None = None) -> Verdict:
        return cls("Inconclusive", value, message)


def evaluate(check: MetricCheck, value: float | None) -> Verdict:
    """Pass within [min, max] (inclusive), Fail outside, Inconclusive without a finite value."""
    what = check.metric or "value"
    if value is None:
        return Verdict.inconclusive(f"{what}: no data")
    if math.isnan(value):
        return Verdict.inconclusive(f"{what} is NaN: no data to compute it from (e.g. 0/0)", value)
    if math.isinf(value):
        return Verdict.inconclusive(f"{what} is {'+' if value > 0 else '-'}Inf: not a measurement", value)
    if check.min is not None and value < check.min:
        return Verdict("Fail", value, f"{what} {number(value)} is below min {number(check.min)}")
    if check.max is not None and value > check.max:
        return Verdict("Fail", value, f"{what} {number(value)} is above max {number(check.max)}")
    return Verdict("Pass", value, f"{what} {number(value)} is within {_bounds(check)}")


def next_check_status(
    check: MetricCheck, previous: CheckStatus | None, revision: str, verdict: Verdict, now_text: str,
) -> CheckStatus:
    """The check's status after ``verdict``; a previous status of another revision counts as none."""
    failures = inconclusive = 0
    if previous is not None and previous.revision == revision and previous.name == check.name:
        failures, inconclusive = previous.consecutive_failures, previous.consecutive_inconclusive
    if verdict.outcome == "Pass":
        failures = inconclusive = 0
    elif verdict.outcome == "Fail":
        failures, inconclusive = failures + 1, 0
    else:
        inconclusive += 1
    finite = verdict.value is not None and math.isfinite(verdict.value)
    return CheckStatus(
        name=check.name, revision=revision, verdict=verdict.outcome,
        last_value=verdict.value if finite else None,  # NaN/Inf do not survive JSON; the message says which
        consecutive_failures=failures, consecutive_inconclusive=inconclusive,
        last_run_time=now_text, message=verdict.message,
    )


def check_state(check: MetricCheck, status: CheckStatus | None) -> CheckState:
    """failed / stalled / ok from the streaks of ``status`` (the caller passes this revision's status)."""
    if status is None:
        return "ok"
    if status.consecutive_failures >= check.failure_limit:
        return "failed"
    if status.consecutive_inconclusive >= check.inconclusive_limit:
        return "stalled"
    return "ok"


def due(check: MetricCheck, status: CheckStatus | None, revision: str, now: datetime) -> bool:
    """True when the check never ran for ``revision`` or ``intervalSeconds`` passed since it last ran."""
    if status is None or status.revision != revision:
        return True
    last = parse_time(status.last_run_time)
    if last > now:  # a clock that went backwards must not silence the check until it catches up
        return True
    return now >= last + timedelta(seconds=check.interval_seconds)


def next_due(check: MetricCheck, status: CheckStatus | None, revision: str, now: datetime) -> datetime:
    """When the check is next due (``now`` when it already is): a wake-up time for the decision."""
    if due(check, status, revision, now):
        return now
    return parse_time(status.last_run_time) + timedelta(seconds=check.interval_seconds)


def status_for(statuses: Iterable[CheckStatus], name: str, revision: str) -> CheckStatus | None:
    """The status of check ``name`` for ``revision``, or None (another revision's status does not count)."""
    return next((s for s in statuses if s.name == name and s.revision == revision), None)


@dataclass(frozen=True)
class ChecksSummary:
    # failed: revert. stalled: pause (ChecksInconclusive). passed: analysis may complete. pending: wait.
    state: Literal["failed", "stalled", "passed", "pending"]
    message: str


def summarise_checks(
    checks: Sequence[MetricCheck], statuses: Iterable[CheckStatus], revision: str,
) -> ChecksSummary:
    """All checks of ``revision`` in one state, with a message naming the check(s) that decided it."""
    statuses = list(statuses)
    current = [(check, status_for(statuses, check.name, revision)) for check in checks]
    failed = [(c, s) for c, s in current if check_state(c, s) == "failed"]
    if failed:
        check, status = failed[0]
        return ChecksSummary("failed", f'check "{check.name}" failed {status.consecutive_failures} '
                                       f"time(s) in a row: {status.message}")
    stalled = [(c, s) for c, s in current if check_state(c, s) == "stalled"]
    if stalled:
        return ChecksSummary("stalled", "; ".join(
            f'check "{c.name}" inconclusive {s.consecutive_inconclusive} time(s) in a row: {s.message}'
            for c, s in stalled))
    waiting = [(c, s) for c, s in current if s is None or s.verdict != "Pass"]
    if waiting:
        return ChecksSummary("pending", "waiting for a passing verdict from " + ", ".join(
            f'"{c.name}" ({s.verdict if s else "not run yet"})' for c, s in waiting))
    return ChecksSummary("passed", f"{len(current)} check(s) pass" if current else "no metric checks")


def number(value: float) -> str:
    """A float as people write it (0.05, 120), falling back to the exact repr when %g would round."""
    short = format(value, "g")
    return short if float(short) == value else repr(value)


def _bounds(check: MetricCheck) -> str:
    if check.min is not None and check.max is not None:
        return f"[{number(check.min)}, {number(check.max)}]"
    if check.min is not None:
        return f"min {number(check.min)}"
    return f"max {number(check.max)}"
