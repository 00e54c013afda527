"""The quality monitor end to end (issue 16): the real operator asks a loopback Prometheus-like fake
for the stable revision's accuracy; 0.95 then 0.80 gives QualityDegraded=True, one Warning Event and
exactly one retraining Job (owned, labelled with endpoint and revision); 0.95 again clears the
condition and no second Job appears. With ``onFailure.revertTo: previous`` traffic goes back to the
previous promoted revision (recorded as a revert, reason QualityDegraded, until the spec changes);
without a previous revision nothing reverts. The operator's metrics are scraped alongside."""

from __future__ import annotations

import re

import kmock
import kopf
import pytest
from aiohttp import web

from controllers import deployment_controller
from kmock_cluster import DEPLOYMENTS, eventually
from test_checks import start_server
from test_metrics import eventually_scraped, served_at
from test_operator import NEW_MODEL, REVISION, SLOT, SPEC, ready, selector, status

THIRD_MODEL = {"name": "credit", "uri": "file:///models/credit/3/model.joblib"}

def condition(k8s, type: str) -> dict:
    return next((c for c in status(k8s).get("conditions", []) if c["type"] == type), {})


JOBS = kmock.resource("batch/v1/jobs")


@pytest.fixture()
def operator_memo() -> kopf.Memo:
    return kopf.Memo(metrics_bind_address="127.0.0.1:0")


async def test_accuracy_drop_sets_the_condition_and_creates_exactly_one_job(operator, k8s):
    accuracy = {"value": "0.95"}
    queries: list[str] = []

    async def prometheus(request: web.Request) -> web.Response:
        queries.append(request.query["query"])
        return web.json_response({"status": "success", "data": {
            "resultType": "vector", "result": [{"metric": {}, "value": [0, accuracy["value"]]}]}})

    server = await start_server([web.get("/api/v1/query", prometheus)])
    try:
        check = {"name": "accuracy", "source": "prometheus", "address": str(server.make_url("")).rstrip("/"),
                 "query": 'model_accuracy{slot="{{slot}}",revision="{{revision}}"}', "min": 0.88,
                 "intervalSeconds": 1, "failureLimit": 1}
        job = {"spec": {"backoffLimit": 0, "template": {"spec": {
            "containers": [{"name": "retrain", "image": "example.com/retrain:1"}]}}}}
        await k8s.create_endpoint("credit", {**SPEC, "monitor": {"checks": [check], "onFailure": {"job": job}}},
                                  namespace="default")
        await ready(k8s, "blue")
        await eventually(lambda: condition(k8s, "QualityDegraded")["status"] == "False", timeout=10,
                         message="monitor passes at 0.95")
        revision = status(k8s)["stableRevision"]
        assert f'slot="blue",revision="{revision}"' in queries[-1]

        accuracy["value"] = "0.80"
        await eventually(lambda: condition(k8s, "QualityDegraded")["status"] == "True", timeout=10,
                         message="degraded at 0.80")
        assert "0.8" in condition(k8s, "QualityDegraded")["message"]
        await eventually(lambda: len(k8s.objects(JOBS, namespace="default")) == 1, timeout=10, message="one Job")
        (made,) = k8s.objects(JOBS, namespace="default")
        assert made["metadata"]["labels"]["slotkeeper.io/revision"] == revision
        assert made["metadata"]["labels"]["slotkeeper.io/endpoint"] == "credit"
        assert made["metadata"]["ownerReferences"][0]["kind"] == "ModelEndpoint"
        await eventually(lambda: (status(k8s).get("monitor") or {}).get("job", {}).get("outcome") == "Running",
                         timeout=10, message="the Job's outcome is read from its watch")

        accuracy["value"] = "0.95"
        await eventually(lambda: condition(k8s, "QualityDegraded")["status"] == "False", timeout=10,
                         message="recovered")
        assert condition(k8s, "QualityDegraded")["reason"] == "QualityRecovered"
        assert len(k8s.objects(JOBS, namespace="default")) == 1
        warnings = [e for e in k8s.events_for("credit", namespace="default") if e.get("reason") == "QualityDegraded"]
        assert len(warnings) == 1
    finally:
        await server.close()


async def accuracy_server(accuracy: dict[str, str]):
    """A Prometheus-like fake: the accuracy of the revision the query names (0.95 unless told)."""
    async def prometheus(request: web.Request) -> web.Response:
        revision = re.search(r'revision="([^"]*)"', request.query["query"]).group(1)
        return web.json_response({"status": "success", "data": {
            "resultType": "vector", "result": [{"metric": {}, "value": [0, accuracy.get(revision, "0.95")]}]}})
    return await start_server([web.get("/api/v1/query", prometheus)])


def monitored(spec: dict, server) -> dict:
    check = {"name": "accuracy", "source": "prometheus", "address": str(server.make_url("")).rstrip("/"),
             "query": 'model_accuracy{revision="{{revision}}"}', "min": 0.88, "intervalSeconds": 1,
             "failureLimit": 2}
    job = {"spec": {"backoffLimit": 0, "template": {"spec": {
        "containers": [{"name": "retrain", "image": "example.com/retrain:1"}]}}}}
    return {**spec, "monitor": {"checks": [check], "onFailure": {"job": job, "revertTo": "previous"}}}


