"""The quality monitor's decision: checks of the stable revision after promotion. Pure.

``spec.monitor.checks`` are metric checks (the kinds, bounds and streaks of ``checks.metrics``,
:mod:`.checks.verdicts`) run against the stable revision in the active slot whenever no rollout is
under way. Their state lives in ``status.monitor`` (per stable revision), so a restart resumes:

- **episode start**: a check reaches ``failureLimit`` consecutive failures: condition
  ``QualityDegraded=True`` (check, value, threshold in the message), one Warning Event
  ``QualityDegraded``; with ``onFailure.job`` a Job name is chosen and written to status *first*
  (``<name>-retrain-<revision>-<episode start epoch>``), the Job is created by the next pass (a
  create answered 409 is one made already), unless the cooldown of the last Job still runs;
  with ``onFailure.revertTo: previous`` a revert to the previous promoted revision starts.
- **inconclusive** verdicts neither start nor end an episode (no data is no evidence either way);
  with no episode and a check stalled at ``inconclusiveLimit``, ``QualityDegraded`` is Unknown.
- **episode end**: every check's latest verdict is Pass: ``QualityDegraded=False`` reason
  ``QualityRecovered``, a Normal Event. Nothing else happens: no second Job, no traffic move.
- a new stable revision (promotion, revert) starts the checks afresh; the last Job and cooldown stay.

Revert to previous: the previous promoted revision (from ``status.history``) can be rebuilt only
where its exact Deployment still exists, i.e. the idle slot still holds it (scaled down after its
scale-down delay, not yet reused by a later candidate). History keeps each revision's model URI but
not its serving template, so rebuilding it from history would serve the old model with today's
template: a revision that never ran and was never validated. The monitor does not do that; it says
the previous revision cannot be rebuilt and only reports. When it can: the idle slot is scaled to full
size, and once ready becomes the stable slot (status first, the selector on the next pass, as every
revert); the degraded revision is recorded ``RolledBack`` with reason ``QualityDegraded`` and is not
retried until the spec changes (phase RolledBack, as after any revert: the spec in Git still names it).
"""

from __future__ import annotations

from datetime import timedelta

from .actions import CreateJob, DeleteAutoscaler, ScaleDeployment
from .api import MonitorEpisode, MonitorJobStatus, MonitorRevert, MonitorStatus
from .checks.verdicts import check_state, next_check_status, next_due, status_for
from .clock import format_time, parse_time
from .render import LABEL_ENDPOINT, LABEL_MANAGED_BY, LABEL_REVISION, MANAGED_BY, owner_reference
from .step import FIRST_SLOT, Step, other_slot

CONDITION = "QualityDegraded"
JOB_NAME_PREFIX_LENGTH = 30  # "<30>-retrain-<10>-<10>" fits a 63-character label value (job-name)


def job_name(endpoint: str, revision: str, started_at: str) -> str:
    epoch = int(parse_time(started_at).timestamp())
    return f"{endpoint[:JOB_NAME_PREFIX_LENGTH].rstrip('-')}-retrain-{revision}-{epoch}"


def render_job(owner: dict, spec: dict, name: str, revision: str, model_uri: str | None, check: str) -> dict:
    """The Job: the user's JobSpec, named, labelled and owned; restricted Pod Security defaults
    filled in where the template leaves them out (never overriding what it says)."""
    import copy  # noqa: PLC0415

    job_spec = copy.deepcopy(spec)
    pod = job_spec.setdefault("template", {}).setdefault("spec", {})
    pod.setdefault("restartPolicy", "Never")
    security = pod.setdefault("securityContext", {})
    security.setdefault("runAsNonRoot", True)
    security.setdefault("seccompProfile", {"type": "RuntimeDefault"})
    env = [{"name": "SLOTKEEPER_ENDPOINT", "value": owner["metadata"]["name"]},
           {"name": "SLOTKEEPER_REVISION", "value": revision},
           {"name": "SLOTKEEPER_MODEL_URI", "value": model_uri or ""},
           {"name": "SLOTKEEPER_CHECK", "value": check}]
    for container in pod.get("containers") or []:
        context = container.setdefault("securityContext", {})
        context.setdefault("allowPrivilegeEscalation", False)
        context.setdefault("capabilities", {"drop": ["ALL"]})
        names = {e.get("name") for e in container.get("env") or []}
        container["env"] = [*(container.get("env") or []), *(e for e in env if e["name"] not in names)]
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": owner["metadata"]["namespace"],
                     "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_ENDPOINT: owner["metadata"]["name"],
                                LABEL_REVISION: revision},
                     "ownerReferences": [owner_reference(owner)]},
        "spec": job_spec,
    }


def previous_revision(step: Step) -> tuple[str, str | None] | None:
    """The last promoted revision before the stable one, with its model URI (from history)."""
    stable = step.status.stable_revision
    for entry in reversed(step.status.history):
        if entry.outcome == "Promoted" and entry.revision != stable:
            return entry.revision, entry.model_uri
    return None


