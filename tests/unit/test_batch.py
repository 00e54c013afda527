"""Decision tables for batch scoring (spec.batch, issue 17): the batch pod rendered from the stable
revision's slot pod, the CronJob re-pinned only when the stable revision changes (never to a
candidate, never after a revert), schedules removed, runs folded into a bounded history with one
Event per run, and nothing but counts from a pod's termination message reaching status."""

from __future__ import annotations

import json

import pytest

from slotkeeper.api import BatchJob, BatchRun, ModelEndpointSpec, ModelEndpointStatus
from slotkeeper.batch import (RUN_HISTORY, batch_args, cron_job_name, fold_runs, render_batch_job, run_job_name,
                              stable_pod_template)
from slotkeeper.observe import BatchResult, JobSummary, PodSummary, batch_result, summarise_job, summarise_pod
from slotkeeper.render import render_slot_deployment
from slotkeeper.revision import revision_of

from .world import World, make_spec

NEW_URI = "file:///models/credit/2/model.joblib"
OWNER = {"metadata": {"name": "credit", "namespace": "ml", "uid": "uid-1"}}
NIGHTLY = {"name": "nightly", "input": "pvc://data/in/2026", "output": "pvc://results/nightly",
           "schedule": "0 2 * * *"}


def job(**fields) -> BatchJob:
    return BatchJob.model_validate({"name": "nightly", "input": "file:///in", "output": "file:///out", **fields})


def template(spec: ModelEndpointSpec | None = None, revision: str = "r1", slot: str = "blue") -> dict:
    spec = spec or make_spec()
    return render_slot_deployment(OWNER, spec, slot, revision)["spec"]["template"]


def batch_pod(body: dict) -> dict:
    return body["spec"]["template"]["spec"]


# --------------------------------------------------------------------------------- rendering


@pytest.mark.parametrize(("input", "output", "args", "volumes"), [
    ("file:///data/in.csv", "file:///data/out", ["file:///data/in.csv", "file:///data/out"], []),
    ("https://files.example.com/rows.csv", "file:///out", ["https://files.example.com/rows.csv", "file:///out"], []),
    ("pvc://data/in/2026", "file:///out", ["file:///mnt/batch/data/in/2026", "file:///out"],
     [("data", True, "/mnt/batch/data")]),
    ("file:///in", "pvc://results/nightly", ["file:///in", "file:///mnt/batch/results/nightly"],
     [("results", False, "/mnt/batch/results")]),
    ("pvc://data/in", "pvc://results/out", ["file:///mnt/batch/data/in", "file:///mnt/batch/results/out"],
     [("data", True, "/mnt/batch/data"), ("results", False, "/mnt/batch/results")]),
    ("pvc://data/in", "pvc://data/out", ["file:///mnt/batch/data/in", "file:///mnt/batch/data/out"],
     [("data", False, "/mnt/batch/data")]),  # one claim for both: mounted once, read-write
])
def test_uris_become_mounted_paths_input_read_only_output_read_write(input, output, args, volumes):
    body = render_batch_job(OWNER, template(), job(input=input, output=output), "credit-nightly-1", "r1", "nightly")
    pod = batch_pod(body)
    (container,) = pod["containers"]
    assert container["args"][:5] == ["batch", "--input", args[0], "--output", args[1]]
    claims = [(v["persistentVolumeClaim"]["claimName"], v["persistentVolumeClaim"]["readOnly"])
              for v in pod["volumes"] if "persistentVolumeClaim" in v]
    mounts = {m["name"]: (m["mountPath"], m.get("readOnly")) for m in container["volumeMounts"]}
    assert claims == [(claim, read_only) for claim, read_only, _ in volumes]
    data = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert [mounts[v["name"]] for v in data] == [(path, read_only) for _, read_only, path in volumes]


