"""Whether a run succeeded, from its row counts and the failed-row limits.

With no limit given the run may fail at most 1 % of its rows. A limit given
alone is the only one; given both, exceeding either fails the run.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_FAILED_FRACTION = 0.01


@dataclass(frozen=True)
class FailedRowLimits:
    max_rows: int | None = None
    max_fraction: float | None = None

    @classmethod
    def from_flags(cls, max_rows: int | None, max_fraction: float | None) -> FailedRowLimits:
        if max_rows is None and max_fraction is None:
            return cls(max_fraction=DEFAULT_MAX_FAILED_FRACTION)
        return cls(max_rows, max_fraction)


def rows_limit_exceeded(failed: int, limits: FailedRowLimits) -> str | None:
    """Why the run has already failed (the absolute limit is crossed), else None: checked after every chunk."""
    if limits.max_rows is not None and failed > limits.max_rows:
        return f"{failed} failed rows exceed the limit of {limits.max_rows}"
    return None


def decide_outcome(rows: int, failed: int, limits: FailedRowLimits) -> tuple[str, str]:
    """("Succeeded" | "Failed", reason) for a run that read `rows` rows of which `failed` failed."""
    reason = rows_limit_exceeded(failed, limits)
    if reason is None and limits.max_fraction is not None and rows and failed / rows > limits.max_fraction:
        reason = f"{failed} of {rows} rows failed ({failed / rows:.2%}), more than {limits.max_fraction:.2%}"
    if reason is not None:
        return "Failed", reason
    return "Succeeded", f"{failed} failed rows" if failed else ""
