"""Issue 17's done-means on a real cluster: a scheduled run scores a 1,000,000-row CSV with the stable
revision, survives the loss of its pod by resuming, reports its bad rows and records the revision
it used, in its output (_SUMMARY.json) and in the ModelEndpoint's status.

The pod is force-deleted (``kubectl delete pod --grace-period=0 --force``): the batch mode is PID 1
of its container, and PID 1 ignores a kill -9 sent from inside its own namespace, so the kubelet's
kill of a force-deleted pod is the closest a test gets to a crash. The batch pod gets 100m of CPU and
small chunks so the run lasts long enough to be killed mid-way. The speed-up over the online route
is measured in benchmarks/serving/ (timings are not test assertions).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from .batch_data import (DATA_CLAIM, MODEL_CLAIM, ROWS, bad_lines, batch_events, claim, make_data_job,
                         show_run_pod)
from .kube import Cluster, serving_image, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

NAME = "scoring"
JOB = "nightly"
CHUNK_ROWS = 2000  # 500 chunks: a kill lands between chunks with many done and many to go
KILL_AFTER_CHUNKS = 20
DATA_TIMEOUT = 300
READY_TIMEOUT = 240
SCHEDULE_TIMEOUT = 150  # "*/1 * * * *" fires within a minute of the CronJob's creation
RUN_TIMEOUT = 900


def endpoint_spec() -> dict[str, Any]:
    return {
        "model": {"name": "scoring", "uri": f"pvc://{MODEL_CLAIM}/model.joblib", "format": "sklearn"},
        "serving": {"replicas": 1},
        "strategy": {"blueGreen": {"autoPromote": True, "scaleDownDelaySeconds": 5}},
        "checks": {"progressDeadlineSeconds": 180, "analysisSeconds": 10},
        "batch": {"jobs": [{
            "name": JOB, "schedule": "*/1 * * * *", "input": f"pvc://{DATA_CLAIM}/in",
            "output": f"pvc://{DATA_CLAIM}/out", "chunkRows": CHUNK_ROWS, "maxFailedRows": 100,
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "100m", "memory": "1Gi"}},
        }]},
    }


def batch_pods(cluster: Cluster, namespace: str, job: str) -> list[Any]:
    return list(cluster.core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items)


def job_condition(cluster: Cluster, namespace: str, job: str) -> str | None:
    status = cluster.batch.read_namespaced_job(job, namespace).status
    for condition in status.conditions or []:
        if condition.type in ("Complete", "Failed") and condition.status == "True":
            return condition.type
    return None


def first_scheduled_job(cluster: Cluster, namespace: str) -> str:
    def found() -> str | None:
        jobs = cluster.batch.list_namespaced_job(namespace, label_selector=f"slotkeeper.io/batch={JOB}").items
        return min((j.metadata.name for j in jobs), default=None)
    return wait_until("the schedule to start a run", found, SCHEDULE_TIMEOUT)


def run_record(cluster: Cluster, namespace: str, job: str) -> dict[str, Any] | None:
    runs = (cluster.status(namespace, NAME).get("batch") or {}).get("runs") or []
    return next((run for run in runs if run["jobName"] == job), None)


def test_a_scheduled_run_of_a_million_rows_resumes_after_its_pod_is_killed(cluster, namespace):
    image = serving_image()
    for name in (MODEL_CLAIM, DATA_CLAIM):
        cluster.create(namespace, claim(name))
    cluster.create(namespace, make_data_job(image))
    assert wait_until("the data to be written", lambda: job_condition(cluster, namespace, "make-data"),
                      DATA_TIMEOUT) == "Complete"

    cluster.create_endpoint(namespace, NAME, endpoint_spec())
    stable = cluster.wait_for_phase(namespace, NAME, "Healthy", READY_TIMEOUT)["stableRevision"]
    run = first_scheduled_job(cluster, namespace)
    cluster.patch_spec(namespace, NAME, {"batch": {"jobs": [{**endpoint_spec()["batch"]["jobs"][0], "suspend": True}]}})

    # Kill the first pod once it has written some chunks (and long before it is done).
    def started() -> Any:
        pods = [p for p in batch_pods(cluster, namespace, run) if p.status.phase == "Running"]
        if pods and len([e for e in batch_events(cluster.pod_log(namespace, pods[0].metadata.name))
                         if e["event"] == "chunk"]) >= KILL_AFTER_CHUNKS:
            return pods[0]
        return None
    first = wait_until(f"the run's pod to score {KILL_AFTER_CHUNKS} chunks", started, RUN_TIMEOUT, interval=0.5)
    cluster.core.delete_namespaced_pod(first.metadata.name, namespace, grace_period_seconds=0)
    assert job_condition(cluster, namespace, run) is None, "the run ended before its pod was killed: slow it down"

    assert wait_until("the run to end", lambda: job_condition(cluster, namespace, run), RUN_TIMEOUT) == "Complete"
    pods = [p for p in batch_pods(cluster, namespace, run) if p.metadata.name != first.metadata.name]
    (replacement,) = [p for p in pods if p.status.phase == "Succeeded"]
    events = batch_events(cluster.pod_log(namespace, replacement.metadata.name))
    summary = events[-1]
    assert summary["event"] == "summary"
    skipped = [e for e in events if e["event"] == "chunk" and e["skipped"]]
    assert len(skipped) >= KILL_AFTER_CHUNKS and summary["skippedChunks"] == len(skipped)  # it resumed
    assert (summary["rows"], summary["failedRows"], summary["outcome"]) == (ROWS, len(bad_lines()), "Succeeded")
    assert summary["revision"] == stable and summary["runId"] == run

    cluster.create(namespace, show_run_pod(image, f"/data/out/{run}"))
    wait_until("the output to be read", lambda: cluster.core.read_namespaced_pod("show-run", namespace)
               .status.phase in ("Succeeded", "Failed"), 120)
    shown = json.loads(cluster.pod_log(namespace, "show-run").strip().splitlines()[-1])
    assert shown["summary"] == {k: v for k, v in summary.items() if k != "event"}  # revision recorded in the output
    assert shown["parts"] == ROWS // endpoint_spec()["batch"]["jobs"][0]["chunkRows"]
    assert [(e["file"], e["line"]) for e in shown["errors"]] == [("rows.csv", line) for line in bad_lines()]
    assert all("not a number" in e["reason"] for e in shown["errors"])

    record = wait_until("status to record the run", lambda: (lambda r: r if r and r["outcome"] == "Succeeded"
                                                             else None)(run_record(cluster, namespace, run)), 60)
    assert (record["revision"], record["rows"], record["failedRows"]) == (stable, ROWS, len(bad_lines()))
    assert record["revision"] == cluster.status(namespace, NAME)["stableRevision"]
    assert any(e.reason == "BatchRunSucceeded" and run in e.message for e in cluster.events(namespace, NAME))