@pytest.mark.parametrize(("fields", "flags"), [
    ({}, []),
    ({"keyColumn": "customer"}, ["--key-column", "customer"]),
    ({"chunkRows": 5000, "maxFailedRows": 10}, ["--chunk-rows", "5000", "--max-failed-rows", "10"]),
    ({"maxFailedFraction": 0.05}, ["--max-failed-fraction", "0.05"]),
])
def test_thresholds_and_options_become_flags_of_the_batch_mode(fields, flags):
    assert batch_args(job(**fields))[5:] == flags


def test_the_batch_pod_is_the_stable_slot_pod_without_serving_parts():
    spec = make_spec(serving={"image": "example/serve:3", "resources": {"limits": {"cpu": "2"}},
                              "env": [{"name": "OMP_NUM_THREADS", "value": "2"}]})
    slot = template(spec, "r1")
    body = render_batch_job(OWNER, slot, job(), "credit-nightly-1", "r1", "nightly")
    pod, (container,) = batch_pod(body), batch_pod(body)["containers"]
    (served,) = slot["spec"]["containers"]
    assert container["image"] == "example/serve:3" and container["resources"] == {"limits": {"cpu": "2"}}
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["SLOTKEEPER_MODEL_VERSION"] == "r1" and env["SLOTKEEPER_MODEL_URI"] == spec.model.uri
    assert env["OMP_NUM_THREADS"] == "2"
    assert env["SLOTKEEPER_BATCH_RUN_ID"] == {"fieldRef": {"fieldPath": "metadata.labels['job-name']"}}
    assert not {"ports", "readinessProbe", "livenessProbe"} & container.keys()
    # restricted Pod Security, as the slot pod
    assert container["securityContext"] == served["securityContext"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"},
                                      "fsGroup": 10001, "fsGroupChangePolicy": "OnRootMismatch"}  # writes output
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    restricted_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                          "projected", "secret"}
    keyed = render_batch_job(OWNER, slot, job(input="pvc://data/in", output="pvc://out/x"), "n", "r1", "nightly")
    for volume in batch_pod(keyed)["volumes"]:
        assert set(volume) - {"name"} <= restricted_volumes, volume
    labels = body["spec"]["template"]["metadata"]["labels"]
    assert "slotkeeper.io/slot" not in labels  # no Service selects a batch pod
    assert labels["slotkeeper.io/revision"] == "r1" and labels["slotkeeper.io/batch"] == "nightly"
    assert body["metadata"]["labels"]["slotkeeper.io/revision"] == "r1"
    assert body["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    rules = body["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailJob", "onExitCodes": {"containerName": "model", "operator": "In",
                                                             "values": [1, 2]}}


def test_a_job_with_resources_overrides_the_serving_resources_and_keys_stay_out():
    spec = make_spec(auth={"mode": "key"}, serving={"resources": {"limits": {"cpu": "1"}}})
    body = render_batch_job(OWNER, template(spec), job(resources={"requests": {"cpu": "4"}}), "n", "r1", None)
    pod, (container,) = batch_pod(body), batch_pod(body)["containers"]
    assert container["resources"] == {"requests": {"cpu": "4"}}
    assert "keys" not in {v["name"] for v in pod["volumes"]}
    assert "SLOTKEEPER_KEYS_DIR" not in {e["name"] for e in container["env"]}
    assert body["metadata"]["labels"]["slotkeeper.io/batch"] == ""  # ad hoc


@pytest.mark.parametrize("endpoint", ["credit", "c" * 57, "c" * 56 + "d"])
def test_names_fit_their_limits_and_long_endpoints_stay_distinct(endpoint):
    cron, run = cron_job_name(endpoint, "n" * 20), run_job_name(endpoint, "n" * 20, 1_796_000_000)
    assert len(cron) <= 52 and len(run) <= 63
    assert cron.endswith("-" + "n" * 20)
    assert cron_job_name("c" * 57, "nightly") != cron_job_name("c" * 56 + "d", "nightly")


