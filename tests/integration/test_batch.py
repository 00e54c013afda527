"""Batch scoring end to end (issue 17): the real operator, the installed ``slotkeeper`` console script
and fake CronJob/Job controllers and kubelet (``controllers.BatchController``) against the API double.

A scheduled run and a one-off run start on revision 1; a rollout to revision 2 begins and completes
while they run. Their Jobs keep revision 1 (pod template, labels, the revision the batch mode
reports), status records revision 1 for both, the CronJob is re-pinned to revision 2 once it is
stable, and the next scheduled run uses revision 2. One Event per run; `batch list` shows them."""

from __future__ import annotations

import asyncio
import json
import subprocess

from controllers import CRONJOBS, JOBS, batch_controller, deployment_controller
from kmock_cluster import eventually
from test_console_script import SCRIPT, write_kubeconfig
from test_operator import NEW_MODEL, SPEC, status

NIGHTLY = {"name": "nightly", "schedule": "0 2 * * *", "input": "pvc://scoring-data/incoming",
           "output": "pvc://scoring-results/nightly", "keyColumn": "customer_id"}
BATCH_SPEC = {**SPEC, "batch": {"jobs": [NIGHTLY]}}


def model_version(pod_spec: dict) -> str:
    (container,) = pod_spec["containers"]
    return next(e["value"] for e in container["env"] if e["name"] == "SLOTKEEPER_MODEL_VERSION")


def job_revision(k8s, name: str) -> str:
    job = k8s.peek(JOBS, name, namespace="default")
    assert job["metadata"]["labels"]["slotkeeper.io/revision"] == model_version(job["spec"]["template"]["spec"])
    return model_version(job["spec"]["template"]["spec"])


def cron_revision(k8s) -> str | None:
    cron = k8s.peek(CRONJOBS, "credit-nightly", namespace="default")
    return None if cron is None else model_version(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"])


def runs(k8s) -> dict[str, dict]:
    return {run["jobName"]: run for run in (status(k8s).get("batch") or {}).get("runs") or []}


async def slotkeeper(kubeconfig, *args: str, timeout: float = 60) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        SCRIPT, *args, "--kubeconfig", str(kubeconfig), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode, output.decode()


async def test_a_rollout_during_runs_leaves_their_revision_and_the_next_run_uses_the_new_one(
        operator, k8s, kmock, tmp_path):
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", str(kmock.url).rstrip("/"))
    async with deployment_controller(k8s), batch_controller(k8s) as batch:
        await k8s.create_endpoint("credit", BATCH_SPEC, namespace="default")
        await eventually(lambda: status(k8s).get("phase") == "Healthy", timeout=20, message="revision 1 healthy")
        old = status(k8s)["stableRevision"]
        await eventually(lambda: cron_revision(k8s) == old, timeout=10, message="the CronJob pins revision 1")
        cron = k8s.peek(CRONJOBS, "credit-nightly", namespace="default")
        assert cron["metadata"]["ownerReferences"][0]["kind"] == "ModelEndpoint"
        assert cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][:5] == [
            "batch", "--input", "file:///mnt/batch/scoring-data/incoming",
            "--output", "file:///mnt/batch/scoring-results/nightly"]

        scheduled = await batch.fire("credit-nightly")
        # a one-off run with the CLI, followed until it ends (in the background: it ends after the rollout)
        follow = asyncio.ensure_future(slotkeeper(kubeconfig, "batch", "run", "credit", "-n", "default",
                                                  "--input", "https://files.example.com/backfill.csv",
                                                  "--output", "file:///results", "--wait", "60", timeout=90))
        await eventually(lambda: len(runs(k8s)) == 2 and all(r["outcome"] == "Running" for r in runs(k8s).values()),
                         timeout=20, message="both runs recorded Running")
        (oneoff,) = [name for name in runs(k8s) if name != scheduled]
        assert runs(k8s)[oneoff].get("job") is None and runs(k8s)[scheduled]["job"] == "nightly"

        await k8s.patch_endpoint("credit", {"model": NEW_MODEL}, namespace="default")
        await eventually(lambda: status(k8s).get("stableRevision") not in (None, old)
                         and status(k8s).get("phase") == "Healthy", timeout=20, message="revision 2 promoted")
        new = status(k8s)["stableRevision"]
        await eventually(lambda: cron_revision(k8s) == new, timeout=10, message="the CronJob re-pinned to revision 2")
        assert job_revision(k8s, scheduled) == job_revision(k8s, oneoff) == old  # the runs kept their model
        assert model_version(batch.pod_of(scheduled)["spec"]) == old

        batch.finish(scheduled, rows=1_000_000, failed=12)
        batch.finish(oneoff, rows=5000)
        code, output = await follow
        assert code == 0, output
        assert f"started with revision {old}" in output and f"5000 rows, 0 failed, revision {old}" in output
        await eventually(lambda: all(r["outcome"] == "Succeeded" for r in runs(k8s).values()), timeout=20,
                         message="both runs recorded Succeeded")
        assert {name: (r["revision"], r["rows"], r["failedRows"]) for name, r in runs(k8s).items()} == {
            scheduled: (old, 1_000_000, 12), oneoff: (old, 5000, 0)}

        after = await batch.fire("credit-nightly")
        assert job_revision(k8s, after) == new
        batch.finish(after, rows=10, failed=10, ok=False)
        await eventually(lambda: runs(k8s).get(after, {}).get("outcome") == "Failed", timeout=20,
                         message="the next run recorded on revision 2")
        assert runs(k8s)[after]["revision"] == new and "threshold" in runs(k8s)[after]["reason"]

        code, listing = await slotkeeper(kubeconfig, "batch", "list", "credit", "-n", "default")
        assert code == 0, listing
        assert f"credit-nightly  {new}" in listing
        for name in (scheduled, oneoff, after):
            assert name in listing

    ended = [e for e in k8s.events_for("credit", namespace="default") if e["reason"].startswith("BatchRun")]
    assert sorted((e["reason"], e["type"]) for e in ended) == [
        ("BatchRunFailed", "Warning"), ("BatchRunSucceeded", "Normal"), ("BatchRunSucceeded", "Normal")]
    assert json.dumps(status(k8s)).count("files.example.com") == 0  # inputs are not status


