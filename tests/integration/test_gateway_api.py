"""Gateway API traffic against the API double with the upstream Gateway API CRDs installed (HTTPRoutes
served with their real schema), a Gateway controller played by the test, and without the CRDs."""

from __future__ import annotations

import pytest

from controllers import HTTPROUTES, deployment_controller, gateway_controller, install_gateway_api, route_weights
from kmock_cluster import eventually
from test_canary import CANARY, promote
from test_operator import NEW_MODEL, SLOT, selector, status

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