# --------------------------------------------------------------------------------- pinning


def scheduled(**overrides) -> World:
    world = World(spec=make_spec(batch={"jobs": [NIGHTLY]}, **overrides))
    world.settle()
    return world


def pinned(world: World) -> str:
    (cron,) = world.cron_jobs.values()
    template_spec = cron["spec"]["jobTemplate"]["spec"]["template"]
    (container,) = template_spec["spec"]["containers"]
    version = next(e["value"] for e in container["env"] if e["name"] == "SLOTKEEPER_MODEL_VERSION")
    assert template_spec["metadata"]["labels"]["slotkeeper.io/revision"] == version
    return version


def promote(world: World) -> None:
    world.annotations["slotkeeper.io/promote"] = "t1"
    world.settle()
    world.advance(600)  # past the analysis
    world.settle()


def test_batch_jobs_are_not_part_of_the_revision():
    assert revision_of(make_spec(batch={"jobs": [NIGHTLY]})) == revision_of(make_spec())


def test_stable_template_only_when_the_spec_describes_the_stable_revision():
    spec = make_spec()
    assert stable_pod_template(OWNER, spec, ModelEndpointStatus()) is None
    stable = ModelEndpointStatus(stable_revision=revision_of(spec), active_slot="green")
    assert stable_pod_template(OWNER, spec, stable) == template(spec, revision_of(spec), "green")
    assert stable_pod_template(OWNER, make_spec(uri=NEW_URI), stable) is None  # a candidate's spec


def test_a_schedule_pins_the_stable_revision_and_is_applied_once():
    world = scheduled()
    stable = world.status.stable_revision
    assert pinned(world) == stable
    assert world.cron_jobs["credit-nightly"]["spec"]["schedule"] == "0 2 * * *"
    assert world.cron_jobs["credit-nightly"]["spec"]["concurrencyPolicy"] == "Forbid"
    assert len(world.cron_job_applies) == 1
    (record,) = world.status.batch.schedules
    assert (record.name, record.cron_job, record.revision) == ("nightly", "credit-nightly", stable)
    world.step()
    assert len(world.cron_job_applies) == 1  # nothing changed: no second apply


def test_a_rollout_repins_only_once_the_new_revision_is_stable():
    world = scheduled(strategy={"blueGreen": {"autoPromote": False}})
    old = world.status.stable_revision
    world.change_spec(uri=NEW_URI, batch={"jobs": [NIGHTLY]}, strategy={"blueGreen": {"autoPromote": False}})
    world.settle()
    assert world.status.phase == "Paused" and world.status.candidate_revision != old
    assert pinned(world) == old and len(world.cron_job_applies) == 1  # the candidate is never pinned
    promote(world)
    assert world.status.stable_revision != old
    assert pinned(world) == world.status.stable_revision
    assert "BatchSchedulePinned" in [e.reason for e in world.events]


def test_a_reverted_rollout_leaves_the_schedule_on_the_stable_revision():
    world = scheduled()
    old = world.status.stable_revision
    world.change_spec(uri=NEW_URI, batch={"jobs": [NIGHTLY]})
    world.step()
    world.crash("green")
    world.advance(1)
    world.settle()
    assert world.status.phase == "RolledBack"
    assert pinned(world) == old and len(world.cron_job_applies) == 1


def test_a_schedule_added_while_the_spec_names_a_candidate_waits():
    world = World()
    world.settle()
    world.change_spec(uri=NEW_URI, batch={"jobs": [NIGHTLY]}, strategy={"blueGreen": {"autoPromote": False}})
    world.settle()
    assert world.cron_jobs == {} and "nightly" in world.status.batch.waiting
    promote(world)
    assert pinned(world) == world.status.stable_revision and world.status.batch.waiting is None