async def test_removing_the_schedule_deletes_its_cron_job(operator, k8s):
    async with deployment_controller(k8s):
        await k8s.create_endpoint("credit", BATCH_SPEC, namespace="default")
        await eventually(lambda: cron_revision(k8s) is not None, timeout=20, message="CronJob created")
        await k8s.patch_endpoint("credit", {"batch": None}, namespace="default")
        await eventually(lambda: k8s.peek(CRONJOBS, "credit-nightly", namespace="default") is None, timeout=10,
                         message="CronJob deleted")
        await eventually(lambda: (status(k8s).get("batch") or {}).get("schedules") == [], timeout=10,
                         message="its record dropped")


async def test_a_one_off_run_during_a_rollout_uses_the_stable_slot_and_bad_requests_are_refused(
        operator, k8s, kmock, tmp_path):
    """While the spec names the candidate, the CLI takes the stable revision's pod template from its
    slot Deployment; an unknown endpoint (1), an unknown --job or a bad URI (2) is refused."""
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", str(kmock.url).rstrip("/"))
    manual = {**BATCH_SPEC, "strategy": {"blueGreen": {"autoPromote": False, "scaleDownDelaySeconds": 0}}}
    code, output = await slotkeeper(kubeconfig, "batch", "run", "nothing", "--input", "file:///in",
                                    "--output", "file:///out")
    assert code == 1 and "404" in output  # no such endpoint
    async with deployment_controller(k8s):
        await k8s.create_endpoint("credit", manual, namespace="default")
        await eventually(lambda: status(k8s).get("phase") == "Healthy", timeout=20, message="revision 1 healthy")
        old = status(k8s)["stableRevision"]
        await k8s.patch_endpoint("credit", {"model": NEW_MODEL}, namespace="default")
        await eventually(lambda: status(k8s).get("phase") == "Paused", timeout=20, message="candidate awaits promotion")

        code, output = await slotkeeper(kubeconfig, "batch", "run", "credit", "--job", "nightly", "--no-follow")
        assert code == 0, output
        (job,) = [j for j in k8s.objects(JOBS, namespace="default")]
        assert job_revision(k8s, job["metadata"]["name"]) == old != status(k8s)["candidateRevision"]
        assert job["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] == SPEC["model"]["uri"]
        assert job["metadata"]["labels"]["slotkeeper.io/batch"] == "nightly"
        assert "--key-column" in job["spec"]["template"]["spec"]["containers"][0]["args"]

        for args, why in ((["--job", "weekly"], "no job named 'weekly'"),
                          (["--input", "s3://bucket/x.csv", "--output", "file:///out"], "input"),
                          (["--input", "file:///in"], "output: Field required")):
            code, output = await slotkeeper(kubeconfig, "batch", "run", "credit", *args, "--no-follow")
            assert code == 2 and why in output, output
        assert len(k8s.objects(JOBS, namespace="default")) == 1


async def test_a_run_that_ends_while_the_operator_is_down_is_recorded_once_after_the_restart(
        run_operator, operator_registry, operator_settings, k8s, kmock):
    """Status is the memory: after a restart the run that ended meanwhile gets its record and its one
    Event, the run that ended before gets no second one, and the CronJob is not applied again."""
    def announced(job: str) -> int:
        return len([e for e in k8s.events_for("credit", namespace="default")
                    if e["reason"] == "BatchRunSucceeded" and job in e["message"]])

    operator = await run_operator(operator_registry, settings=operator_settings)
    async with deployment_controller(k8s), batch_controller(k8s) as batch:
        await k8s.create_endpoint("credit", BATCH_SPEC, namespace="default")
        await eventually(lambda: cron_revision(k8s) is not None, timeout=20, message="CronJob created")
        first, second = await batch.fire("credit-nightly"), await batch.fire("credit-nightly")
        batch.finish(first, rows=100)
        await eventually(lambda: runs(k8s).get(first, {}).get("outcome") == "Succeeded"
                         and runs(k8s).get(second, {}).get("outcome") == "Running", timeout=20,
                         message="one run ended, one running")
        await eventually(lambda: announced(first) == 1, message="its Event posted")
        await operator.stop()
        cron_changes = len(kmock.changes(CRONJOBS))
        batch.finish(second, rows=200, failed=1)
        await eventually(lambda: batch.pod_of(second)["status"]["phase"] == "Succeeded", message="ended while down")
        await run_operator(operator_registry, settings=operator_settings)
        await eventually(lambda: runs(k8s).get(second, {}).get("outcome") == "Succeeded", timeout=20,
                         message="recorded after the restart")
    assert (runs(k8s)[second]["rows"], runs(k8s)[second]["failedRows"]) == (200, 1)
    assert len(kmock.changes(CRONJOBS)) == cron_changes
    await eventually(lambda: announced(second) == 1, message="the Event of the run that ended while down")
    assert announced(first) == 1  # not announced again


async def test_a_sharded_run_is_an_indexed_job_whose_pods_rows_add_up(operator, k8s, kmock, tmp_path):
    """parallelism 3: the fake Job controller starts 3 pods (indexes 0..2) of one Job; the run is
    Running until every index succeeded, then status holds the rows of all three; one failed shard
    fails the run with its reason. `batch run --parallelism 2` follows a sharded one-off run."""
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", str(kmock.url).rstrip("/"))
    spec = {**SPEC, "batch": {"jobs": [{**NIGHTLY, "parallelism": 3}]}}
    async with deployment_controller(k8s), batch_controller(k8s) as batch:
        await k8s.create_endpoint("credit", spec, namespace="default")
        await eventually(lambda: status(k8s).get("phase") == "Healthy", timeout=20, message="revision 1 healthy")
        revision = status(k8s)["stableRevision"]
        await eventually(lambda: cron_revision(k8s) == revision, timeout=10, message="the CronJob pins revision 1")
        cron_spec = k8s.peek(CRONJOBS, "credit-nightly", namespace="default")["spec"]["jobTemplate"]["spec"]
        assert (cron_spec["completionMode"], cron_spec["completions"], cron_spec["parallelism"]) == ("Indexed", 3, 3)

        run = await batch.fire("credit-nightly")
        await eventually(lambda: len(batch.pods_of(run)) == 3, timeout=10, message="three shards started")
        pods = sorted(batch.pods_of(run), key=lambda p: p["metadata"]["name"])
        for index, pod in enumerate(pods):
            (container,) = pod["spec"]["containers"]
            assert container["args"][-2:] == ["--shard-count", "3"]
            assert {"name": "JOB_COMPLETION_INDEX", "value": str(index)} in container["env"]
            assert pod["metadata"]["labels"]["job-name"] == run  # the run id of every shard
        batch.finish(run, rows=400_000, failed=5, index=0)
        batch.finish(run, rows=300_000, failed=2, index=2)
        await eventually(lambda: runs(k8s).get(run, {}).get("rows") == 700_000, timeout=20,
                         message="two shards' rows recorded")
        assert runs(k8s)[run]["outcome"] == "Running"  # index 1 still scores
        batch.finish(run, rows=300_000, failed=0, index=1)
        await eventually(lambda: runs(k8s)[run]["outcome"] == "Succeeded", timeout=20, message="all shards done")
        assert (runs(k8s)[run]["rows"], runs(k8s)[run]["failedRows"], runs(k8s)[run]["revision"]) == (
            1_000_000, 7, revision)

        failing = await batch.fire("credit-nightly")
        await eventually(lambda: len(batch.pods_of(failing)) == 3, timeout=10, message="three shards started")
        batch.finish(failing, rows=100, index=0)
        batch.finish(failing, rows=100, failed=50, ok=False, index=1)
        await eventually(lambda: runs(k8s).get(failing, {}).get("outcome") == "Failed", timeout=20,
                         message="one failed shard fails the run")
        assert runs(k8s)[failing]["reason"] == "shard 1: 50 failed rows exceed the threshold"

        follow = asyncio.ensure_future(slotkeeper(kubeconfig, "batch", "run", "credit", "-n", "default",
                                                  "--job", "nightly", "--parallelism", "2", "--wait", "60",
                                                  timeout=90))
        await eventually(lambda: any(r.get("job") == "nightly" and r["jobName"] not in (run, failing)
                                     for r in runs(k8s).values()), timeout=20, message="the one-off run recorded")
        (oneoff,) = [name for name in runs(k8s) if name not in (run, failing)]
        await eventually(lambda: len(batch.pods_of(oneoff)) == 2, timeout=10, message="two shards started")
        batch.finish(oneoff, rows=60, failed=1, index=0)
        batch.finish(oneoff, rows=40, index=1)
        code, output = await follow
        assert code == 0, output
        assert f"{oneoff}: 100 rows, 1 failed, revision {revision}" in output
