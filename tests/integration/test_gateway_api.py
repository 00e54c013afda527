"""Gateway API traffic against the API double with the upstream Gateway API CRDs installed (HTTPRoutes
served with their real schema), a Gateway controller played by the test, and without the CRDs."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import kmock as kmock_lib
import pytest
from aiohttp import web

from controllers import (HTTPROUTES, PlayedGateway, deployment_controller, gateway_controller, install_gateway_api,
                         route_weights)
from kmock_cluster import KubeAPIError, eventually
from test_canary import CANARY, promote
from test_checks import candidate_pod, candidate_revision, start_server
from test_operator import FAST_CHECKS, NEW_MODEL, SLOT, ready, selector, status
from tests.unit.checks.exposition import FakePod
from tests.unit.gateway_schema import httproute_errors

GATEWAY = {"gatewayAPI": {"parentRefs": [{"name": "public"}], "hostnames": ["credit.example.com"]}}
CANARY_ROUTED = {**CANARY, "traffic": GATEWAY}


def condition(k8s, type_: str) -> dict:
    return next((c for c in status(k8s).get("conditions") or [] if c["type"] == type_), {})


@pytest.fixture()
async def routed_operator(kmock, run_operator, operator_registry, operator_settings, operator_memo):
    install_gateway_api(kmock)  # before the operator starts: kopf finds HTTPRoutes served
    return await run_operator(operator_registry, settings=operator_settings, memo=operator_memo)


async def test_canary_at_set_weight_20_with_2_replicas_holds_route_weights_80_20(routed_operator, k8s):
    async with deployment_controller(k8s), gateway_controller(k8s) as gateway:
        await k8s.create_endpoint("credit", CANARY_ROUTED, namespace="default")
        await eventually(lambda: status(k8s).get("phase") == "Healthy", timeout=10, message="first revision")
        await eventually(lambda: status(k8s).get("traffic") == {"blue": 100, "green": 0}, timeout=10)
        assert route_weights(k8s, "credit") == {"blue": 100, "green": 0}

        gateway.accepting = False  # the gateway has not caught up with the next generation yet
        await k8s.patch_endpoint("credit", {"model": NEW_MODEL}, namespace="default")
        await eventually(lambda: route_weights(k8s, "credit") == {"blue": 80, "green": 20}, timeout=10,
                         message="route weights 80/20")
        await eventually(lambda: condition(k8s, "Progressing").get("reason") == "RouteNotAccepted"
                         and "parent public" in condition(k8s, "Progressing")["message"], timeout=10,
                         message="the rollout waits, naming the parent")
        assert status(k8s).get("traffic") == {}  # not accepted for this generation: nothing claimed
        assert status(k8s).get("phase") != "Paused"  # the pause step does not start before acceptance

        gateway.accepting = True
        await eventually(lambda: status(k8s).get("phase") == "Paused" and status(k8s)["rollout"]["canaryStep"] == 1,
                         timeout=10, message="paused after setWeight 20")
        await eventually(lambda: status(k8s).get("traffic") == {"blue": 80, "green": 20}, timeout=10)
        deployments = {slot: k8s.peek("apps/v1/deployments", f"credit-{slot}", namespace="default")
                       for slot in ("blue", "green")}
        assert deployments["green"]["spec"]["replicas"] == 1 and deployments["blue"]["spec"]["replicas"] == 2
        assert selector(k8s).get(SLOT) == "blue"  # the Service follows the stable slot

        for step, weights in enumerate(({"blue": 80, "green": 20}, {"blue": 50, "green": 50},
                                        {"blue": 20, "green": 80})):
            def paused_here():
                rollout = status(k8s).get("rollout") or {}
                return status(k8s).get("phase") == "Paused" and rollout.get("canaryStep") == 2 * step + 1
            await eventually(paused_here, timeout=10, message=f"paused after weight step {step + 1}")
            await eventually(lambda: status(k8s).get("traffic") == weights, timeout=10, message=f"{weights}")
            assert route_weights(k8s, "credit") == weights
            await promote(k8s, f"t{step}")
        await eventually(lambda: status(k8s).get("activeSlot") == "green" and status(k8s).get("phase") == "Healthy",
                         timeout=15, message="promoted to green")
        await eventually(lambda: status(k8s).get("traffic") == {"blue": 0, "green": 100}, timeout=10)
        assert route_weights(k8s, "credit") == {"blue": 0, "green": 100}
        route = k8s.peek(HTTPROUTES, "credit", namespace="default")
        assert route["metadata"]["ownerReferences"][0]["name"] == "credit"


@pytest.fixture()
async def operator_without_gateway_api(kmock, run_operator, operator_registry, operator_settings, operator_memo):
    # kmock's bundled builtins (a K3s snapshot) serve the Gateway API kinds untyped: a cluster
    # without the CRDs has none of them.
    for resource in [r for r in kmock.resources.keys() if r.group == "gateway.networking.k8s.io"]:
        del kmock.resources[resource]
    return await run_operator(operator_registry, settings=operator_settings, memo=operator_memo)


async def test_without_the_gateway_api_crds_a_routed_endpoint_gets_a_clear_condition(
        operator_without_gateway_api, k8s):
    operator = operator_without_gateway_api
    async with deployment_controller(k8s):
        await k8s.create_endpoint("credit", CANARY_ROUTED, namespace="default")
        await eventually(lambda: condition(k8s, "Degraded").get("reason") == "GatewayAPIMissing", timeout=10)
        assert "Gateway API" in condition(k8s, "Degraded")["message"]
        assert condition(k8s, "Progressing").get("reason") == "GatewayAPIMissing"
        operator.check()  # no crash


def route_bodies(kmock) -> list[dict]:
    """Every HTTPRoute body the operator sent (server-side applies and other patches or creates)."""
    bodies = []
    for method in (kmock_lib.method.PATCH, kmock_lib.method.POST, kmock_lib.method.PUT):
        for request in kmock[method, HTTPROUTES]:
            if isinstance(request.data, dict) and request.data.get("kind") == "HTTPRoute":
                bodies.append(request.data)
    return bodies


async def test_the_double_refuses_a_route_the_installed_httproute_crd_refuses(kmock, k8s):
    # The installed upstream CRD serves HTTPRoutes, not kmock's bundled untyped kind: its schema applies.
    install_gateway_api(kmock)
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "credit", "namespace": "default"},
             "spec": {"parentRefs": [{"name": "public"}], "rules": [{
                 "backendRefs": [{"name": "credit-blue", "port": 80, "weight": 100}],
                 "filters": [{"type": "RequestMirror", "requestMirror": {
                     "backendRef": {"name": "credit-green", "port": 80}, "percent": 101}}]}]}}
    with pytest.raises(KubeAPIError) as refused:
        await k8s.create(HTTPROUTES, route, namespace="default")
    assert refused.value.status == 422 and "requestMirror.percent" in str(refused.value)
    # Valid by the structural schema, refused by a CEL rule of the CRD: a RequestMirror filter
    # without its requestMirror.
    route["spec"]["rules"][0]["filters"] = [{"type": "RequestMirror"}]
    with pytest.raises(KubeAPIError) as refused:
        await k8s.create(HTTPROUTES, route, namespace="default")
    assert refused.value.status == 422 and "requestMirror must be specified" in str(refused.value), refused.value
    assert k8s.peek(HTTPROUTES, "credit", namespace="default") is None


async def test_mirrored_validation_reverts_an_erroring_candidate_with_zero_requests_answered_by_it(
        routed_operator, kmock, k8s):
    """The Done criterion of issue 12: a played gateway copies the mirror's percent of a stream of live
    requests to the candidate (a loopback server standing for its pod, erroring on every request,
    whose /metrics the `pods` check scrapes) and discards the copies' answers; every user is answered
    by stable. The error_ratio check fails on the mirrored requests alone and the operator reverts."""
    candidate = FakePod(model="credit")
    infer = "/v2/models/credit/infer"

    async def candidate_infer(request: web.Request) -> web.Response:
        await request.read()
        candidate.serve(1, 0.01, "failure")
        return web.json_response({"error": "model failed"}, status=500, headers={"X-Answered-By": "green"})

    async def candidate_metrics(_: web.Request) -> web.Response:
        return web.Response(text=candidate.text(), content_type="text/plain")

    async def stable_infer(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"model_name": "credit", "outputs": [
            {"name": "predict", "shape": [1], "datatype": "FP64", "data": [1.0]}]}, headers={"X-Answered-By": "blue"})

    green = await start_server([web.post(infer, candidate_infer), web.get("/metrics", candidate_metrics)])
    blue = await start_server([web.post(infer, stable_infer)])
    gateway = PlayedGateway(k8s, "credit", {"credit-blue": str(blue.make_url("")).rstrip("/"),
                                            "credit-green": str(green.make_url("")).rstrip("/")})
    stop = asyncio.Event()

    async def users() -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                await gateway.send(session, infer, {"inputs": [
                    {"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]})
                await asyncio.sleep(0.01)

    errors = {"name": "errors", "source": "pods", "metric": "error_ratio", "max": 0.05,
              "intervalSeconds": 1, "failureLimit": 1}
    spec = {"model": {"name": "credit", "uri": "file:///models/credit/1/model.joblib"},
            "serving": {"replicas": 1, "port": green.port},
            "strategy": {"blueGreen": {"scaleDownDelaySeconds": 0}},
            "checks": {**FAST_CHECKS, "analysisSeconds": 300},
            "traffic": {"gatewayAPI": {**GATEWAY["gatewayAPI"], "mirror": {"percent": 30, "seconds": 300}}}}
    stream = asyncio.create_task(users(), name="live-requests")
    try:
        async with gateway_controller(k8s):
            await k8s.create_endpoint("credit", spec, namespace="default")
            await ready(k8s, "blue")
            await eventually(lambda: status(k8s).get("phase") == "Healthy", timeout=10, message="first revision")
            await eventually(lambda: "blue" in gateway.answered, timeout=10, message="users answered by stable")

            await k8s.patch_endpoint("credit", {"model": NEW_MODEL,
                                                "checks": {**FAST_CHECKS, "analysisSeconds": 300,
                                                           "metrics": [errors]}}, namespace="default")
            await eventually(lambda: k8s.peek("apps/v1/deployments", "credit-green", namespace="default"))
            revision = candidate_revision(k8s)
            candidate.version = revision
            await candidate_pod(k8s, revision)
            await ready(k8s, "green")

            await eventually(lambda: gateway.mirrored, timeout=15, message="copies mirrored to the candidate")
            await eventually(lambda: status(k8s).get("phase") == "RolledBack", timeout=15, message="reverted")
            await eventually(lambda: not (k8s.peek(HTTPROUTES, "credit", namespace="default")["spec"]["rules"][0]
                                          .get("filters")), timeout=10, message="mirror removed")
            served = len(gateway.answered)
            await eventually(lambda: len(gateway.answered) > served + 5, timeout=10, message="users after the revert")
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await stream
        await green.close()
        await blue.close()

    rolled_back = next(c for c in status(k8s)["conditions"] if c["type"] == "RolledBack")
    assert rolled_back["reason"] == "CheckFailed" and 'check "errors"' in rolled_back["message"]
    (check,) = status(k8s)["checks"]
    assert (check["name"], check["verdict"], check["revision"]) == ("errors", "Fail", revision)
    assert check["lastValue"] == 1.0  # the mirrored copies alone: every one failed
    # Zero user-facing answers from the candidate; every live request after the route existed was
    # answered by stable, with a success.
    assert "green" not in gateway.answered
    assert {a for a in gateway.answered if a is not None} == {"blue"} and set(gateway.statuses) == {200}
    assert set(gateway.mirrored) == {"credit-green"}
    assert route_weights(k8s, "credit") == {"blue": 100, "green": 0}
    assert selector(k8s).get(SLOT) == "blue"
    # Every route the operator sent (the double admitted each against the installed CRD): the
    # candidate never had a weight above 0, and each body also passes the unit tests' validator.
    bodies = route_bodies(kmock)
    assert any(f.get("type") == "RequestMirror" and f["requestMirror"]["percent"] == 30
               for body in bodies for f in body["spec"]["rules"][0].get("filters") or [])
    for body in bodies:
        assert httproute_errors(body) == [], body
        assert all(ref.get("weight") == 0 for ref in body["spec"]["rules"][0]["backendRefs"]
                   if ref["name"] == "credit-green")


async def test_removing_gateway_api_deletes_the_route_and_the_endpoint_service_carries_traffic(
        routed_operator, kmock, k8s):
    spec = {"model": {"name": "credit", "uri": "file:///models/credit/1/model.joblib"}, "serving": {"replicas": 2},
            "strategy": {"blueGreen": {"scaleDownDelaySeconds": 0}}, "checks": FAST_CHECKS, "traffic": GATEWAY}
    async with deployment_controller(k8s), gateway_controller(k8s):
        await k8s.create_endpoint("credit", spec, namespace="default")
        await eventually(lambda: status(k8s).get("phase") == "Healthy"
                         and status(k8s).get("traffic") == {"blue": 100, "green": 0}, timeout=10, message="routed")
        assert k8s.peek(HTTPROUTES, "credit", namespace="default") is not None

        await k8s.patch_endpoint("credit", {"traffic": None}, namespace="default")
        await eventually(lambda: k8s.peek(HTTPROUTES, "credit", namespace="default") is None, timeout=10,
                         message="route deleted")
        await eventually(lambda: status(k8s).get("traffic") == {"blue": 100, "green": 0}
                         and status(k8s).get("phase") == "Healthy", timeout=10, message="the Service carries it")
        assert selector(k8s).get(SLOT) == "blue"
        assert len(list(kmock[kmock_lib.method.DELETE, HTTPROUTES])) == 1  # one delete, not one per pass