@pytest.mark.parametrize("change", [{"schedule": None}, None], ids=["schedule removed", "job removed"])
def test_a_schedule_leaving_the_spec_deletes_its_cron_job(change):
    world = scheduled()
    jobs = [] if change is None else [{**NIGHTLY, **change}]
    world.spec = make_spec(batch={"jobs": jobs} if jobs else None)
    world.settle()
    assert world.cron_jobs == {} and world.status.batch.schedules == []


def test_suspend_and_schedule_changes_are_applied():
    world = scheduled()
    world.spec = make_spec(batch={"jobs": [{**NIGHTLY, "suspend": True, "schedule": "@hourly"}]})
    world.settle()
    assert world.cron_jobs["credit-nightly"]["spec"]["suspend"] is True
    assert world.cron_jobs["credit-nightly"]["spec"]["schedule"] == "@hourly"
    assert len(world.cron_job_applies) == 2


# ------------------------------------------------------------------------------------- runs


def batch_job(name: str, outcome: str = "Running", created: str = "2026-11-21T12:00:00Z", revision: str = "r1",
              entry: str | None = "nightly", reason: str | None = None) -> JobSummary:
    return JobSummary(name=name, revision=revision, outcome=outcome, batch=entry, created=created, reason=reason)


def test_a_run_is_recorded_running_then_ended_with_one_event():
    world = scheduled()
    world.jobs["credit-nightly-1"] = batch_job("credit-nightly-1")
    world.step()
    (run,) = world.status.batch.runs
    assert (run.outcome, run.revision, run.job) == ("Running", "r1", "nightly")
    world.pods.append(PodSummary(name="p", slot="", revision="r1", ready=False, job="credit-nightly-1",
                                 batch_result=BatchResult(rows=1000, failed_rows=3, revision="r1",
                                                          outcome="Succeeded", reason=None)))
    world.jobs["credit-nightly-1"] = batch_job("credit-nightly-1", "Succeeded")
    world.step()
    world.step()
    (run,) = world.status.batch.runs
    assert (run.outcome, run.rows, run.failed_rows) == ("Succeeded", 1000, 3)
    ended = [e for e in world.events if e.reason.startswith("BatchRun")]
    assert [(e.type, e.reason) for e in ended] == [("Normal", "BatchRunSucceeded")]
    assert "revision r1" in ended[0].message and "1000 rows, 3 failed" in ended[0].message


def test_a_failed_run_is_a_warning_with_its_reason_and_a_deleted_running_job_is_missing():
    runs, ended = fold_runs([], [batch_job("a", "Failed", reason="PodFailurePolicy"), batch_job("b")], {})
    assert [(r.job_name, r.outcome) for r in ended] == [("a", "Failed")] and ended[0].reason == "PodFailurePolicy"
    runs, ended = fold_runs(runs, [batch_job("a", "Failed", reason="PodFailurePolicy")], {})
    assert [(r.job_name, r.outcome) for r in ended] == [("b", "Missing")]
    runs, ended = fold_runs(runs, [], {})
    assert ended == [] and {r.job_name: r.outcome for r in runs} == {"a": "Failed", "b": "Missing"}


def test_quality_monitor_jobs_are_not_runs():
    runs, ended = fold_runs([], [JobSummary(name="credit-retrain-r1-1", revision="r1", outcome="Succeeded")], {})
    assert runs == [] and ended == []


def test_history_is_bounded_and_a_trimmed_run_is_not_added_again():
    jobs = [batch_job(f"run-{i:02}", "Succeeded", created=f"2026-11-21T12:{i:02}:00Z") for i in range(RUN_HISTORY + 5)]
    runs, ended = fold_runs([], jobs, {})
    assert len(runs) == RUN_HISTORY and runs[0].job_name == "run-05" and runs[-1].job_name == f"run-{RUN_HISTORY + 4}"
    assert len(ended) == RUN_HISTORY  # the trimmed ones are not announced
    again, ended = fold_runs(runs, jobs, {})
    assert again == runs and ended == []
    newer = batch_job("run-99", created="2026-11-21T13:00:00Z")
    runs, _ = fold_runs(runs, [*jobs, newer], {})
    assert runs[-1].job_name == "run-99" and runs[0].job_name == "run-06"


