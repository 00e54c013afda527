"""The rollout decision: observed world + spec + status + clock -> next status + actions.

Pure: no I/O, no clock of its own. The cluster layer calls :func:`decide_next_step` on every wake-up
(a watch event, a timer, a restart); running it twice in a row with nothing changed yields the same
status and no action, which is what makes the operator level-triggered and restart-safe.

A rollout moves through ``status.rollout.step``::

    Deploying -> Validating -> (AwaitingPromotion) -> Analysing -> promoted (stable = candidate)
        \\____________\\_________________\\_______________\\____ any failure: revert to stable

Every step is derived from durable status plus what is observed, so the operator can stop at any
moment and resume where it was. Traffic moves only through :class:`SwitchTraffic`, and only when the
observed selector differs from the wanted one, so a resumed rollout never switches twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Mapping, Sequence

from .actions import Action, ApplyDeployment, CreateService, EmitEvent, ScaleDeployment, SwitchTraffic
from .api import SLOTS, HistoryEntry, ModelEndpointSpec, ModelEndpointStatus, Rollout, ScaleDown, SlotStatus
from .clock import format_time, parse_time
from .conditions import set_condition
from .observe import Observed
from .render import (LABEL_SLOT, NO_SLOT, endpoint_url, render_endpoint_service, render_slot_deployment,
                     render_slot_service, slot_selector)
from .revision import revision_of

FIRST_SLOT = "blue"
# While a rollout waits on the cluster, look again at least this often even without a watch event.
ROLLOUT_POLL_SECONDS = 10.0


@dataclass(frozen=True)
class Endpoint:
    """The ModelEndpoint as the decision sees it."""
    name: str
    namespace: str
    uid: str
    generation: int | None
    spec: ModelEndpointSpec
    status: ModelEndpointStatus
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def owner(self) -> dict:
        return {"metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid}}


@dataclass(frozen=True)
class Decision:
    status: ModelEndpointStatus
    actions: list[Action]
    # Seconds until something time-based is due (a deadline, the end of analysis); None: nothing.
    requeue_after: float | None = None


def other_slot(slot: str) -> str:
    return SLOTS[1 - SLOTS.index(slot)]


class _Step:
    """Accumulates one decision: status changes, actions and the next wake-up."""

    def __init__(self, endpoint: Endpoint, observed: Observed, now: datetime) -> None:
        self.endpoint, self.observed, self.now = endpoint, observed, now
        self.spec: ModelEndpointSpec = endpoint.spec
        self.status: ModelEndpointStatus = endpoint.status
        self.now_text = format_time(now)
        self.actions: list[Action] = []
        self.wake_ups: list[float] = []

    # ------------------------------------------------------------------ status and action helpers
    def update(self, **changes) -> None:
        self.status = self.status.model_copy(update=changes)

    def event(self, type: str, reason: str, message: str) -> None:
        self.actions.append(EmitEvent(type=type, reason=reason, message=message))

    def wake_at(self, moment: datetime) -> None:
        self.wake_ups.append(max(0.0, (moment - self.now).total_seconds()))

    def condition(self, type: str, status: bool, reason: str, message: str = "") -> None:
        self.update(conditions=set_condition(
            list(self.status.conditions), type, status, reason, message, self.now_text, self.endpoint.generation,
        ))

    def record(self, revision: str, model_uri: str | None, outcome: str, reason: str, message: str = "") -> None:
        entry = HistoryEntry(revision=revision, model_uri=model_uri, outcome=outcome, reason=reason,
                             message=message, time=self.now_text)
        history = [*self.status.history, entry][-self.spec.revision_history_limit:]
        self.update(history=history)

    def want_deployment(self, slot: str, revision: str, replicas: int) -> None:
        seen = self.observed.slot(slot).deployment
        if seen is None or seen.revision != revision:
            body = render_slot_deployment(self.endpoint.owner, self.spec, slot, revision, replicas)
            self.actions.append(ApplyDeployment(slot=slot, body=body))
        elif seen.replicas != replicas:
            self.actions.append(ScaleDeployment(slot=slot, replicas=replicas))

    def want_replicas(self, slot: str, replicas: int) -> None:
        seen = self.observed.slot(slot).deployment
        if seen is not None and seen.replicas != replicas:
            self.actions.append(ScaleDeployment(slot=slot, replicas=replicas))

    def wanted_selector(self) -> Mapping[str, str] | None:
        """The endpoint Service's selector once the queued actions ran (None: no such Service)."""
        for action in reversed(self.actions):
            if isinstance(action, SwitchTraffic):
                return action.selector
            if isinstance(action, CreateService) and action.body["metadata"]["name"] == self.endpoint.name:
                return action.body["spec"]["selector"]
        return self.observed.endpoint_selector

    def want_selector(self, slot: str | None) -> bool:
        """Point the endpoint Service at ``slot`` (None: at no pod); True when that moves traffic."""
        selector = slot_selector(self.endpoint.name, slot if slot is not None else NO_SLOT)
        current = self.wanted_selector()
        if current is None:
            self.actions.append(CreateService(render_endpoint_service(self.endpoint.owner, selector)))
            return slot is not None
        if dict(current) != selector:
            self.actions.append(SwitchTraffic(selector=selector))
            return True
        return False

    def decision(self) -> Decision:
        requeue = min(self.wake_ups) if self.wake_ups else None
        return Decision(status=self.status, actions=self.actions, requeue_after=requeue)


