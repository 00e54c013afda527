"""What a pass reports in status of slots, traffic and serving, from what the cluster shows.

Part of the decision (decide.py), kept apart because it only reads: the observed slots, selector and
route, written into the pass's status through its :class:`~slotkeeper.step.Step`.
"""

from __future__ import annotations

from typing import Mapping

from .api import SLOTS, SlotStatus
from .checks.canary import actual_weight
from .observe import Observed
from .render import LABEL_SLOT
from .step import Step


def serving_conditions(step: Step, active: str) -> None:
    """Ready/Degraded follow the stable slot's ready replicas; a Healthy endpoint without any is Degraded."""
    ready = step.observed.slot(active).ready_replicas
    revision = step.status.stable_revision
    if ready > 0:
        step.condition("Ready", True, "StableRevisionServing", f"revision {revision}: {ready} ready in slot {active}")
        step.condition("Degraded", False, "StableRevisionServing", f"slot {active} has ready replicas")
        return
    message = f"slot {active} (revision {revision}) has no ready replica"
    step.condition("Ready", False, "NoReadyReplicas", message)
    step.condition("Degraded", True, "NoReadyReplicas", message)
    if step.status.phase == "Healthy":
        step.update(phase="Degraded")


def kstatus_conditions(step: Step) -> None:
    """Reconciling/Stalled: the two conditions kstatus (Flux, kpt, cli-utils) reads for health."""
    phase = step.status.phase
    step.condition("Reconciling", phase in ("Pending", "Progressing"), phase, f"phase {phase}")
    stalled = phase in ("Degraded", "RolledBack")
    reason = next((c.reason for c in step.status.conditions
                   if c.type == ("RolledBack" if phase == "RolledBack" else "Degraded") and c.status == "True"), phase)
    step.condition("Stalled", stalled, reason if stalled else phase, f"phase {phase}")


def slot_report(observed: Observed) -> dict[str, SlotStatus]:
    """status.slots: each slot that has a Deployment, as observed (with the pass's own writes laid over)."""
    return {
        slot: SlotStatus(revision=observed.slot(slot).revision, replicas=observed.slot(slot).replicas,
                         current_replicas=observed.slot(slot).current_replicas,
                         ready_replicas=observed.slot(slot).ready_replicas,
                         autoscaled=observed.slot(slot).autoscaler is not None)
        for slot in SLOTS if observed.slot(slot).deployment is not None
    }


def report_slots_and_traffic(step: Step) -> None:
    observed = step.observed
    slots = slot_report(observed)
    # What the cluster routes by now, not what this pass is about to write: a switch shows in the
    # status once the watches have shown it (the next pass), and a write that did not take never does.
    if step.gateway is not None:
        report_route_traffic(step, slots)
        return
    traffic = traffic_shares(observed.cluster_selector, observed)
    step.update(slots=slots, traffic=traffic, traffic_summary=_shares_text(traffic) or None)


def route_summary(body: Mapping) -> str:
    """'blue 80%, green 20%' (+ ', mirror 20% to green') of a rendered route."""
    from .observe import summarise_route  # noqa: PLC0415 - observe imports render only
    route = summarise_route(body)
    return _route_text(route.weights, route.mirror)


def _shares_text(shares: Mapping[str, int]) -> str:
    """'blue 80%, green 20%': the slots with a share, "" if none has one."""
    return ", ".join(f"{slot} {share}%" for slot, share in shares.items() if share)


def _route_text(weights: Mapping[str, int], mirror: tuple[str, int] | None) -> str:
    return (_shares_text(weights) or "no slot") + (f", mirror {mirror[1]}% to {mirror[0]}" if mirror else "")


def report_route_traffic(step: Step, slots: dict) -> None:
    """Gateway API: status.traffic is the weights of the route as watched, and only once every parent
    has accepted that generation of it (Accepted and ResolvedRefs); until then nothing is claimed."""
    route = step.observed.cluster_route
    if route is not None and route.accepted:
        traffic = {slot: int(route.weights.get(slot, 0)) for slot in SLOTS}
        step.update(slots=slots, traffic=traffic, traffic_summary=_route_text(traffic, route.mirror))
        step.condition("RouteAccepted", True, "Accepted", f"HTTPRoute {step.endpoint.name} generation "
                       f"{route.generation} is accepted by every parent")
        return
    if route is None or route.not_accepted is None:
        message = f"HTTPRoute {step.endpoint.name} is not there yet"
    else:
        message = (f"parent {', '.join(route.not_accepted)} has not accepted HTTPRoute {step.endpoint.name} "
                   f"generation {route.generation}")
    step.update(slots=slots, traffic={}, traffic_summary="route not accepted")
    step.condition("RouteAccepted", False, "NotAccepted", message)


def traffic_shares(selector: Mapping[str, str] | None, observed: Observed) -> dict[str, int]:
    """Each slot's share of the endpoint's traffic, from the selector and the ready replicas behind it."""
    if not selector:
        return {slot: 0 for slot in SLOTS}
    chosen = selector.get(LABEL_SLOT)
    if chosen is not None:
        return {slot: (100 if slot == chosen and observed.slot(slot).ready_replicas > 0 else 0) for slot in SLOTS}
    ready = {slot: observed.slot(slot).ready_replicas for slot in SLOTS}
    total = sum(ready.values())
    if total == 0:
        return {slot: 0 for slot in SLOTS}
    blue, green = SLOTS
    green_share = actual_weight(ready[blue], ready[green])
    return {blue: 100 - green_share, green: green_share}