def test_a_restart_announces_nothing_again():
    ended_run = BatchRun(job_name="a", job="nightly", revision="r1", created="2026-11-21T12:00:00Z",
                         outcome="Succeeded", rows=10, failed_rows=0)
    runs, ended = fold_runs([ended_run], [batch_job("a", "Succeeded")], {})
    assert ended == [] and runs[0].rows == 10  # counts kept from status when the pod is gone


# ----------------------------------------------------------------------------- observation


def terminated(message: str) -> dict:
    return {"metadata": {"name": "credit-nightly-1-x", "labels": {
        "app.kubernetes.io/managed-by": "slotkeeper", "slotkeeper.io/endpoint": "credit",
        "slotkeeper.io/batch": "nightly", "slotkeeper.io/revision": "r1", "job-name": "credit-nightly-1"}},
        "status": {"containerStatuses": [{"name": "model", "state": {"terminated": {"exitCode": 1, "message": message}}}]}}


def test_the_summary_in_the_termination_message_gives_counts_and_nothing_else():
    summary = {"runId": "credit-nightly-1", "revision": "r1", "model": "credit", "rows": 1000, "failedRows": 20,
               "seconds": 3.5, "outcome": "Failed",
               "reason": "failed rows 20 > 10 reading https://user:pw@files.example.com/in.csv?X-Amz-Signature=abc",
               "token": "not-for-status"}
    pod = summarise_pod(terminated(json.dumps(summary)))
    assert pod.job == "credit-nightly-1"
    result = pod.batch_result
    assert (result.rows, result.failed_rows, result.revision, result.outcome) == (1000, 20, "r1", "Failed")
    assert "pw" not in result.reason and "Signature" not in result.reason
    assert "https://files.example.com/in.csv" in result.reason


@pytest.mark.parametrize("message", ["", "Error: out of memory", "[1, 2]", json.dumps({"rows": "many"})])
def test_a_message_that_is_not_a_summary_gives_no_counts(message):
    result = batch_result(terminated(message)["status"]["containerStatuses"])
    assert result is None or (result.rows is None and result.failed_rows is None)