def decide_next_step(endpoint: Endpoint, observed: Observed, now: datetime) -> Decision:
    step = _Step(endpoint, observed, now)
    step.update(observed_generation=endpoint.generation, url=endpoint_url(endpoint.name, endpoint.namespace))
    for slot in SLOTS:
        if slot not in observed.slot_services:
            step.actions.append(CreateService(render_slot_service(endpoint.owner, slot)))

    revision = revision_of(endpoint.spec)
    if endpoint.spec.paused:
        _hold(step)
    elif step.status.stable_revision is None:
        _first_rollout(step, revision)
    elif revision == step.status.stable_revision:
        _steady(step, revision)
    elif _blocked(step, revision):
        _after_revert(step)
    else:
        _rollout(step, revision)

    _report_slots_and_traffic(step)
    return step.decision()


# ---------------------------------------------------------------------------------------- cases


def _blocked(step: _Step, revision: str) -> bool:
    """A reverted revision is not retried until the spec changes again (a new generation)."""
    status = step.status
    return status.failed_revision == revision and status.failed_generation == step.endpoint.generation


def _hold(step: _Step) -> None:
    """spec.paused: nothing moves; the selector stays wherever it is."""
    step.update(phase="Paused")
    step.condition("Progressing", False, "Paused", "spec.paused is true: rollouts are held")


def _first_rollout(step: _Step, revision: str) -> None:
    """No revision has ever been good: deploy into blue; the endpoint selects it once it is ready."""
    status, spec = step.status, step.spec
    if _blocked(step, revision):
        step.want_selector(None)
        return
    rollout = status.rollout
    if rollout is None or rollout.revision != revision:
        if rollout is not None:
            step.record(rollout.revision, rollout.model_uri, "Superseded", "NewRevision",
                        f"replaced by revision {revision} before it was ready")
        rollout = _new_rollout(step, revision, FIRST_SLOT)
    step.want_selector(None)
    step.want_deployment(rollout.slot, revision, spec.serving.replicas)
    failure = _readiness_failure(step, rollout)
    if failure:
        reason, message = failure
        step.update(rollout=None, candidate_revision=None, candidate_slot=None, failed_revision=revision,
                    failed_generation=step.endpoint.generation, phase="Degraded")
        step.record(revision, rollout.model_uri, "RolledBack", reason, message)
        step.condition("Ready", False, reason, f"no revision is serving: {message}")
        step.condition("Progressing", False, reason, message)
        step.condition("Degraded", True, reason, message)
        step.condition("RolledBack", False, "NoStableRevision", "there is no earlier revision to revert to")
        step.event("Warning", reason, f"revision {revision} failed and nothing serves yet: {message}")
        return
    if not step.observed.slot(rollout.slot).fully_ready(revision):
        return
    step.want_selector(rollout.slot)
    step.update(rollout=None, stable_revision=revision, stable_model_uri=rollout.model_uri, active_slot=rollout.slot,
                candidate_revision=None, candidate_slot=None, failed_revision=None, failed_generation=None,
                phase="Healthy")
    step.record(revision, rollout.model_uri, "Promoted", "FirstRevision", f"serving from slot {rollout.slot}")
    _healthy_conditions(step, f"revision {revision} serves from slot {rollout.slot}")
    step.event("Normal", "Promoted", f"revision {revision} is ready and serves from slot {rollout.slot}")


def _steady(step: _Step, revision: str) -> None:
    """The spec asks for the stable revision: keep it serving; cancel any candidate."""
    status, spec = step.status, step.spec
    active = status.active_slot or FIRST_SLOT
    idle = other_slot(active)
    if status.rollout is not None:  # the spec went back to the stable revision mid-rollout
        rollout = status.rollout
        step.record(rollout.revision, rollout.model_uri, "Superseded", "SpecReverted",
                    f"the spec asks for the stable revision {revision} again")
        step.event("Normal", "Superseded", f"rollout of {rollout.revision} cancelled: the spec is back at {revision}")
        step.update(rollout=None, candidate_revision=None, candidate_slot=None)
    step.want_selector(active)
    step.want_deployment(active, revision, spec.serving.replicas)
    _settle_idle_slot(step, idle)
    step.update(phase="Healthy")
    _healthy_conditions(step, f"revision {revision} serves from slot {active}")