def decide_monitor(step: Step) -> None:
    """Fold this pass's monitor verdicts into status.monitor and act on episodes; only with
    spec.monitor, a stable revision and no rollout under way."""

    monitor = step.spec.monitor
    if monitor is None:
        if step.status.monitor is not None and step.status.monitor.episode is not None:
            step.update(monitor=step.status.monitor.model_copy(update={"episode": None}))
        return
    revision = step.status.stable_revision
    if revision is None or step.status.rollout is not None:
        return
    state = step.status.monitor or MonitorStatus()
    if state.revision != revision:  # a new stable revision: its checks start afresh
        if state.episode is not None:
            step.condition(CONDITION, False, "StableRevisionChanged",
                           f"revision {state.episode.revision} no longer serves; checking revision {revision}")
        state = state.model_copy(update={"revision": revision, "checks": [], "episode": None})
    statuses = list(state.checks)
    for check in monitor.checks:
        verdict = step.gates.monitor.get(check.name)
        if verdict is None:
            continue
        previous = status_for(statuses, check.name, revision)
        statuses = [s for s in statuses if s is not previous] + \
            [next_check_status(check, previous, revision, verdict, step.now_text)]
    order = {check.name: index for index, check in enumerate(monitor.checks)}
    statuses.sort(key=lambda s: order.get(s.name, len(order)))
    state = state.model_copy(update={"checks": statuses})
    for check in monitor.checks:
        step.wake_at(next_due(check, status_for(statuses, check.name, revision), revision, step.now))

    current = [(check, status_for(statuses, check.name, revision)) for check in monitor.checks]
    failed = [(c, s) for c, s in current if check_state(c, s) == "failed"]
    if state.episode is None and failed:
        check, status = failed[0]
        message = (f'check "{check.name}" on revision {revision} failed {status.consecutive_failures} time(s) '
                   f"in a row: {status.message}")
        state = state.model_copy(update={"episode": MonitorEpisode(revision=revision, check=check.name,
                                                                   started_at=step.now_text, message=message)})
        step.event("Warning", CONDITION, message)
        state = _start_job(step, state, message)
        if monitor.on_failure.revert_to == "previous":
            state = _start_revert(step, state)
    elif state.episode is not None and all(s is not None and s.verdict == "Pass" for _, s in current):
        message = f"every monitor check passes again on revision {revision}"
        step.event("Normal", "QualityRecovered", message)
        state = state.model_copy(update={"episode": None})
        step.update(monitor=state)
        step.condition(CONDITION, False, "QualityRecovered", message)
        _observe_job(step)
        return

    step.update(monitor=state)
    _observe_job(step)
    _create_job_if_named(step)
    state = step.status.monitor
    if state.episode is not None:
        note = _job_note(state)
        step.condition(CONDITION, True, "CheckFailed", state.episode.message + (f"; {note}" if note else ""))
    elif any(check_state(c, s) == "stalled" for c, s in current):
        step.condition(CONDITION, "Unknown", "ChecksInconclusive",
                       "; ".join(f'check "{c.name}": {s.message}' for c, s in current
                                 if check_state(c, s) == "stalled"))
    elif all(s is not None for _, s in current):
        condition = next((c for c in step.status.conditions if c.type == CONDITION), None)
        if condition is None or condition.status == "Unknown":
            step.condition(CONDITION, False, "ChecksPass" if all(s.verdict == "Pass" for _, s in current)
                           else "NoEpisode", f"revision {revision}: no monitor check has failed")
    _revert_step(step, FIRST_SLOT)


def _start_job(step: Step, state: MonitorStatus, message: str) -> MonitorStatus:
    """Name the episode's Job in status (created by the next pass), unless the cooldown runs."""
    job = step.spec.monitor.on_failure.job
    if job is None:
        return state
    if state.cooldown_until is not None and step.now < parse_time(state.cooldown_until):
        step.event("Normal", "RetrainingSkipped", f"no Job: the cooldown of Job {state.job.name if state.job else ''} "
                                                  f"runs until {state.cooldown_until}")
        return state
    episode = state.episode
    name = job_name(step.endpoint.name, episode.revision, episode.started_at)
    step.wake_ups.append(0.0)
    return state.model_copy(update={
        "job": MonitorJobStatus(name=name, revision=episode.revision),
        "cooldown_until": format_time(step.now + timedelta(seconds=job.cooldown_seconds)),
    })