def slot_revision(k8s, slot: str) -> str | None:
    deployment = k8s.peek(DEPLOYMENTS, f"credit-{slot}", namespace="default") or {}
    return deployment.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {}).get(REVISION)


def sample(scraped: dict, metric: str, **labels: str) -> float | None:
    return scraped.get((metric, frozenset(labels.items())))


async def test_revert_to_previous_puts_traffic_back_on_the_previous_revision_until_the_spec_changes(
        operator, operator_memo, k8s):
    accuracy: dict[str, str] = {}
    server = await accuracy_server(accuracy)
    try:
        async with deployment_controller(k8s):
            await k8s.create_endpoint("credit", monitored(SPEC, server), namespace="default")
            await eventually(lambda: status(k8s).get("phase") == "Healthy", timeout=10, message="v1 Healthy")
            first = status(k8s)["stableRevision"]
            await k8s.patch_endpoint("credit", {"model": NEW_MODEL}, namespace="default")
            await eventually(lambda: status(k8s).get("activeSlot") == "green" and status(k8s).get("phase") == "Healthy",
                             timeout=10, message="v2 promoted into green")
            second = status(k8s)["stableRevision"]
            await eventually(lambda: condition(k8s, "QualityDegraded").get("status") == "False"
                             and (status(k8s).get("monitor") or {}).get("revision") == second,
                             timeout=10, message="v2 passes its monitor check at 0.95")
            assert slot_revision(k8s, "blue") == first  # scaled down, still holding v1

            accuracy[second] = "0.80"
            await eventually(lambda: status(k8s).get("phase") == "RolledBack" and selector(k8s)[SLOT] == "blue",
                             timeout=15, message="traffic back on v1 in blue")
            assert status(k8s)["stableRevision"] == first and status(k8s)["activeSlot"] == "blue"
            last = status(k8s)["history"][-1]
            assert (last["revision"], last["outcome"], last["reason"]) == (second, "RolledBack", "QualityDegraded")
            rolled_back = condition(k8s, "RolledBack")
            assert rolled_back["status"] == "True" and rolled_back["reason"] == "QualityDegraded"
            await eventually(lambda: len(k8s.objects(JOBS, namespace="default")) == 1, timeout=10, message="one Job")
            await eventually(lambda: any(e.get("reason") == "RolledBack" and e.get("type") == "Warning"
                                         for e in k8s.events_for("credit", namespace="default")),
                             message="a RolledBack Event")

            # Until the spec changes: v1 is checked now, v2 is not retried, traffic stays on blue.
            await eventually(lambda: (status(k8s).get("monitor") or {}).get("revision") == first
                             and condition(k8s, "QualityDegraded").get("status") == "False",
                             timeout=10, message="v1's monitor checks pass")
            scraped = await eventually_scraped(served_at(operator_memo), lambda m: sample(
                m, "slotkeeper_revert_duration_seconds_count", reason="QualityDegraded") == 1 and sample(
                m, "slotkeeper_quality_degraded", namespace="default", name="credit") == 0,
                "the revert timed, the gauge back at 0")
            assert sample(scraped, "slotkeeper_quality_episodes_total") == 1
            assert sample(scraped, "slotkeeper_rollouts_total", outcome="RolledBack",
                                  reason="QualityDegraded") == 1
            assert status(k8s)["phase"] == "RolledBack" and selector(k8s)[SLOT] == "blue"
            assert slot_revision(k8s, "green") == second and status(k8s).get("rollout") is None

            await k8s.patch_endpoint("credit", {"model": THIRD_MODEL}, namespace="default")
            await eventually(lambda: status(k8s).get("phase") == "Healthy" and status(k8s).get("activeSlot") == "green"
                             and status(k8s)["stableRevision"] not in (first, second),
                             timeout=10, message="a new spec rolls out again")
            assert len(k8s.objects(JOBS, namespace="default")) == 1
    finally:
        await server.close()


async def test_revert_to_previous_without_a_previous_revision_reverts_nothing(operator, operator_memo, k8s):
    accuracy: dict[str, str] = {}
    server = await accuracy_server(accuracy)
    try:
        await k8s.create_endpoint("credit", monitored(SPEC, server), namespace="default")
        await ready(k8s, "blue")
        await eventually(lambda: condition(k8s, "QualityDegraded").get("status") == "False", timeout=10,
                         message="monitor passes at 0.95")
        revision = status(k8s)["stableRevision"]

        accuracy[revision] = "0.80"
        await eventually(lambda: condition(k8s, "QualityDegraded").get("status") == "True", timeout=10,
                         message="degraded at 0.80")
        assert "no previous revision" in condition(k8s, "QualityDegraded")["message"]
        await eventually(lambda: any(e.get("reason") == "RevertImpossible"
                                     for e in k8s.events_for("credit", namespace="default")),
                         message="a RevertImpossible Event")
        scraped = await eventually_scraped(served_at(operator_memo), lambda m: sample(
            m, "slotkeeper_quality_degraded", namespace="default", name="credit") == 1, "the gauge shows it")
        assert sample(scraped, "slotkeeper_quality_episodes_total") == 1
        assert status(k8s)["phase"] == "Healthy" and status(k8s)["stableRevision"] == revision
        assert selector(k8s)[SLOT] == "blue"
        assert [h["outcome"] for h in status(k8s)["history"]] == ["Promoted"]
        assert (status(k8s).get("monitor") or {}).get("revert") is None
    finally:
        await server.close()
