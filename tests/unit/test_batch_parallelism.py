"""Decision tables for sharded batch runs (spec.batch.jobs[].parallelism): an Indexed Job only when
N > 1, the shard count on the batch mode's command line, the run succeeding only when every index
did, and the run's rows summed over its pods' termination messages."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from slotkeeper.api import BatchJob
from slotkeeper.batch import RUN_ID_ENV, batch_job_spec, render_batch_cron_job, render_batch_job
from slotkeeper.observe import (COMPLETION_INDEX_ANNOTATION, BatchResult, combine_results, observe_endpoint,
                                summarise_job, summarise_pod)
from slotkeeper.render import config_hash

from .test_batch import OWNER, job, template, terminated


@pytest.mark.parametrize(("parallelism", "mode", "count", "flags"), [
    (None, None, 1, []),
    (1, None, 1, []),
    (2, "Indexed", 2, ["--shard-count", "2"]),
    (64, "Indexed", 64, ["--shard-count", "64"]),
])
def test_parallelism_renders_an_indexed_job_only_above_one(parallelism, mode, count, flags):
    spec = batch_job_spec(template(), job(parallelism=parallelism), "credit", "r1", "nightly")
    assert (spec.get("completionMode"), spec["completions"], spec["parallelism"]) == (mode, count, count)
    (container,) = spec["template"]["spec"]["containers"]
    assert container["args"][5:] == flags
    # every shard's run id is the Job's name: the job-name label, the same on all of the Job's pods
    (run_id,) = [e for e in container["env"] if e["name"] == RUN_ID_ENV]
    assert run_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['job-name']"
    assert spec["podFailurePolicy"]["rules"][0]["action"] == "FailJob"  # one shard's failure fails the run


def test_parallelism_one_keeps_the_cron_job_of_an_existing_spec():
    """An existing CronJob is not re-applied: absent and 1 render the same body (same config hash)."""
    bodies = [render_batch_cron_job(OWNER, template(), job(schedule="0 2 * * *", **extra), "r1")
              for extra in ({}, {"parallelism": 1})]
    assert config_hash(bodies[0]) == config_hash(bodies[1])
    sharded = render_batch_cron_job(OWNER, template(), job(schedule="0 2 * * *", parallelism=4), "r1")
    assert sharded["spec"]["jobTemplate"]["spec"]["completionMode"] == "Indexed"
    one_off = render_batch_job(OWNER, template(), job(parallelism=4), "credit-batch-1", "r1", None)
    assert (one_off["spec"]["completions"], one_off["spec"]["parallelism"]) == (4, 4)


@pytest.mark.parametrize("parallelism", [0, 65, -1])
def test_parallelism_is_bounded(parallelism):
    with pytest.raises(ValidationError, match="parallelism"):
        job(parallelism=parallelism)


def test_the_crd_bounds_parallelism():
    schema = BatchJob.model_json_schema()["properties"]["parallelism"]
    bounds = next(option for option in schema["anyOf"] if option.get("type") == "integer")
    assert (bounds["minimum"], bounds["maximum"]) == (1, 64)


def indexed_job(succeeded: int, failed: bool = False, completions: int = 3) -> dict:
    conditions = [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}] if failed else []
    return {"metadata": {"name": "credit-nightly-1", "labels": {"slotkeeper.io/batch": "nightly",
                                                                "slotkeeper.io/revision": "r1"}},
            "spec": {"completionMode": "Indexed", "completions": completions, "parallelism": completions},
            "status": {"succeeded": succeeded, "conditions": conditions}}


@pytest.mark.parametrize(("body", "outcome"), [
    (indexed_job(0), "Running"),
    (indexed_job(2), "Running"),  # two of three shards done: not a success yet
    (indexed_job(3), "Succeeded"),
    (indexed_job(2, failed=True), "Failed"),
    (indexed_job(1, completions=1), "Succeeded"),
    ({**indexed_job(1), "status": {"conditions": [{"type": "Complete", "status": "True"}]}}, "Succeeded"),
])
def test_a_sharded_run_succeeds_only_when_every_index_did(body, outcome):
    assert summarise_job(body).outcome == outcome


def shard_pod(index: int | None, rows: int, failed: int = 0, outcome: str = "Succeeded", reason: str = "") -> dict:
    body = terminated(json.dumps({"runId": "credit-nightly-1", "revision": "r1", "rows": rows, "failedRows": failed,
                                  "outcome": outcome, "reason": reason}))
    body["metadata"]["name"] = f"credit-nightly-1-{index}"
    if index is not None:
        body["metadata"]["annotations"] = {COMPLETION_INDEX_ANNOTATION: str(index)}
    return body


def test_the_run_sums_its_shards_termination_messages():
    pods = [summarise_pod(shard_pod(i, rows, failed)) for i, (rows, failed) in enumerate([(400, 1), (300, 2), (300, 0)])]
    assert [pod.shard for pod in pods] == [0, 1, 2]
    observed = observe_endpoint([], pods, None, [])
    assert observed.batch_results == {"credit-nightly-1": BatchResult(
        rows=1000, failed_rows=3, revision="r1", outcome="Succeeded", reason=None)}


def test_a_failed_shard_fails_the_result_with_its_reason():
    pods = [summarise_pod(shard_pod(0, 100)),
            summarise_pod(shard_pod(2, 50, 40, "Failed", "40 failed rows exceed the limit of 10"))]
    result = combine_results((pod.shard, pod.batch_result) for pod in pods)
    assert (result.rows, result.failed_rows, result.outcome) == (150, 40, "Failed")
    assert result.reason == "shard 2: 40 failed rows exceed the limit of 10"


def test_an_unsharded_pod_is_its_run():
    pod = summarise_pod(shard_pod(None, 7, 1, "Failed", "input unreadable"))
    assert pod.shard is None
    assert combine_results([(None, pod.batch_result)]) == pod.batch_result
    assert combine_results([]) is None
    unknown = BatchResult(rows=None, failed_rows=None, revision="r1", outcome=None, reason=None)
    assert combine_results([(0, pod.batch_result), (1, unknown)]).rows is None  # no count made up