def _create_job_if_named(step: Step) -> None:
    """A Job named in the status written before, never seen yet: create it (409: made already)."""
    state, job = step.status.monitor, step.spec.monitor.on_failure.job
    if state is None or state.job is None or state.job.created or job is None:
        return
    before = step.endpoint.status.monitor
    if before is None or before.job is None or before.job.name != state.job.name:
        return  # named in this pass: created once that is written (a crash cannot make two)
    check = state.episode.check if state.episode else ""
    body = render_job(step.endpoint.owner, job.spec, state.job.name, state.job.revision,
                      step.status.stable_model_uri, check)
    step.actions.append(CreateJob(body=body))
    step.event("Normal", "RetrainingJobCreated", f"Job {state.job.name} for revision {state.job.revision}")
    step.update(monitor=state.model_copy(update={"job": state.job.model_copy(update={"created": True})}))


def _observe_job(step: Step) -> None:
    state = step.status.monitor
    if state is None or state.job is None:
        return
    seen = next((j for j in step.observed.jobs if j.name == state.job.name), None)
    if seen is not None:
        job = state.job.model_copy(update={"created": True, "outcome": seen.outcome})
    elif state.job.outcome in ("Running", "Succeeded", "Failed"):
        job = state.job.model_copy(update={"outcome": "Missing"})  # deleted (or TTL): never made again
    else:
        return
    if job != state.job:
        step.update(monitor=state.model_copy(update={"job": job}))


def _job_note(state: MonitorStatus) -> str:
    if state.job is None or state.episode is None or state.job.revision != state.episode.revision:
        return ""
    return f"Job {state.job.name}: {state.job.outcome}"


def _start_revert(step: Step, state: MonitorStatus) -> MonitorStatus:

    previous = previous_revision(step)
    if previous is None:
        step.event("Warning", "RevertImpossible", "revertTo previous: no earlier promoted revision in history")
        return state.model_copy(update={"episode": state.episode.model_copy(update={
            "message": state.episode.message + "; no previous revision to revert to"})})
    idle = other_slot(step.status.active_slot or FIRST_SLOT)
    if step.observed.slot(idle).revision != previous[0]:
        why = (f"previous revision {previous[0]} cannot be rebuilt: slot {idle} no longer holds it, and history "
               f"keeps its model URI ({previous[1]}) but not its serving template")
        step.event("Warning", "RevertImpossible", why)
        return state.model_copy(update={"episode": state.episode.model_copy(update={
            "message": state.episode.message + "; " + why})})
    step.wake_ups.append(0.0)
    return state.model_copy(update={"revert": MonitorRevert(from_revision=step.status.stable_revision,
                                                            to_revision=previous[0], slot=idle,
                                                            started_at=step.now_text)})


def _revert_step(step: Step, first_slot: str) -> None:
    """The revert under way: the previous revision's slot at full size, then it becomes stable."""
    state = step.status.monitor
    revert = state.revert if state else None
    if revert is None:
        return
    if revert.from_revision != step.status.stable_revision:
        step.update(monitor=state.model_copy(update={"revert": None}))
        return
    slot = step.observed.slot(revert.slot)
    if slot.revision != revert.to_revision:
        step.update(monitor=state.model_copy(update={"revert": None}))
        step.event("Warning", "RevertImpossible", f"slot {revert.slot} no longer holds revision {revert.to_revision}")
        return
    replicas = step.full_size()
    step.actions = [a for a in step.actions
                    if not (isinstance(a, (ScaleDeployment, DeleteAutoscaler)) and a.slot == revert.slot)]
    step.sized.discard(revert.slot)
    step.want_replicas(revert.slot, replicas)
    if not (slot.fully_ready(revert.to_revision) and slot.replicas >= replicas):
        deadline = parse_time(revert.started_at) + timedelta(seconds=step.spec.checks.progress_deadline_seconds)
        if step.now >= deadline:
            step.update(monitor=state.model_copy(update={"revert": None}))
            step.event("Warning", "RevertImpossible", f"revision {revert.to_revision} in slot {revert.slot} was not "
                                                      f"ready within {step.spec.checks.progress_deadline_seconds}s")
            return
        step.wake_at(min(deadline, step.now + timedelta(seconds=10)))
        return
    degraded = revert.from_revision
    model_uri = next((e.model_uri for e in reversed(step.status.history)
                      if e.revision == revert.to_revision and e.outcome == "Promoted"), None)
    message = (state.episode.message if state.episode else f"revision {degraded} degraded") + \
        f"; reverted to previous revision {revert.to_revision}"
    step.update(monitor=state.model_copy(update={"revert": None}), stable_revision=revert.to_revision,
                stable_model_uri=model_uri, active_slot=revert.slot, failed_revision=degraded,
                failed_generation=step.endpoint.generation, phase="RolledBack", scale_down=None)
    step.record(degraded, step.endpoint.status.stable_model_uri, "RolledBack", CONDITION, message)
    step.condition("RolledBack", True, CONDITION, message)
    step.event("Warning", "RolledBack", f"reverted to revision {revert.to_revision}: {message}")
    step.want_selector(revert.slot)  # kept for the next pass by the write-ahead rule
