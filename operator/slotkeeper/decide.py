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

Each slot is sized one of two ways in a pass: by hand (:meth:`Step.want_replicas`: a replica count,
written only when it differs, and never while an autoscaler exists for the slot: that is deleted
first) or, with ``serving.autoscaling``, by its HorizontalPodAutoscaler (:meth:`Step.autoscale`: the
bounds are what the operator writes; the replicas are the autoscaler's). The last word in a pass wins.
With autoscaling the stable slot is never sized by hand during a rollout; the candidate is, from the
stable slot's live size, until it takes traffic and gets an autoscaler of its own.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Mapping

from .actions import (ApplyAutoscaler, ApplyDeployment, ApplyDisruptionBudget, ApplyRoute, CreateService,
                      DeleteAutoscaler, DeleteRoute, EmitEvent, HandOverReplicas, ScaleDeployment, SwitchTraffic)
from .api import SLOTS, ModelEndpointSpec, ModelEndpointStatus, Rollout, ScaleDown
from .checks.canary import replicas_for_weight
from .checks.verdicts import next_check_status, next_due, status_for, summarise_checks
from .clock import format_time, parse_time
from .batch import decide_batch
from .monitor import decide_monitor
from .observe import Observed
from .render import (ANNOTATION_CONFIG, LABEL_SLOT, NO_SLOT, endpoint_url, render_slot_autoscaler,
                     render_slot_disruption_budget, render_slot_service)
from .revision import revision_of
from .service_ports import grpc_port_writes
from .status_report import kstatus_conditions, report_slots_and_traffic, route_summary, serving_conditions
from .step import (ACTION_PREFIX, BOTH_SLOTS, CHECKED_STEPS, FIRST_SLOT, MANUAL_ACTIONS, PRE_TRAFFIC_STEPS,
                   ROLLOUT_POLL_SECONDS, Decision, Endpoint, Gates, Step, other_slot)


def decide_next_step(endpoint: Endpoint, observed: Observed, now: datetime, gates: Gates = Gates()) -> Decision:
    step = Step(endpoint, observed, now, gates)
    step.update(observed_generation=endpoint.generation, url=endpoint_url(endpoint.name, endpoint.namespace))
    for slot in SLOTS:
        if slot not in observed.slot_services:
            step.actions.append(CreateService(render_slot_service(endpoint.owner, slot,
                                                                  endpoint.spec.serving.grpc_port)))
    _take_manual_actions(step)

    revision = revision_of(endpoint.spec)
    if step.status.stable_revision is None:
        _first_rollout(step, revision)
    elif revision == step.status.stable_revision:
        _steady(step, revision)
    elif _blocked(step, revision):
        _after_revert(step)
    else:
        _rollout(step, revision)

    decide_monitor(step)
    decide_batch(step)
    _converge_slot_objects(step)
    _converge_route(step)
    _converge_service_ports(step)
    report_slots_and_traffic(step)
    kstatus_conditions(step)
    _write_ahead(step, endpoint.status)
    return step.decision()


def _converge_slot_objects(step: Step) -> None:
    """Each autoscaled slot's HorizontalPodAutoscaler with this pass's bounds, and a
    PodDisruptionBudget for each slot that has a Deployment; written only when they differ from what
    slotkeeper last applied (the config hash on them)."""
    owner, spec = step.endpoint.owner, step.spec
    for slot in SLOTS:
        seen = step.observed.slot(slot)
        bounds = step.autoscaled.get(slot)
        if bounds is not None:
            body = render_slot_autoscaler(owner, spec, slot, *bounds)
            if seen.autoscaler is None or seen.autoscaler.config != body["metadata"]["annotations"][ANNOTATION_CONFIG]:
                step.actions.append(ApplyAutoscaler(slot=slot, body=body))
        elif slot not in step.sized and step.autoscaling is None and seen.autoscaler is not None:
            step.actions.append(DeleteAutoscaler(slot=slot))  # autoscaling was turned off
        if step.replicas_after(slot) is not None:
            body = render_slot_disruption_budget(owner, spec, slot)
            config = body["metadata"]["annotations"][ANNOTATION_CONFIG]
            if seen.disruption_budget is None or seen.disruption_budget.config != config:
                step.actions.append(ApplyDisruptionBudget(slot=slot, body=body))


def _converge_route(step: Step) -> None:
    """Without ``spec.traffic.gatewayAPI`` the endpoint has no HTTPRoute: one left from before (the
    field was removed) is deleted, after this pass's selector write (the endpoint Service alone
    carries traffic again)."""
    if step.gateway is None and step.observed.route is not None:
        name = step.endpoint.name
        step.actions.append(DeleteRoute(name=name))
        step.actions.append(EmitEvent("Normal", "RouteDeleted",
                                      f"HTTPRoute {name} deleted: the endpoint Service carries the traffic"))


def _converge_service_ports(step: Step) -> None:
    """Existing Services get the ``grpc`` port spec.serving.grpcPort asks for, or lose it (service_ports.py)."""
    applied = frozenset(a.body["metadata"]["name"] for a in step.actions if isinstance(a, CreateService))
    step.actions += grpc_port_writes(step.endpoint.owner, step.spec.serving.grpc_port,
                                     step.observed.service_grpc_ports, step.observed.slot_services,
                                     step.wanted_selector(), applied)


# Status fields that only report what is observed; everything else is what the operator remembers.
REPORTED_FIELDS = ("slots", "traffic", "traffic_summary")


def _write_ahead(step: Step, before: ModelEndpointStatus) -> None:
    """Traffic follows durable status, never the other way round.

    A pass that changes what status remembers (a new step, a verdict, a revert) and also wants to move
    the selector keeps the move, and the replica changes queued after it, for the next pass: once the
    status is written. A restart between the two then finds the decision in status and makes the same
    move (or finds it made); it can never move traffic on a decision it has forgotten, which could
    switch twice or hand traffic back to a candidate that had just failed. Costs one status write.
    """
    remembered = step.status.model_dump(exclude=set(REPORTED_FIELDS))
    switch_at = next((i for i, a in enumerate(step.actions) if isinstance(a, (SwitchTraffic, ApplyRoute))), None)
    if switch_at is None:
        return
    if remembered != before.model_dump(exclude=set(REPORTED_FIELDS)):
        step.actions = step.actions[:switch_at] + [a for a in step.actions[switch_at:] if isinstance(a, EmitEvent)]
        step.wake_ups.append(0.0)
        return
    for index in reversed([i for i, a in enumerate(step.actions) if isinstance(a, (SwitchTraffic, ApplyRoute))]):
        action = step.actions[index]
        if isinstance(action, ApplyRoute):
            message = "route now sends " + route_summary(action.body)
        else:
            message = f"endpoint now selects {action.selector.get(LABEL_SLOT, 'every slot (canary)')}"
        step.actions.insert(index + 1, EmitEvent("Normal", "TrafficSwitched", message))


# ---------------------------------------------------------------------------------------- cases


def _blocked(step: Step, revision: str) -> bool:
    """A reverted revision is not retried until the spec changes again (a new generation)."""
    status = step.status
    return status.failed_revision == revision and status.failed_generation == step.endpoint.generation


def pending_manual_actions(annotations: Mapping[str, str], handled: Mapping[str, str]) -> dict[str, str]:
    """Actions whose annotation carries a token not handled yet: {action: token}."""
    pending = {}
    for action in MANUAL_ACTIONS:
        token = annotations.get(ACTION_PREFIX + action)
        if token and handled.get(action) != token:
            pending[action] = token
    return pending


def _take_manual_actions(step: Step) -> None:
    """Record each new token as handled (so it acts once) and apply what does not depend on the step."""
    pending = pending_manual_actions(step.endpoint.annotations, step.status.handled_actions)
    if not pending:
        return
    step.update(handled_actions={**step.status.handled_actions, **pending})
    step.requested = frozenset(pending)
    for action in sorted(pending):
        step.event("Normal", "ManualAction", f"{action} requested")
    if "retry" in pending and step.status.failed_revision:
        step.update(failed_revision=None, failed_generation=None)
    if "pause" in pending:
        step.update(manual_pause=True)
    if "resume" in pending:
        step.update(manual_pause=False)


def _paused(step: Step) -> bool:
    return step.spec.paused or step.status.manual_pause


def _hold(step: Step) -> None:
    """Paused (spec.paused or the pause action): nothing moves forward; failures still revert."""
    why = "spec.paused is true" if step.spec.paused else "paused by the pause action; resume to continue"
    step.update(phase="Paused")
    step.condition("Progressing", False, "Paused", why)


def _first_rollout(step: Step, revision: str) -> None:
    """No revision has ever been good: deploy into blue; the endpoint selects it once it is ready."""
    status = step.status
    if _blocked(step, revision):
        step.want_selector(NO_SLOT)
        return
    rollout = status.rollout
    if _paused(step) and (rollout is None or rollout.revision != revision):
        step.want_selector(NO_SLOT)
        _hold(step)
        return
    if rollout is None or rollout.revision != revision:
        if rollout is not None:
            step.record(rollout.revision, rollout.model_uri, "Superseded", "NewRevision",
                        f"replaced by revision {revision} before it was ready")
        rollout = _new_rollout(step, revision, FIRST_SLOT)
    step.want_selector(NO_SLOT)
    step.want_deployment(rollout.slot, revision, step.full_size())
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


def _steady(step: Step, revision: str) -> None:
    """The spec asks for the stable revision: keep it serving; cancel any candidate."""
    status = step.status
    active = status.active_slot or FIRST_SLOT
    idle = other_slot(active)
    if status.rollout is not None:  # the spec went back to the stable revision mid-rollout
        rollout = status.rollout
        step.record(rollout.revision, rollout.model_uri, "Superseded", "SpecReverted",
                    f"the spec asks for the stable revision {revision} again")
        step.event("Normal", "Superseded", f"rollout of {rollout.revision} cancelled: the spec is back at {revision}")
        step.update(rollout=None, candidate_revision=None, candidate_slot=None)
    step.want_selector(active)
    step.want_deployment(active, revision, step.serving_replicas())
    _settle_idle_slot(step, idle)
    step.update(phase="Healthy")
    _healthy_conditions(step, f"revision {revision} serves from slot {active}")


def _after_revert(step: Step) -> None:
    """The spec still asks for the revision that was reverted: keep serving stable; say why."""
    active = step.status.active_slot or FIRST_SLOT
    step.want_selector(active)
    step.serve(active, step.spec.serving.replicas)
    _settle_idle_slot(step, other_slot(active))
    step.update(phase="RolledBack")
    serving_conditions(step, active)


def _rollout(step: Step, revision: str) -> None:
    status, spec = step.status, step.spec
    active = status.active_slot or FIRST_SLOT
    rollout = status.rollout
    if _paused(step) and (rollout is None or rollout.revision != revision):
        _hold(step)  # a paused endpoint starts (or supersedes with) nothing
        return
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

    if rollout.step in PRE_TRAFFIC_STEPS:
        step.want_selector(active)  # before the candidate slot changes: it may have held traffic
        if step.autoscaling is not None:
            step.autoscale(active)  # stable still takes all traffic: its autoscaler follows the load
    step.want_deployment(rollout.slot, revision, _candidate_size(step, rollout))
    step.update(phase="Progressing")
    _record_verdicts(step, rollout)

    failure = _readiness_failure(step, rollout) or _check_failure(step, rollout)
    if failure is None and "abort" in step.requested:
        failure = ("Aborted", f"rollout of revision {revision} aborted by the abort action")
    if failure:
        _revert(step, rollout, *failure)
        return
    if _paused(step):
        _hold(step)
        return

    if rollout.step == "Deploying":
        step.want_selector(active)
        step.serve(active, spec.serving.replicas)
        if not step.observed.slot(rollout.slot).fully_ready(revision):
            step.condition("Progressing", True, "Deploying", f"waiting for revision {revision} in slot {rollout.slot}")
            return
        rollout = _advance(step, rollout, "Validating")

    if rollout.step == "Validating":
        step.want_selector(active)
        rollout = _validate(step, rollout)
        if rollout is None:
            return
        rollout = _advance(step, rollout, "Mirroring" if step.gateway is not None and step.gateway.mirror
                           else _after_validation(spec))

    if rollout.step == "Mirroring":
        rollout = _mirror(step, rollout)
        if rollout is None:
            return
        rollout = _advance(step, rollout, _after_validation(spec))

    if rollout.step == "AwaitingPromotion":
        step.want_selector(active)
        if "promote" not in step.requested:
            step.update(phase="Paused")
            step.condition("Progressing", True, "AwaitingPromotion",
                           f"revision {revision} is ready in slot {rollout.slot}; promote it to switch traffic")
            return
        step.requested = step.requested - {"promote"}  # one promote skips one wait
        rollout = _advance(step, rollout, "Analysing")

    if rollout.step == "Canary":
        rollout = _canary(step, rollout, active)
        if rollout is None:
            return

    if rollout.step == "Analysing":
        _analyse(step, rollout, active)


def _after_validation(spec: ModelEndpointSpec) -> str:
    return "Canary" if spec.strategy.canary else ("AwaitingPromotion" if _needs_manual_promotion(spec) else "Analysing")


def _mirror(step: Step, rollout: Rollout) -> Rollout | None:
    """Gateway API: all live traffic stays on stable while the route copies ``mirror.percent`` of it to
    the candidate (the gateway discards the copies' answers) for ``mirror.seconds``, counted from the
    moment every parent accepted that route; metric checks read the candidate meanwhile, and a failing
    one reverts before any user was answered by it. Then every check's latest verdict must be Pass."""
    mirror = step.gateway.mirror
    active = step.status.active_slot or FIRST_SLOT
    step.want_selector(active, mirror=mirror.percent)
    waiting = step.route_settled()
    if waiting is not None:
        step.condition("Progressing", True, "RouteNotAccepted", f"mirroring to slot {rollout.slot}: {waiting}")
        step.wake_at(step.now + timedelta(seconds=ROLLOUT_POLL_SECONDS))
        return None
    if rollout.mirror_started_at is None:
        rollout = rollout.model_copy(update={"mirror_started_at": step.now_text})
        step.update(rollout=rollout)
    until = parse_time(rollout.mirror_started_at) + timedelta(seconds=mirror.seconds)
    if step.now < until and "promote" not in step.requested:
        step.condition("Progressing", True, "Mirroring",
                       f"{mirror.percent}% of requests mirrored to slot {rollout.slot} until {format_time(until)}")
        step.wake_at(until)
        return None
    if not _checks_allow_progress(step, rollout, final=True):
        return None
    step.requested = step.requested - {"promote"}
    return rollout


def _validate(step: Step, rollout: Rollout) -> Rollout | None:
    """Validation requests, then one round of metric checks, before the candidate gets any traffic.

    Returns the rollout to go on with, or None to wait (the cluster layer runs what is due next pass).
    """
    checks = step.spec.checks
    if checks.validation and not rollout.validated:
        if step.gates.validation is None:
            step.condition("Progressing", True, "Validating", f"sending validation requests to slot {rollout.slot}")
            step.wake_ups.append(0.0)
            return None
        passed, message = step.gates.validation
        if not passed:
            _revert(step, rollout, "ValidationFailed", message)
            return None
        rollout = rollout.model_copy(update={"validated": True})
        step.update(rollout=rollout)
    not_run = [c.name for c in checks.metrics if status_for(step.status.checks, c.name, rollout.revision) is None]
    if not_run:
        step.condition("Progressing", True, "Validating", "running metric checks: " + ", ".join(not_run))
        step.wake_ups.append(0.0)
        return None
    return rollout


def _canary(step: Step, rollout: Rollout, active: str) -> Rollout | None:
    """Walk the canary steps; None while a step waits. The selector picks both slots while weight > 0."""
    spec, canary = step.spec, step.spec.strategy.canary
    while rollout.canary_step < len(canary.steps):
        current = canary.steps[rollout.canary_step]
        position = f"step {rollout.canary_step + 1}/{len(canary.steps)}"
        weight = _canary_weight(canary, rollout.canary_step)
        if step.gateway is None:
            step.want_selector(BOTH_SLOTS if weight > 0 else active)
        elif current.set_weight is None:
            step.want_selector(BOTH_SLOTS, weight=weight)  # a pause holds the weight in force
        elif not _gateway_weight_step(step, rollout, active, position, weight):
            return None
        if step.gateway is not None and current.set_weight is not None:
            pass  # sized and routed above
        elif current.set_weight is not None and current.set_weight < 100:
            if current.set_weight > 50:
                rollout = _keep_stable_size(step, rollout)  # before the stable slot shrinks
            stable_n, candidate_n = replicas_for_weight(step.full_size(rollout), current.set_weight)
            candidate_ready = step.observed.slot(rollout.slot).fully_ready(rollout.revision) and \
                step.observed.slot(rollout.slot).replicas == candidate_n
            stable_now = step.observed.slot(active).replicas
            if step.autoscaling is None:
                # The stable slot shrinks only once the candidate's pods for this weight are ready.
                step.want_replicas(active, stable_n if candidate_ready else max(stable_n, stable_now))
                stable_settled = stable_now == stable_n
            elif rollout.stable_replicas is None:  # weights up to 50: stable is as its autoscaler has it
                step.autoscale(active)
                stable_settled = True
            else:  # the stable slot's autoscaler is pinned at its share, or floored at the size kept
                if current.set_weight > 50 and candidate_ready:
                    step.autoscale(active, pin=stable_n)
                else:
                    step.autoscale(active, floor=max(stable_n, min(stable_now, rollout.stable_replicas)))
                stable_settled = stable_now == stable_n
            if not candidate_ready or not stable_settled:
                if step.past_progress_deadline(rollout.step_started_at):
                    _revert(step, rollout, "ProgressDeadlineExceeded",
                            f"canary {position} (setWeight {current.set_weight}) was not ready within "
                            f"{spec.checks.progress_deadline_seconds}s")
                    return None
                step.condition("Progressing", True, "Canary", f"{position}: scaling for weight {current.set_weight}%")
                return None
        elif current.pause is not None and "promote" not in step.requested:
            if not _checks_allow_progress(step, rollout):
                return None
            if current.pause.seconds is None:
                step.update(phase="Paused")
                step.condition("Progressing", True, "AwaitingPromotion", f"canary {position} paused until promote")
                return None
            until = parse_time(rollout.step_started_at) + timedelta(seconds=current.pause.seconds)
            if step.now < until:
                step.condition("Progressing", True, "Canary", f"canary {position} paused until {format_time(until)}")
                step.wake_at(until)
                return None
        if not _checks_allow_progress(step, rollout):
            return None
        rollout = rollout.model_copy(update={"canary_step": rollout.canary_step + 1, "step_started_at": step.now_text})
        step.update(rollout=rollout)
        step.requested = step.requested - {"promote"}  # one promote skips one wait
        step.want_deployment(rollout.slot, rollout.revision, _candidate_replicas(step, rollout))
    return _advance(step, rollout, "Analysing")


def gateway_candidate_replicas(replicas: int, weight: int) -> int:
    """Gateway API canary: the candidate's pods for an exact ``weight`` of a slot of ``replicas``, at
    least one (rounded up: no candidate pod carries more than a stable pod does)."""
    return max(1, -(-replicas * min(max(weight, 0), 100) // 100))


def _gateway_weight_step(step: Step, rollout: Rollout, active: str, position: str, weight: int) -> bool:
    """A setWeight step with Gateway API: the candidate is sized for its share (the stable slot keeps
    its size: a revert lands on it whole), the route moves to the exact weight once those pods are
    ready (until then it keeps the previous weight), and the step is done once the route's parents
    accepted it. True when done."""
    spec, canary = step.spec, step.spec.strategy.canary
    previous = _canary_weight(canary, rollout.canary_step - 1) if rollout.canary_step > 0 else 0
    step.serve(active, spec.serving.replicas)
    candidate = step.observed.slot(rollout.slot)
    ready = candidate.fully_ready(rollout.revision) and \
        candidate.replicas >= gateway_candidate_replicas(step.full_size(rollout), weight)
    step.want_selector(BOTH_SLOTS, weight=weight if ready else previous)
    waiting = None if ready else f"scaling for weight {weight}%"
    waiting = waiting or step.route_settled()
    if waiting is None:
        return True
    if step.past_progress_deadline(rollout.step_started_at):
        _revert(step, rollout, "ProgressDeadlineExceeded",
                f"canary {position} (setWeight {weight}) did not take effect within "
                f"{spec.checks.progress_deadline_seconds}s: {waiting}")
        return False
    reason = "Canary" if not ready else "RouteNotAccepted"
    step.condition("Progressing", True, reason, f"canary {position}: {waiting}")
    return False


def _analyse(step: Step, rollout: Rollout, active: str) -> None:
    """Traffic on the candidate alone, the old slot at full size, checks running; then promote."""
    spec, revision = step.spec, rollout.revision
    if step.autoscaling is None:
        step.want_replicas(active, spec.serving.replicas)
    else:  # stable keeps the size it had until the revision is proven: a revert lands on it
        rollout = _keep_stable_size(step, rollout)
        step.autoscale(active, floor=rollout.stable_replicas)
    if rollout.switched_at is None:
        candidate = step.observed.slot(rollout.slot)
        # Ready at full size, not at the canary's last size: the size may be queued in this very pass.
        if not candidate.fully_ready(revision) or candidate.replicas < _candidate_replicas(step, rollout):
            canary = spec.strategy.canary
            if canary is not None and _canary_weight(canary, len(canary.steps)) > 0:
                step.want_selector(BOTH_SLOTS, weight=_canary_weight(canary, len(canary.steps)))  # the last canary split holds while the candidate grows
            step.condition("Progressing", True, "Analysing", f"scaling slot {rollout.slot} to full size")
            step.wake_at(step.now + timedelta(seconds=ROLLOUT_POLL_SECONDS))
            return
        rollout = rollout.model_copy(update={"switched_at": step.now_text})
        step.update(rollout=rollout)
        if step.autoscaling is not None:
            step.autoscale(rollout.slot)  # with the traffic, the candidate's own autoscaler takes over
    if step.want_selector(rollout.slot):
        # Analysis counts once traffic has really moved: look again right after the switch.
        step.condition("Progressing", True, "Analysing", f"switching traffic to slot {rollout.slot}")
        step.wake_ups.append(0.0)
        return
    waiting = step.route_settled()
    if waiting is not None:
        step.condition("Progressing", True, "RouteNotAccepted", f"switching traffic to slot {rollout.slot}: {waiting}")
        step.wake_at(step.now + timedelta(seconds=ROLLOUT_POLL_SECONDS))
        return
    if "promote" in step.requested:
        _promote(step, rollout, active, "PromotedManually")
        return
    analysis_end = parse_time(rollout.switched_at) + timedelta(seconds=spec.checks.analysis_seconds)
    if step.now < analysis_end:
        step.condition("Progressing", True, "Analysing",
                       f"revision {revision} takes traffic; analysis until {format_time(analysis_end)}")
        step.wake_at(analysis_end)
        return
    if not _checks_allow_progress(step, rollout, final=True):
        return
    _promote(step, rollout, active, "AnalysisPassed")


def _canary_weight(canary, index: int) -> int:
    """The weight in force at canary step ``index``: the last setWeight at or before it (0 before any)."""
    weights = [s.set_weight for s in canary.steps[:index + 1] if s.set_weight is not None]
    return weights[-1] if weights else 0


def _keep_stable_size(step: Step, rollout: Rollout) -> Rollout:
    """With autoscaling: from here on the rollout sizes by the stable slot's size now, not its live one
    (the stable slot is about to shrink, or to lose its traffic and so its load)."""
    if step.autoscaling is None or rollout.stable_replicas is not None:
        return rollout
    rollout = rollout.model_copy(update={"stable_replicas": step.live_size()})
    step.update(rollout=rollout)
    return rollout


def _candidate_size(step: Step, rollout: Rollout) -> int | None:
    """The candidate's replicas, or None once its autoscaler sizes it (with autoscaling, after the switch)."""
    if step.autoscaling is not None and rollout.switched_at is not None:
        return None
    return _candidate_replicas(step, rollout)


def _candidate_replicas(step: Step, rollout: Rollout) -> int:
    """Full size, except during a canary: the pods the current (or first) weight needs, at least one.
    With autoscaling, full size is the stable slot's live size: a switch never lands on fewer pods."""
    replicas, canary = step.full_size(rollout), step.spec.strategy.canary
    if canary is None or rollout.step == "Analysing":
        return replicas
    if rollout.step == "Canary":
        weight = _canary_weight(canary, rollout.canary_step)
    else:  # before traffic: enough pods for the first weight, and at least one to validate
        weight = next((s.set_weight for s in canary.steps if s.set_weight), 100)
    if step.gateway is not None:
        return gateway_candidate_replicas(replicas, weight)
    return max(1, replicas_for_weight(replicas, min(weight, 100))[1])


def _record_verdicts(step: Step, rollout: Rollout) -> None:
    """Fold this pass's verdicts into status.checks and wake when the next check is due."""
    statuses = [s for s in step.status.checks if s.revision == rollout.revision]
    checks = step.spec.checks.metrics
    for check in checks:
        verdict = step.gates.verdicts.get(check.name)
        if verdict is None:
            continue
        previous = status_for(statuses, check.name, rollout.revision)
        updated = next_check_status(check, previous, rollout.revision, verdict, step.now_text)
        statuses = [s for s in statuses if s is not previous] + [updated]
    order = {check.name: index for index, check in enumerate(checks)}
    step.update(checks=sorted(statuses, key=lambda s: order.get(s.name, len(order))))
    if rollout.step in CHECKED_STEPS:
        for check in checks:
            step.wake_at(next_due(check, status_for(statuses, check.name, rollout.revision), rollout.revision, step.now))


def _check_failure(step: Step, rollout: Rollout) -> tuple[str, str] | None:
    summary = summarise_checks(step.spec.checks.metrics, step.status.checks, rollout.revision)
    return ("CheckFailed", summary.message) if summary.state == "failed" else None


def _checks_allow_progress(step: Step, rollout: Rollout, final: bool = False) -> bool:
    """Inconclusive checks stall the rollout; at the end of analysis every check must pass."""
    summary = summarise_checks(step.spec.checks.metrics, step.status.checks, rollout.revision)
    if summary.state == "stalled" and "promote" not in step.requested:
        step.update(phase="Paused")
        step.condition("Progressing", False, "ChecksInconclusive", summary.message + "; promote or abort to decide")
        return False
    if final and summary.state == "pending" and "promote" not in step.requested:
        step.condition("Progressing", True, "Analysing", summary.message)
        return False
    return True


def _new_rollout(step: Step, revision: str, slot: str) -> Rollout:
    rollout = Rollout(revision=revision, slot=slot, model_uri=step.spec.model.uri, step="Deploying",
                      started_at=step.now_text, step_started_at=step.now_text)
    step.update(rollout=rollout, candidate_revision=revision, candidate_slot=slot, phase="Progressing", checks=[])
    step.event("Normal", "RolloutStarted", f"rolling out revision {revision} into slot {slot}")
    return rollout


def _advance(step: Step, rollout: Rollout, to: str) -> Rollout:
    rollout = rollout.model_copy(update={"step": to, "step_started_at": step.now_text})
    step.update(rollout=rollout)
    return rollout


def _needs_manual_promotion(spec: ModelEndpointSpec) -> bool:
    return spec.strategy.blue_green is not None and not spec.strategy.blue_green.auto_promote


def _readiness_failure(step: Step, rollout: Rollout) -> tuple[str, str] | None:
    """(reason, message) when the candidate cannot become ready: a fail-fast pod state or the deadline."""
    slot = step.observed.slot(rollout.slot)
    pod_failure = slot.pod_failure(rollout.revision)
    if pod_failure:
        return "PodFailure", f"revision {rollout.revision} in slot {rollout.slot}: {pod_failure}"
    if rollout.step == "Deploying" and not slot.fully_ready(rollout.revision) and \
            step.past_progress_deadline(rollout.started_at):
        return "ProgressDeadlineExceeded", (
            f"revision {rollout.revision} in slot {rollout.slot} was not ready within "
            f"{step.spec.checks.progress_deadline_seconds}s ({slot.ready_replicas}/{step.full_size(rollout)} ready)"
        )
    return None


def _revert(step: Step, rollout: Rollout, reason: str, message: str) -> None:
    """Traffic back to stable first, then stable's replicas; the failed slot stays for inspection."""
    active = step.status.active_slot or FIRST_SLOT
    step.actions = [a for a in step.actions if not isinstance(
        a, (ApplyDeployment, HandOverReplicas, ScaleDeployment, DeleteAutoscaler, SwitchTraffic, ApplyRoute))]
    step.autoscaled.clear()
    step.want_selector(active)
    step.serve(active, step.spec.serving.replicas)  # with autoscaling: its autoscaler, never removed
    step.want_replicas(rollout.slot, step.spec.failed_slot_replicas)
    step.update(rollout=None, candidate_revision=None, candidate_slot=None, failed_revision=rollout.revision,
                failed_generation=step.endpoint.generation, phase="RolledBack")
    step.record(rollout.revision, rollout.model_uri, "RolledBack", reason, message)
    step.condition("RolledBack", True, reason, message)
    step.condition("Progressing", False, reason, f"reverted to stable revision {step.status.stable_revision}")
    step.event("Warning", "RolledBack", f"reverted to revision {step.status.stable_revision}: {message}")
    serving_conditions(step, active)


def _promote(step: Step, rollout: Rollout, old_active: str, reason: str) -> None:
    delay = _scale_down_delay(step.spec)
    step.update(rollout=None, stable_revision=rollout.revision, stable_model_uri=rollout.model_uri,
                active_slot=rollout.slot, candidate_revision=None, candidate_slot=None,
                failed_revision=None, failed_generation=None, phase="Healthy",
                scale_down=ScaleDown(slot=old_active, revision=step.status.stable_revision,
                                     at=format_time(step.now + timedelta(seconds=delay))))
    step.record(rollout.revision, rollout.model_uri, "Promoted", reason, f"serving from slot {rollout.slot}")
    step.event("Normal", "Promoted", f"revision {rollout.revision} is stable in slot {rollout.slot}")
    _healthy_conditions(step, f"revision {rollout.revision} serves from slot {rollout.slot}")
    _settle_idle_slot(step, old_active)


def _scale_down_delay(spec: ModelEndpointSpec) -> int:
    strategy = spec.strategy.blue_green or spec.strategy.canary
    return strategy.scale_down_delay_seconds if strategy else 0


def _settle_idle_slot(step: Step, idle: str) -> None:
    """The idle slot: full size until its scale-down is due, then zero (or a failed revision's few pods)."""
    status = step.status
    if status.scale_down is not None and status.scale_down.slot == idle:
        due = parse_time(status.scale_down.at)
        if step.now < due:
            step.serve(idle, step.spec.serving.replicas)
            step.wake_at(due)
            return
        step.update(scale_down=None)
    seen = step.observed.slot(idle)
    keep = step.spec.failed_slot_replicas if seen.revision and seen.revision == status.failed_revision else 0
    step.want_replicas(idle, keep)


# ------------------------------------------------------ status reporting (the rest: status_report.py)


def _healthy_conditions(step: Step, message: str) -> None:
    step.condition("Progressing", False, "RolloutComplete", message)
    step.condition("RolledBack", False, "RolloutComplete", message)
    serving_conditions(step, step.status.active_slot or FIRST_SLOT)