def _after_revert(step: _Step) -> None:
    """The spec still asks for the revision that was reverted: keep serving stable; say why."""
    active = step.status.active_slot or FIRST_SLOT
    step.want_selector(active)
    step.want_replicas(active, step.spec.serving.replicas)
    _settle_idle_slot(step, other_slot(active))
    step.update(phase="RolledBack")
    _serving_conditions(step, active)


def _rollout(step: _Step, revision: str) -> None:
    status, spec = step.status, step.spec
    active = status.active_slot or FIRST_SLOT
    rollout = status.rollout
    if rollout is None or rollout.revision != revision:
        if rollout is not None:
            # A newer revision supersedes the candidate: stable takes all traffic back before the
            # candidate slot is reused, since the superseded revision was never proven good.
            step.want_selector(active)
            step.record(rollout.revision, rollout.model_uri, "Superseded", "NewRevision",
                        f"replaced by revision {revision}")
            step.event("Normal", "Superseded", f"rollout of {rollout.revision} superseded by {revision}")
        rollout = _new_rollout(step, revision, other_slot(active))
        step.update(scale_down=None)

    # The stable slot keeps full size for the whole rollout: it is what a revert falls back on.
    step.want_replicas(active, spec.serving.replicas)
    step.want_deployment(rollout.slot, revision, spec.serving.replicas)
    step.update(phase="Progressing")

    failure = _readiness_failure(step, rollout)
    if failure:
        _revert(step, rollout, *failure)
        return

    if rollout.step == "Deploying":
        step.want_selector(active)
        if not step.observed.slot(rollout.slot).fully_ready(revision):
            step.condition("Progressing", True, "Deploying", f"waiting for revision {revision} in slot {rollout.slot}")
            return
        rollout = _advance(step, rollout, "Validating")

    if rollout.step == "Validating":
        step.want_selector(active)
        rollout = _advance(step, rollout, "AwaitingPromotion" if _needs_manual_promotion(spec) else "Analysing")

    if rollout.step == "AwaitingPromotion":
        step.want_selector(active)
        step.update(phase="Paused")
        step.condition("Progressing", True, "AwaitingPromotion",
                       f"revision {revision} is ready in slot {rollout.slot}; promote it to switch traffic")
        return

    if rollout.step == "Analysing":
        if rollout.switched_at is None:
            rollout = rollout.model_copy(update={"switched_at": step.now_text})
            step.update(rollout=rollout)
        if step.want_selector(rollout.slot):
            step.event("Normal", "TrafficSwitched", f"endpoint now selects slot {rollout.slot} (revision {revision})")
        analysis_end = parse_time(rollout.switched_at) + timedelta(seconds=spec.checks.analysis_seconds)
        if step.now < analysis_end:
            step.condition("Progressing", True, "Analysing",
                           f"revision {revision} takes traffic; analysis until {format_time(analysis_end)}")
            step.wake_at(analysis_end)
            return
        _promote(step, rollout, active)


def _new_rollout(step: _Step, revision: str, slot: str) -> Rollout:
    rollout = Rollout(revision=revision, slot=slot, model_uri=step.spec.model.uri, step="Deploying",
                      started_at=step.now_text, step_started_at=step.now_text)
    step.update(rollout=rollout, candidate_revision=revision, candidate_slot=slot, phase="Progressing")
    step.event("Normal", "RolloutStarted", f"rolling out revision {revision} into slot {slot}")
    return rollout


def _advance(step: _Step, rollout: Rollout, to: str) -> Rollout:
    rollout = rollout.model_copy(update={"step": to, "step_started_at": step.now_text})
    step.update(rollout=rollout)
    return rollout


def _needs_manual_promotion(spec: ModelEndpointSpec) -> bool:
    return spec.strategy.blue_green is not None and not spec.strategy.blue_green.auto_promote


