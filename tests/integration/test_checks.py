"""Metric checks end to end: the real operator scrapes a fake pod's /metrics and asks a fake
Prometheus, both real HTTP servers on loopback; a candidate whose numbers cross `max` is reverted."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestServer

from kmock_cluster import DEPLOYMENTS, PODS, eventually
from test_operator import FAST_CHECKS, NEW_MODEL, SLOT, condition, healthy_endpoint, ready, selector, status
from tests.unit.checks.exposition import FakePod

REVISION = "slotkeeper.io/revision"


async def start_server(routes) -> TestServer:
    app = web.Application()
    app.add_routes(routes)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def candidate_pod(k8s, revision: str) -> None:
    """A ready pod of the candidate whose address is this machine's loopback."""
    labels = {"app.kubernetes.io/managed-by": "slotkeeper", "slotkeeper.io/endpoint": "credit",
              SLOT: "green", REVISION: revision}
    await k8s.create_pod("credit-green-1", namespace="default", waiting_reason=None, labels=labels)
    await k8s.patch(PODS, "credit-green-1", {"status": {"podIP": "127.0.0.1"}}, namespace="default",
                    subresource="status")


def candidate_revision(k8s) -> str:
    return k8s.peek(DEPLOYMENTS, "credit-green", namespace="default")["spec"]["template"]["metadata"]["labels"][REVISION]


async def test_pods_error_ratio_above_max_reverts_and_status_names_check_and_value(operator, k8s):
    pod = FakePod(model="credit")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=pod.text(), content_type="text/plain")

    server = await start_server([web.get("/metrics", metrics)])
    try:
        await healthy_endpoint(k8s)
        errors = {"name": "errors", "source": "pods", "metric": "error_ratio", "max": 0.05,
                  "intervalSeconds": 1, "failureLimit": 1}
        await k8s.patch_endpoint("credit", {
            "model": NEW_MODEL, "serving": {"replicas": 1, "port": server.port},
            "checks": {**FAST_CHECKS, "analysisSeconds": 300, "metrics": [errors]},
        }, namespace="default")
        await eventually(lambda: k8s.peek(DEPLOYMENTS, "credit-green", namespace="default"))
        revision = candidate_revision(k8s)
        pod.version = revision
        await candidate_pod(k8s, revision)
        await ready(k8s, "green")

        await eventually(lambda: selector(k8s)[SLOT] == "green", timeout=10, message="traffic on the candidate")
        pod.serve(10, 0.02, "success").serve(5, 0.02, "failure")  # a third of the requests fail

        await eventually(lambda: status(k8s).get("phase") == "RolledBack", timeout=10, message="reverted")
        # The revert is written to status first, then the selector follows (write-ahead).
        await eventually(lambda: selector(k8s)[SLOT] == "blue", message="traffic back on stable")
        (check,) = status(k8s)["checks"]
        assert (check["name"], check["verdict"], check["revision"]) == ("errors", "Fail", revision)
        assert abs(check["lastValue"] - 5 / 15) < 1e-9
        rolled_back = condition(k8s, "RolledBack")
        assert rolled_back["reason"] == "CheckFailed"
        assert 'check "errors"' in rolled_back["message"] and "0.333" in rolled_back["message"]
    finally:
        await server.close()


async def test_prometheus_check_substitutes_slot_and_reverts_on_max(operator, k8s):
    queries: list[str] = []

    async def prometheus(request: web.Request) -> web.Response:
        queries.append(request.query["query"])
        return web.json_response({"status": "success", "data": {
            "resultType": "vector", "result": [{"metric": {}, "value": [0, "0.9"]}]}})

    server = await start_server([web.get("/api/v1/query", prometheus)])
    try:
        await healthy_endpoint(k8s)
        p95 = {"name": "p95", "source": "prometheus", "address": str(server.make_url("")).rstrip("/"),
               "query": 'histogram_quantile(0.95, rate(x_bucket{slot="{{slot}}",revision="{{revision}}"}[1m]))',
               "max": 0.3, "intervalSeconds": 1, "failureLimit": 1}
        await k8s.patch_endpoint("credit", {"model": NEW_MODEL, "checks": {**FAST_CHECKS, "metrics": [p95]}},
                                 namespace="default")
        await ready(k8s, "green")
        await eventually(lambda: status(k8s).get("phase") == "RolledBack", timeout=10, message="reverted")
        revision = status(k8s)["failedRevision"]
        assert f'slot="green",revision="{revision}"' in queries[0]
        assert selector(k8s)[SLOT] == "blue"  # the check failed before the candidate had traffic
        assert "0.9" in condition(k8s, "RolledBack")["message"]
        assert status(k8s)["checks"][0]["lastValue"] == 0.9
    finally:
        await server.close()


async def test_validation_request_with_wrong_answer_keeps_traffic_on_stable(run_operator, operator_registry,
                                                                              operator_settings, k8s):
    import kopf

    requests: list[dict] = []

    async def infer(request: web.Request) -> web.Response:
        requests.append(await request.json())
        return web.json_response({"model_name": "credit", "outputs": [
            {"name": "predict", "shape": [1], "datatype": "FP64", "data": [0.0]}]})

    server = await start_server([web.post("/v2/models/credit/infer", infer)])
    base = str(server.make_url("")).rstrip("/")
    try:
        # The candidate's slot Service is this loopback server.
        await run_operator(operator_registry, settings=operator_settings,
                           memo=kopf.Memo(slot_url=lambda namespace, endpoint, slot: base))
        await healthy_endpoint(k8s)
        smoke = {"name": "smoke", "request": {"inputs": [
                     {"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]},
                 "expect": {"status": 200, "outputs": [{"name": "predict", "data": [1.0]}]}}
        await k8s.patch_endpoint("credit", {"model": NEW_MODEL, "checks": {**FAST_CHECKS, "validation": [smoke]}},
                                 namespace="default")
        await ready(k8s, "green")
        await eventually(lambda: status(k8s).get("phase") == "RolledBack", timeout=10, message="reverted")
        rolled_back = condition(k8s, "RolledBack")
        assert rolled_back["reason"] == "ValidationFailed"
        assert 'validation "smoke"' in rolled_back["message"] and "expected 1" in rolled_back["message"]
        assert requests == [smoke["request"]]
        assert selector(k8s)[SLOT] == "blue"
    finally:
        await server.close()
