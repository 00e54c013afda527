"""The quality monitor end to end (issue 16): the real operator asks a loopback Prometheus-like fake
for the stable revision's accuracy; 0.95 then 0.80 gives QualityDegraded=True, one Warning Event and
exactly one retraining Job (owned, labelled with endpoint and revision); 0.95 again clears the
condition and no second Job appears."""

from __future__ import annotations

import kmock
from aiohttp import web

from kmock_cluster import eventually
from test_checks import start_server
from test_operator import SPEC, ready, status

def condition(k8s, type: str) -> dict:
    return next((c for c in status(k8s).get("conditions", []) if c["type"] == type), {})


JOBS = kmock.resource("batch/v1/jobs")


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
