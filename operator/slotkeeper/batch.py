"""Batch scoring with the stable revision (``spec.batch``): pure rendering and decisions.

**Pinning.** A batch pod is the stable revision's slot pod (image, env with the model URI and
``SLOTKEEPER_MODEL_VERSION``, resources, security context, volumes) with ``args: [batch, ...]`` and no
ports or probes. The stable revision is the one ``status.stableRevision`` names, never a candidate;
its pod template is rendered from the spec only when the spec's revision *is* the stable one
(:func:`stable_pod_template`), because during a rollout (or after a revert) the spec describes
another revision. A Job keeps the pod template it was created with, so a rollout during a run never
changes the model of that run; the revision is in the Job's and pod's labels and env.

**Schedules.** A job with ``schedule`` is a CronJob whose job template the operator re-renders
whenever what it would render changes (the stable revision above all); the applied config hash and
revision are kept in ``status.batch.schedules``, so a pass applies only on a change and a restart
does not re-apply. While no stable template can be rendered (no stable revision yet, or the spec names
another revision) an existing CronJob keeps the revision it pins, and a new one waits
(``status.batch.waiting``). A schedule removed from the spec has its CronJob deleted (then the record).

**Runs.** Jobs labelled ``slotkeeper.io/batch`` (made by a CronJob, or by ``slotkeeper batch run``)
are folded into ``status.batch.runs`` (bounded: the last :data:`RUN_HISTORY`): the Job's outcome, and
rows / failed rows from the summary the batch mode writes as its container's termination message.
A run that ends gets one Event, in the pass that records the end (a restart finds it recorded).
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

from .actions import ApplyCronJob, DeleteCronJob
from .api import BatchJob, BatchRun, BatchSchedule, BatchStatus, ModelEndpointSpec, ModelEndpointStatus
from .observe import JOB_NAME_LABEL, LABEL_BATCH, BatchResult, JobSummary
from .render import (KEYS_VOLUME, LABEL_ENDPOINT, LABEL_MANAGED_BY, LABEL_REVISION, LABEL_SLOT, MANAGED_BY,
                     SERVING_GROUP, config_hash, owner_reference, render_slot_deployment)
from .revision import revision_of
from .step import Step

RUN_ID_ENV = "SLOTKEEPER_BATCH_RUN_ID"  # the batch mode's run id: the Job's name, so a retried pod resumes
DATA_MOUNT_ROOT = "/mnt/batch"
RUN_HISTORY = 20
CRON_JOB_NAME_LENGTH = 52  # the CronJob controller appends "-<8 digits>" to name a Job (63)
JOB_NAME_LENGTH = 63  # a Job's name is its pods' job-name label value
TTL_SECONDS = 7 * 86400  # an ad hoc Job (and its pods) is kept this long for logs; status keeps the run
TERMINAL = ("Succeeded", "Failed", "Missing")
# Exit codes of the batch mode that a retry cannot fix: 1 (threshold exceeded, input unreadable), 2 (usage).
FINAL_EXIT_CODES = [1, 2]


def bounded_name(prefix: str, suffix: str, limit: int) -> str:
    """``<prefix>-<suffix>`` in ``limit`` characters; a cut prefix gets a short hash of itself, so
    two long endpoint names sharing their start still get different names."""
    name = f"{prefix}-{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(prefix.encode()).hexdigest()[:5]
    keep = limit - len(suffix) - len(digest) - 2
    return f"{prefix[:keep].rstrip('-')}-{digest}-{suffix}"


def cron_job_name(endpoint: str, entry: str) -> str:
    return bounded_name(endpoint, entry, CRON_JOB_NAME_LENGTH)


def run_job_name(endpoint: str, entry: str | None, epoch: int) -> str:
    return bounded_name(endpoint, f"{entry or 'batch'}-{epoch}", JOB_NAME_LENGTH)


# ------------------------------------------------------------------------------------ rendering

def data_location(uri: str, writable: bool) -> tuple[str, str | None]:
    """The URI the batch mode reads or writes, and the claim a ``pvc://claim/path`` URI needs mounted."""
    parts = urlsplit(uri)
    if parts.scheme != "pvc":
        return uri, None
    return f"file://{DATA_MOUNT_ROOT}/{parts.netloc}{parts.path}", parts.netloc