def _readiness_failure(step: _Step, rollout: Rollout) -> tuple[str, str] | None:
    """(reason, message) when the candidate cannot become ready: a fail-fast pod state or the deadline."""
    slot = step.observed.slot(rollout.slot)
    pod_failure = slot.pod_failure(rollout.revision)
    if pod_failure:
        return "PodFailure", f"revision {rollout.revision} in slot {rollout.slot}: {pod_failure}"
    if rollout.step == "Deploying" and not slot.fully_ready(rollout.revision):
        deadline = parse_time(rollout.started_at) + timedelta(seconds=step.spec.checks.progress_deadline_seconds)
        if step.now >= deadline:
            return "ProgressDeadlineExceeded", (
                f"revision {rollout.revision} in slot {rollout.slot} was not ready within "
                f"{step.spec.checks.progress_deadline_seconds}s ({slot.ready_replicas}/{step.spec.serving.replicas} ready)"
            )
        step.wake_at(min(deadline, step.now + timedelta(seconds=ROLLOUT_POLL_SECONDS)))
    return None


def _revert(step: _Step, rollout: Rollout, reason: str, message: str) -> None:
    """Traffic back to stable first, then stable's replicas; the failed slot stays for inspection."""
    active = step.status.active_slot or FIRST_SLOT
    step.actions = [a for a in step.actions if not isinstance(a, (ApplyDeployment, ScaleDeployment, SwitchTraffic))]
    step.want_selector(active)
    step.want_replicas(active, step.spec.serving.replicas)
    step.want_replicas(rollout.slot, step.spec.failed_slot_replicas)
    step.update(rollout=None, candidate_revision=None, candidate_slot=None, failed_revision=rollout.revision,
                failed_generation=step.endpoint.generation, phase="RolledBack")
    step.record(rollout.revision, rollout.model_uri, "RolledBack", reason, message)
    step.condition("RolledBack", True, reason, message)
    step.condition("Progressing", False, reason, f"reverted to stable revision {step.status.stable_revision}")
    step.event("Warning", "RolledBack", f"reverted to revision {step.status.stable_revision}: {message}")
    _serving_conditions(step, active)


def _promote(step: _Step, rollout: Rollout, old_active: str) -> None:
    delay = _scale_down_delay(step.spec)
    step.update(rollout=None, stable_revision=rollout.revision, stable_model_uri=rollout.model_uri,
                active_slot=rollout.slot, candidate_revision=None, candidate_slot=None,
                failed_revision=None, failed_generation=None, phase="Healthy",
                scale_down=ScaleDown(slot=old_active, revision=step.status.stable_revision,
                                     at=format_time(step.now + timedelta(seconds=delay))))
    step.record(rollout.revision, rollout.model_uri, "Promoted", "AnalysisPassed",
                f"serving from slot {rollout.slot}")
    step.event("Normal", "Promoted", f"revision {rollout.revision} is stable in slot {rollout.slot}")
    _healthy_conditions(step, f"revision {rollout.revision} serves from slot {rollout.slot}")
    _settle_idle_slot(step, old_active)


def _scale_down_delay(spec: ModelEndpointSpec) -> int:
    strategy = spec.strategy.blue_green or spec.strategy.canary
    return strategy.scale_down_delay_seconds if strategy else 0


def _settle_idle_slot(step: _Step, idle: str) -> None:
    """The idle slot: full size until its scale-down is due, then zero (or a failed revision's few pods)."""
    status = step.status
    if status.scale_down is not None and status.scale_down.slot == idle:
        due = parse_time(status.scale_down.at)
        if step.now < due:
            step.want_replicas(idle, step.spec.serving.replicas)
            step.wake_at(due)
            return
        step.update(scale_down=None)
    seen = step.observed.slot(idle)
    keep = step.spec.failed_slot_replicas if seen.revision and seen.revision == status.failed_revision else 0
    step.want_replicas(idle, keep)


# ------------------------------------------------------------------------------- status reporting


def _healthy_conditions(step: _Step, message: str) -> None:
    step.condition("Progressing", False, "RolloutComplete", message)
    step.condition("RolledBack", False, "RolloutComplete", message)
    _serving_conditions(step, step.status.active_slot or FIRST_SLOT)


def _serving_conditions(step: _Step, active: str) -> None:
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


def _report_slots_and_traffic(step: _Step) -> None:
    observed = step.observed
    slots = {
        slot: SlotStatus(revision=observed.slot(slot).revision, replicas=observed.slot(slot).replicas,
                         ready_replicas=observed.slot(slot).ready_replicas)
        for slot in SLOTS if observed.slot(slot).deployment is not None
    }
    traffic = traffic_shares(step.wanted_selector(), observed)
    summary = ", ".join(f"{slot} {share}%" for slot, share in traffic.items() if share) or None
    step.update(slots=slots, traffic=traffic, traffic_summary=summary)


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
    first = SLOTS[0]
    shares = {slot: round(100 * ready[slot] / total) for slot in SLOTS[1:]}
    return {first: 100 - sum(shares.values()), **shares}
