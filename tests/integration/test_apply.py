"""What the operator writes converges on what the spec says, removals included (server-side apply),
and an object no spec can produce (the apiserver's 400) is reported, not retried forever."""

from __future__ import annotations

import pytest

from controllers import deployment_controller
from kmock_cluster import DEPLOYMENTS, SERVICES, eventually
from slotkeeper.render import LABEL_SLOT as SLOT
from test_operator import SPEC, condition, deployment, selector, status

QUANTITY = "quantities must match the regular expression"


def pod_template(k8s, slot):
    return deployment(k8s, slot)["spec"]["template"]["spec"]


def model(version: int) -> dict:
    return {"name": "credit", "uri": f"file:///models/credit/{version}/model.joblib"}


async def promoted(k8s, slot: str, message: str) -> None:
    await eventually(lambda: status(k8s).get("activeSlot") == slot and status(k8s).get("phase") == "Healthy"
                     and not status(k8s).get("rollout"), timeout=15, message=message)


async def test_a_field_dropped_from_the_spec_is_dropped_from_the_slot_deployment(operator, k8s):
    serving = {"replicas": 1, "serviceAccountName": "model-reader", "env": [{"name": "EXTRA", "value": "1"}]}
    async with deployment_controller(k8s):
        await k8s.create_endpoint("credit", {**SPEC, "model": model(1), "serving": serving}, namespace="default")
        await promoted(k8s, "blue", "v1 on blue")
        await k8s.patch_endpoint("credit", {"model": model(2)}, namespace="default")
        await promoted(k8s, "green", "v2 on green")
        assert pod_template(k8s, "blue")["serviceAccountName"] == "model-reader"

        # v3 goes back into blue's existing Deployment, without the service account and the env var.
        await k8s.patch_endpoint("credit", {"model": model(3), "serving": {"serviceAccountName": None, "env": None}},
                                 namespace="default")
        await promoted(k8s, "blue", "v3 on blue")
    template = pod_template(k8s, "blue")
    assert template["serviceAccountName"] == "default"  # a merge patch left "model-reader" here
    assert "EXTRA" not in {var["name"] for var in template["containers"][0]["env"]}


@pytest.mark.kmock(validate_custom_resources=False)  # behind an old CRD without the quantity schema
async def test_a_bad_quantity_behind_an_old_crd_is_refused_by_the_operator_naming_the_field(operator, k8s):
    bad = {**SPEC, "serving": {"replicas": 1, "resources": {"requests": {"cpu": "lots"}}}}
    await k8s.create_endpoint("credit", bad, namespace="default")
    await eventually(lambda: status(k8s).get("phase") == "Degraded")
    degraded = condition(k8s, "Degraded")
    assert degraded["reason"] == "InvalidSpec" and "spec.serving.resources.requests.cpu" in degraded["message"]
    assert deployment(k8s, "blue") is None


async def test_an_object_the_apiserver_cannot_decode_marks_the_endpoint_degraded(operator, k8s, kmock):
    # What a 1.28 apiserver answered for a Deployment it could not decode (tests/contract/recordings, #15).
    message = f'Deployment in version "v1" cannot be handled as a Deployment: {QUANTITY} \'^([+-]?[0-9.]+)$\''
    kmock.fail("patch", DEPLOYMENTS, status=400, times=None, message=message)
    await k8s.create_endpoint("credit", SPEC, namespace="default")
    await eventually(lambda: status(k8s).get("phase") == "Degraded", message="Degraded, not retried forever")
    degraded = condition(k8s, "Degraded")
    assert degraded["reason"] == "InvalidSpec" and degraded["message"].endswith(message)
    assert deployment(k8s, "blue") is None


def grpc_ports(k8s) -> dict[str, list[dict]]:
    """The ports named grpc of the endpoint's three Services, as the API double holds them."""
    services = {name: k8s.peek(SERVICES, name, namespace="default") for name in ("credit", "credit-blue", "credit-green")}
    return {name: [p for p in (s or {}).get("spec", {}).get("ports", []) if p.get("name") == "grpc"]
            for name, s in services.items()}


async def test_grpc_port_is_added_to_then_removed_from_all_three_services(operator, k8s):
    grpc = [{"name": "grpc", "port": 9000, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"}]
    async with deployment_controller(k8s):
        await k8s.create_endpoint("credit", {**SPEC, "model": model(1)}, namespace="default")
        await promoted(k8s, "blue", "v1 on blue")
        assert all(ports == [] for ports in grpc_ports(k8s).values())

        await k8s.patch_endpoint("credit", {"serving": {"grpcPort": 9000}}, namespace="default")
        await eventually(lambda: all(ports == grpc for ports in grpc_ports(k8s).values()),
                         message="a grpc port on every Service")
        await promoted(k8s, "green", "the revision serving gRPC on green")
        assert selector(k8s)[SLOT] == "green"

        await k8s.patch_endpoint("credit", {"serving": {"grpcPort": None}}, namespace="default")
        await eventually(lambda: all(ports == [] for ports in grpc_ports(k8s).values()),
                         message="the grpc port gone from every Service (the apply owned it)")
        await promoted(k8s, "blue", "the revision without gRPC on blue")
    assert selector(k8s)[SLOT] == "blue"
    endpoint_service = k8s.peek(SERVICES, "credit", namespace="default")
    assert [p["name"] for p in endpoint_service["spec"]["ports"]] == ["http"]