def shard_count(job: BatchJob) -> int:
    return job.parallelism or 1


def batch_args(job: BatchJob) -> list[str]:
    """The container's args: the batch mode's command line (the image's ENTRYPOINT is slotkeeper-serve).
    A sharded run passes its shard count; each pod's index is the Job controller's $JOB_COMPLETION_INDEX."""
    args = ["batch", "--input", data_location(job.input, False)[0], "--output", data_location(job.output, True)[0]]
    shards = shard_count(job) if shard_count(job) > 1 else None
    for flag, value in (("--key-column", job.key_column), ("--chunk-rows", job.chunk_rows),
                        ("--max-failed-rows", job.max_failed_rows), ("--max-failed-fraction", job.max_failed_fraction),
                        ("--shard-count", shards)):
        if value is not None:
            args += [flag, str(value)]
    return args


def _data_volumes(job: BatchJob) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One volume per claim: input read-only, output read-write (one claim for both: read-write)."""
    claims: dict[str, bool] = {}
    for uri, writable in ((job.input, False), (job.output, True)):
        claim = data_location(uri, writable)[1]
        if claim is not None:
            claims[claim] = claims.get(claim, False) or writable
    volumes, mounts = [], []
    for index, (claim, writable) in enumerate(claims.items()):
        name = f"batch-data-{index}"
        volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": not writable}})
        mounts.append({"name": name, "mountPath": f"{DATA_MOUNT_ROOT}/{claim}", "readOnly": not writable})
    return volumes, mounts


def batch_labels(endpoint: str, revision: str, entry: str | None) -> dict[str, str]:
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_ENDPOINT: endpoint, LABEL_REVISION: revision,
            LABEL_BATCH: entry or ""}


def batch_pod_template(stable_template: Mapping[str, Any], job: BatchJob, endpoint: str, revision: str,
                       entry: str | None) -> dict[str, Any]:
    """The stable revision's slot pod template turned into a batch pod: same image, env, resources
    (unless the job names its own), security context and model volume; no slot label (no Service
    selects it), no ports, probes or keys (it serves nobody); args run the batch mode."""
    template = copy.deepcopy(dict(stable_template))
    pod = template["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "model")
    for key in ("ports", "readinessProbe", "livenessProbe", "startupProbe"):
        container.pop(key, None)
    container["args"] = batch_args(job)
    container["env"] = [e for e in container.get("env") or [] if e["name"] != "SLOTKEEPER_KEYS_DIR"] + [
        {"name": RUN_ID_ENV, "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{JOB_NAME_LABEL}']"}}}]
    if job.resources is not None:
        container["resources"] = job.resources.to_api()
    volumes, mounts = _data_volumes(job)
    container["volumeMounts"] = [m for m in container.get("volumeMounts") or [] if m["name"] != KEYS_VOLUME] + mounts
    pod["volumes"] = [v for v in pod.get("volumes") or [] if v["name"] != KEYS_VOLUME] + volumes
    pod["restartPolicy"] = "Never"
    # The batch mode runs as UID/GID 10001 and writes its output: a fresh PVC's root belongs to root,
    # so the volume is given to the image's group (once: OnRootMismatch skips the walk of a filled
    # volume on later runs). fsGroup is allowed under restricted Pod Security.
    pod["securityContext"] = {**(pod.get("securityContext") or {}), "fsGroup": SERVING_GROUP,
                              "fsGroupChangePolicy": "OnRootMismatch"}
    labels = {k: v for k, v in (template.get("metadata") or {}).get("labels", {}).items() if k != LABEL_SLOT}
    template["metadata"] = {"labels": {**labels, **batch_labels(endpoint, revision, entry)}}
    return template


def batch_job_spec(stable_template: Mapping[str, Any], job: BatchJob, endpoint: str, revision: str,
                   entry: str | None) -> dict[str, Any]:
    """A pod killed (or its node lost) is replaced and resumes; a failure the batch mode reports
    (exit 1 or 2) fails the Job at once: a retry would fail the same way.

    ``parallelism`` N > 1 makes it an Indexed Job of N completions run at once: pod I (its
    ``$JOB_COMPLETION_INDEX``) scores the chunks I mod N, and the Job is Complete only when every
    index succeeded; one shard's failure fails the Job (the others are stopped). ``backoffLimit``
    counts retries over all shards. N = 1 renders the plain Job it always did, so the CronJobs of
    existing specs keep their config hash and are not re-applied."""
    shards = shard_count(job)
    indexed = {"completionMode": "Indexed"} if shards > 1 else {}
    return {
        "backoffLimit": job.backoff_limit,
        **indexed,
        "completions": shards,
        "parallelism": shards,
        "podFailurePolicy": {"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": "model", "operator": "In",
                                                  "values": FINAL_EXIT_CODES}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]},
        "template": batch_pod_template(stable_template, job, endpoint, revision, entry),
    }


def render_batch_job(owner: dict[str, Any], stable_template: Mapping[str, Any], job: BatchJob, name: str,
                     revision: str, entry: str | None) -> dict[str, Any]:
    """A one-off run (``slotkeeper batch run``): owned by the endpoint, kept TTL_SECONDS after it ends."""
    endpoint = owner["metadata"]["name"]
    spec = batch_job_spec(stable_template, job, endpoint, revision, entry)
    spec["ttlSecondsAfterFinished"] = TTL_SECONDS
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": owner["metadata"]["namespace"],
                         "labels": batch_labels(endpoint, revision, entry),
                         "ownerReferences": [owner_reference(owner)]},
            "spec": spec}


def render_batch_cron_job(owner: dict[str, Any], stable_template: Mapping[str, Any], job: BatchJob,
                          revision: str) -> dict[str, Any]:
    """A scheduled job. concurrencyPolicy Forbid: a run still going when the next is due is not
    joined by a second one (both would compete for the same resources and output root)."""
    endpoint = owner["metadata"]["name"]
    labels = batch_labels(endpoint, revision, job.name)
    return {"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": cron_job_name(endpoint, job.name), "namespace": owner["metadata"]["namespace"],
                         "labels": labels, "ownerReferences": [owner_reference(owner)]},
            "spec": {"schedule": job.schedule, "suspend": job.suspend, "concurrencyPolicy": "Forbid",
                     "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 3,
                     "jobTemplate": {"metadata": {"labels": labels},
                                     "spec": batch_job_spec(stable_template, job, endpoint, revision, job.name)}}}


def stable_pod_template(owner: dict[str, Any], spec: ModelEndpointSpec,
                        status: ModelEndpointStatus) -> dict[str, Any] | None:
    """The stable revision's slot pod template, when the spec describes it; None otherwise (no stable
    revision yet, or the spec names a candidate or a reverted revision)."""
    stable = status.stable_revision
    if stable is None or revision_of(spec) != stable:
        return None
    return render_slot_deployment(owner, spec, status.active_slot or "blue", stable)["spec"]["template"]


# ------------------------------------------------------------------------------------ decisions

def decide_schedules(owner: dict[str, Any], jobs: Iterable[BatchJob], schedules: list[BatchSchedule],
                     template: Mapping[str, Any] | None, revision: str | None,
                     ) -> tuple[list[BatchSchedule], list[ApplyCronJob | DeleteCronJob], list[str]]:
    """Each scheduled job's CronJob, applied when what it would render differs from what was applied
    (by config hash); records of schedules no longer in the spec are deleted with their CronJob.
    Returns the new records, the actions, and the names of schedules waiting for a stable template."""
    wanted = {job.name: job for job in jobs if job.schedule is not None}
    known = {record.name: record for record in schedules}
    records, actions, waiting = [], [], []
    for name, job in wanted.items():
        record = known.get(name)
        if template is None or revision is None:
            if record is None:
                waiting.append(name)
            else:
                records.append(record)  # keeps pinning the revision it pins
            continue
        body = render_batch_cron_job(owner, template, job, revision)
        config = config_hash(body)
        if record is None or record.config != config:
            actions.append(ApplyCronJob(body=body))
            record = BatchSchedule(name=name, cron_job=body["metadata"]["name"], revision=revision, config=config)
        records.append(record)
    for record in schedules:
        if record.name not in wanted:
            actions.append(DeleteCronJob(name=record.cron_job))
    return records, actions, waiting


def _run_of(job: JobSummary, result: BatchResult | None, before: BatchRun | None) -> BatchRun:
    reason = (result.reason if result else None) or job.reason or (before.reason if before else None)
    return BatchRun(
        job_name=job.name, job=job.batch or None, revision=job.revision or (before.revision if before else ""),
        created=job.created or (before.created if before else ""), start_time=job.start_time,
        completion_time=job.completion_time,
        rows=result.rows if result else (before.rows if before else None),
        failed_rows=result.failed_rows if result else (before.failed_rows if before else None),
        outcome=job.outcome, reason=reason)


def fold_runs(runs: list[BatchRun], jobs: Iterable[JobSummary], results: Mapping[str, BatchResult],
              ) -> tuple[list[BatchRun], list[BatchRun]]:
    """The run history with this pass's batch Jobs folded in, and the runs that ended in this pass.

    Sorted by creation, the last RUN_HISTORY kept; a Job older than the oldest run of a full history
    was trimmed from it before and is not added again. A run recorded Running whose Job is gone
    (deleted before it ended) is Missing."""
    by_name = {run.job_name: run for run in runs}
    oldest = (runs[0].created, runs[0].job_name) if len(runs) >= RUN_HISTORY else None
    ended, seen = [], set()
    for job in jobs:
        if job.batch is None:
            continue  # a quality-monitor Job
        seen.add(job.name)
        before = by_name.get(job.name)
        if before is None and oldest is not None and (job.created or "", job.name) < oldest:
            continue
        run = _run_of(job, results.get(job.name), before)
        if run.outcome in TERMINAL and (before is None or before.outcome not in TERMINAL):
            ended.append(run)
        by_name[job.name] = run
    for name, run in list(by_name.items()):
        if name not in seen and run.outcome == "Running":
            by_name[name] = run.model_copy(update={"outcome": "Missing",
                                                   "reason": "the Job was deleted before it ended"})
            ended.append(by_name[name])
    history = sorted(by_name.values(), key=lambda run: (run.created, run.job_name))[-RUN_HISTORY:]
    return history, [run for run in ended if run in history]


def run_message(run: BatchRun) -> str:
    counts = f", {run.rows} rows, {run.failed_rows} failed" if run.rows is not None else ""
    why = f": {run.reason}" if run.reason and run.outcome != "Succeeded" else ""
    entry = f" ({run.job})" if run.job else ""
    return f"batch run {run.job_name}{entry} on revision {run.revision}: {run.outcome}{counts}{why}"


def decide_batch(step: Step) -> None:
    """Fold this pass's batch Jobs into status.batch.runs (an Event per run that ended) and keep each
    schedule's CronJob rendered from the stable revision."""
    spec_jobs = step.spec.batch.jobs if step.spec.batch is not None else []
    state = step.status.batch or BatchStatus()
    owner = step.endpoint.owner
    # Rendered only for schedules to keep: most endpoints have none, and rendering costs a slot
    # Deployment per pass (a tenth of the operator's CPU at 1,000 endpoints created at once).
    scheduled = any(job.schedule is not None for job in spec_jobs)
    template = stable_pod_template(owner, step.spec, step.status) if scheduled else None
    schedules, actions, waiting = decide_schedules(owner, spec_jobs, list(state.schedules), template,
                                                   step.status.stable_revision)
    pinned = {record.name: record.revision for record in state.schedules}
    for record in schedules:
        if pinned.get(record.name) != record.revision:
            step.event("Normal", "BatchSchedulePinned", f"CronJob {record.cron_job} runs revision {record.revision}")
    # First in the pass: a pass that moves traffic drops what follows the move until its status is
    # written (decide._write_ahead), and the record of an apply must never outlive a dropped apply.
    step.actions[:0] = actions
    runs, ended = fold_runs(list(state.runs), step.observed.jobs, step.observed.batch_results)
    for run in ended:
        step.event("Normal" if run.outcome == "Succeeded" else "Warning", f"BatchRun{run.outcome}", run_message(run))
    note = None
    if waiting:
        note = (f"schedule(s) {', '.join(waiting)} wait for a stable revision the spec describes (stable: "
                f"{step.status.stable_revision or 'none yet'})")
    new = BatchStatus(runs=runs, schedules=schedules, waiting=note)
    if new != BatchStatus() or step.status.batch is not None:
        step.update(batch=new)