def test_a_job_summary_carries_times_and_the_failure_reason():
    body = {"metadata": {"name": "j", "creationTimestamp": "2026-11-21T12:00:00Z",
                         "labels": {"slotkeeper.io/batch": "", "slotkeeper.io/revision": "r1"}},
            "status": {"startTime": "2026-11-21T12:00:01Z", "failed": 1, "conditions": [
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}}
    summary = summarise_job(body)
    assert (summary.batch, summary.outcome, summary.reason, summary.start_time) == (
        "", "Failed", "BackoffLimitExceeded", "2026-11-21T12:00:01Z")


# ------------------------------------------------------------------------- crash at every write


def batch_scenario(crash_at: tuple[int, int] | None) -> World:
    """A scheduled endpoint, a run on revision 1, a rollout promoted during it, the run ending, the
    schedule removed; the process optionally dies in pass ``crash_at[0]`` after ``crash_at[1]`` actions."""
    world = World(spec=make_spec(batch={"jobs": [NIGHTLY]}))
    passes = 0

    def settle() -> None:
        nonlocal passes
        for _ in range(30):
            for slot in list(world.deployments):
                world.make_ready(slot)
            passes += 1
            before = (dict(world.cron_jobs), world.status)
            if crash_at and passes == crash_at[0]:
                for action in world.decide().actions[:crash_at[1]]:
                    world.apply(action)  # then the process dies: no status patch
                continue
            if not world.single_step().actions and (dict(world.cron_jobs), world.status) == before:
                return
        raise AssertionError("did not settle")

    settle()
    old = world.status.stable_revision
    world.jobs["credit-nightly-1"] = batch_job("credit-nightly-1", revision=old)
    settle()
    world.change_spec(uri=NEW_URI, batch={"jobs": [NIGHTLY]})
    settle()
    world.advance(600)
    settle()
    world.pods.append(PodSummary(name="p", slot="", revision=old, ready=False, job="credit-nightly-1",
                                 batch_result=BatchResult(rows=7, failed_rows=0, revision=old, outcome="Succeeded",
                                                          reason=None)))
    world.jobs["credit-nightly-1"] = batch_job("credit-nightly-1", "Succeeded", revision=old)
    settle()
    world.change_spec(uri=NEW_URI)
    settle()
    return world


BATCH_BASELINE = batch_scenario(None)


def pass_sizes() -> list[int]:
    """How many actions each pass of the uninterrupted scenario takes."""
    sizes: list[int] = []
    original = World.single_step

    def recording(self, gates=None):
        decision = original(self)
        sizes.append(len(decision.actions))
        return decision

    World.single_step = recording  # type: ignore[method-assign]
    try:
        batch_scenario(None)
    finally:
        World.single_step = original  # type: ignore[method-assign]
    return sizes


BATCH_CRASH_POINTS = [(index + 1, cut) for index, size in enumerate(pass_sizes()) if size for cut in range(size + 1)]


def batch_outcome(world: World):
    return world.status.batch, world.cron_jobs, world.status.stable_revision




def test_the_batch_scenario_ends_with_the_run_on_the_old_revision_and_no_schedule():
    (run,) = BATCH_BASELINE.status.batch.runs
    assert run.outcome == "Succeeded" and run.revision != BATCH_BASELINE.status.stable_revision and run.rows == 7
    assert BATCH_BASELINE.cron_jobs == {} and BATCH_BASELINE.status.batch.schedules == []
    pins = [body["spec"]["jobTemplate"]["metadata"]["labels"]["slotkeeper.io/revision"]
            for body in BATCH_BASELINE.cron_job_applies]
    assert pins == [run.revision, BATCH_BASELINE.status.stable_revision]  # pinned, re-pinned once
    assert len(BATCH_CRASH_POINTS) > 20


@pytest.mark.parametrize("crash_at", BATCH_CRASH_POINTS, ids=lambda c: f"pass{c[0]}-after{c[1]}")
def test_a_crash_anywhere_resumes_to_the_same_runs_and_schedules(crash_at):
    world = batch_scenario(crash_at)
    assert batch_outcome(world) == batch_outcome(BATCH_BASELINE)
    ended = [e for e in world.events if e.reason == "BatchRunSucceeded"]
    assert 1 <= len(ended) <= 2  # never lost; repeated only by a death between the Event and the status write


def test_batch_list_shows_schedules_and_runs_newest_first():
    from slotkeeper.views import format_batch

    assert format_batch({"status": {}}) == "no batch runs yet"
    endpoint = {"status": {"batch": {
        "schedules": [{"name": "nightly", "cronJob": "credit-nightly", "revision": "r2", "config": "x"}],
        "runs": [{"jobName": "credit-nightly-1", "job": "nightly", "revision": "r1", "created": "t1",
                  "startTime": "t1", "completionTime": "t2", "rows": 1000, "failedRows": 3, "outcome": "Succeeded"},
                 {"jobName": "credit-batch-9", "revision": "r2", "created": "t3", "outcome": "Running"}]}}}
    lines = format_batch(endpoint).splitlines()
    assert lines[1].split() == ["nightly", "credit-nightly", "r2"]
    runs = [line.split() for line in lines[3:]]
    assert runs[1][:3] == ["credit-batch-9", "-", "r2"] and "Running" in runs[1]
    assert runs[2] == ["credit-nightly-1", "nightly", "r1", "t1", "t2", "1000", "3", "Succeeded"]
