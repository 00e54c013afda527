"""Status conditions in the Kubernetes shape (metav1.Condition).

Like cert-manager's helpers: ``lastTransitionTime`` moves only when the condition's status changes,
so a resync that re-states the same facts writes nothing.
"""

from __future__ import annotations

from typing import Literal

from .api import Condition

CONDITION_TYPES = ("Ready", "Progressing", "Degraded", "RolledBack", "Reconciling", "Stalled")


def set_condition(
    conditions: list[Condition], type: str, status: bool | Literal["Unknown"], reason: str, message: str,
    now: str, generation: int | None,
) -> list[Condition]:
    status_text = status if status == "Unknown" else ("True" if status else "False")
    previous = next((c for c in conditions if c.type == type), None)
    transition = previous.last_transition_time if previous and previous.status == status_text else now
    new = Condition(
        type=type, status=status_text, reason=reason, message=message,
        observed_generation=generation, last_transition_time=transition,
    )
    others = [c for c in conditions if c.type != type]
    return sorted([*others, new], key=lambda c: (c.type not in CONDITION_TYPES, _order(c.type)))


def _order(type: str) -> int:
    return CONDITION_TYPES.index(type) if type in CONDITION_TYPES else len(CONDITION_TYPES)


def get_condition(conditions: list[Condition], type: str) -> Condition | None:
    return next((c for c in conditions if c.type == type), None)
