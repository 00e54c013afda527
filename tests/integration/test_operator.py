"""The real slotkeeper operator (kopf, the official client) against the KMock-based API over HTTP.

Tests play the Deployment controller and the kubelet (`set_deployment_status`, `create_pod`) and
assert on what a user would see: the endpoint Service's selector, the ModelEndpoint's status, Events.
"""

from __future__ import annotations

import kmock as kmock_lib
import pytest

from kmock_cluster import DEPLOYMENTS, SERVICES, eventually

SLOT = "slotkeeper.io/slot"
REVISION = "slotkeeper.io/revision"
FAST_CHECKS = {"progressDeadlineSeconds": 30, "analysisSeconds": 0}
SPEC = {
    "model": {"name": "credit", "uri": "file:///models/credit/1/model.joblib"},
    "serving": {"replicas": 2},
    "strategy": {"blueGreen": {"scaleDownDelaySeconds": 0}},
    "checks": FAST_CHECKS,
}
NEW_MODEL = {"name": "credit", "uri": "file:///models/credit/2/model.joblib"}


def selector(k8s, name="credit"):
    service = k8s.peek(SERVICES, name, namespace="default")
    return (service or {}).get("spec", {}).get("selector")


def switched_selector(data) -> dict | None:
    """The selector a traffic switch (a JSON patch of the endpoint Service) sets; None for other writes."""
    if isinstance(data, list):
        return next((op["value"] for op in data if op.get("path") == "/spec/selector"), None)
    return None


def selector_patches(kmock) -> list[str]:
    """The slots traffic was switched to, repeats of the same value collapsed (creating the endpoint
    Service, which selects no slot yet, is not a switch)."""
    slots: list[str] = []
    for request in kmock[kmock_lib.method.PATCH, SERVICES, kmock_lib.name("credit")]:
        slot = (switched_selector(request.data) or {}).get(SLOT)
        if slot and (not slots or slots[-1] != slot):
            slots.append(slot)
    return slots


def status(k8s, name="credit"):
    return (k8s.endpoint(name, namespace="default") or {}).get("status") or {}


def condition(k8s, type, name="credit"):
    return next(c for c in status(k8s, name).get("conditions", []) if c["type"] == type)


def deployment(k8s, slot, name="credit"):
    return k8s.peek(DEPLOYMENTS, f"{name}-{slot}", namespace="default")


async def ready(k8s, slot, name="credit"):
    await eventually(lambda: deployment(k8s, slot, name), message=f"{name}-{slot} exists")
    await k8s.set_deployment_status(f"{name}-{slot}", namespace="default")


async def healthy_endpoint(k8s, name="credit"):
    await k8s.create_endpoint(name, SPEC, namespace="default")
    await ready(k8s, "blue", name)
    await eventually(lambda: status(k8s, name).get("phase") == "Healthy", message="first revision healthy")


async def test_create_renders_slots_and_selects_blue_once_ready(operator, k8s):
    await k8s.create_endpoint("credit", SPEC, namespace="default")
    await eventually(lambda: deployment(k8s, "blue"))
    await eventually(lambda: selector(k8s) == {"slotkeeper.io/endpoint": "credit", SLOT: "none"})
    assert {s["metadata"]["name"] for s in k8s.objects(SERVICES, namespace="default")} == {
        "credit", "credit-blue", "credit-green"}
    owner = deployment(k8s, "blue")["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("ModelEndpoint", "credit")

    await ready(k8s, "blue")
    await eventually(lambda: selector(k8s).get(SLOT) == "blue")
    await eventually(lambda: status(k8s).get("phase") == "Healthy")
    assert status(k8s)["stableRevision"] == deployment(k8s, "blue")["spec"]["template"]["metadata"]["labels"][REVISION]
    assert status(k8s)["observedGeneration"] == k8s.endpoint("credit", namespace="default")["metadata"]["generation"]
    assert "spec" in k8s.endpoint("credit", namespace="default")
    # Events are posted by kopf in the background: they follow the status by a moment.
    await eventually(lambda: any(e["reason"] == "Promoted" for e in k8s.events_for("credit", namespace="default")))


async def test_update_rolls_out_blue_green_and_scales_old_slot_down(operator, k8s):
    await healthy_endpoint(k8s)
    first = status(k8s)["stableRevision"]
    spec_before = k8s.endpoint("credit", namespace="default")["spec"]

    await k8s.patch_endpoint("credit", {"model": NEW_MODEL}, namespace="default")
    await eventually(lambda: deployment(k8s, "green"))
    assert selector(k8s)[SLOT] == "blue"  # nothing moves before the candidate is ready
    await ready(k8s, "green")

    await eventually(lambda: status(k8s).get("stableRevision") not in (None, first), message="promoted")
    assert selector(k8s)[SLOT] == "green"
    assert status(k8s)["activeSlot"] == "green"
    assert [h["outcome"] for h in status(k8s)["history"]] == ["Promoted", "Promoted"]
    await eventually(lambda: deployment(k8s, "blue")["spec"]["replicas"] == 0, message="old slot scaled down")
    # The operator never writes spec (GitOps tools would fight it).
    assert k8s.endpoint("credit", namespace="default")["spec"]["model"] == {**NEW_MODEL, "format": "sklearn"}
    assert k8s.endpoint("credit", namespace="default")["spec"]["serving"] == spec_before["serving"]


async def test_crash_looping_candidate_is_reverted_with_a_readable_reason(operator, k8s):
    await healthy_endpoint(k8s)
    stable = status(k8s)["stableRevision"]
    await k8s.patch_endpoint("credit", {"model": NEW_MODEL}, namespace="default")
    await eventually(lambda: deployment(k8s, "green"))
    candidate = deployment(k8s, "green")["spec"]["template"]["metadata"]["labels"][REVISION]
    await k8s.create_pod("credit-green-1", namespace="default", waiting_reason="CrashLoopBackOff", labels={
        "app.kubernetes.io/managed-by": "slotkeeper", "slotkeeper.io/endpoint": "credit",
        SLOT: "green", REVISION: candidate})

    await eventually(lambda: status(k8s).get("phase") == "RolledBack", message="reverted")
    assert selector(k8s)[SLOT] == "blue"
    assert status(k8s)["stableRevision"] == stable
    assert status(k8s)["failedRevision"] == candidate
    rolled_back = condition(k8s, "RolledBack")
    assert rolled_back["status"] == "True" and rolled_back["reason"] == "PodFailure"
    assert "CrashLoopBackOff" in rolled_back["message"] and "credit-green-1" in rolled_back["message"]
    assert status(k8s)["history"][-1]["outcome"] == "RolledBack"
    await eventually(lambda: any(e["type"] == "Warning" and e["reason"] == "RolledBack"
                                 for e in k8s.events_for("credit", namespace="default")))
    await eventually(lambda: deployment(k8s, "green")["spec"]["replicas"] == 1, message="failed slot kept")


async def test_conflicts_from_the_api_are_absorbed(operator, k8s, kmock):
    kmock.fail("patch", SERVICES, status=409, times=2)
    kmock.fail("patch", DEPLOYMENTS, status=409, times=1)
    await healthy_endpoint(k8s)
    await k8s.patch_endpoint("credit", {"model": NEW_MODEL}, namespace="default")
    await ready(k8s, "green")
    await eventually(lambda: status(k8s).get("activeSlot") == "green", timeout=15, message="promoted despite 409s")
    assert selector(k8s)[SLOT] == "green"


@pytest.mark.kmock(validate_custom_resources=False)  # as behind a CRD that lacks the rule
async def test_invalid_spec_is_reported_on_a_condition_naming_the_field(operator, k8s):
    bad = {**SPEC, "serving": {"replicas": 0}}  # the CRD schema refuses it; an old CRD might not
    await k8s.create_endpoint("broken", bad, namespace="default")
    await eventually(lambda: status(k8s, "broken").get("phase") == "Degraded")
    degraded = condition(k8s, "Degraded", "broken")
    assert degraded["reason"] == "InvalidSpec" and "spec.serving.replicas" in degraded["message"]
    assert deployment(k8s, "blue", "broken") is None


def write_kubeconfig(path, url: str) -> str:
    path.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: kmock, cluster: {{server: "{url}"}}}}]
users: [{{name: tester, user: {{token: not-a-secret}}}}]
contexts: [{{name: kmock, context: {{cluster: kmock, user: tester, namespace: default}}}}]
current-context: kmock
""")
    return str(path)


async def test_cli_abort_reverts_a_rollout_once_and_status_shows_it(operator, k8s, kmock, tmp_path, capsys):
    import asyncio

    from slotkeeper.cli import main

    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", str(kmock.url).rstrip("/"))
    await healthy_endpoint(k8s)
    await k8s.patch_endpoint("credit", {"model": NEW_MODEL, "checks": {**FAST_CHECKS, "analysisSeconds": 600}},
                             namespace="default")
    await ready(k8s, "green")
    await eventually(lambda: selector(k8s)[SLOT] == "green", message="switched")

    code = await asyncio.to_thread(main, ["--kubeconfig", kubeconfig, "abort", "credit", "-n", "default"])
    assert code == 0
    assert condition(k8s, "RolledBack")["reason"] == "Aborted"
    # The revert is in status when the CLI returns; the selector follows in the next pass.
    await eventually(lambda: selector(k8s)[SLOT] == "blue", message="traffic back on stable")
    assert "handled by the operator" in capsys.readouterr().out

    await eventually(lambda: any(e["reason"] == "RolledBack" for e in k8s.events_for("credit", namespace="default")))
    code = await asyncio.to_thread(main, ["status", "credit", "-n", "default", "--kubeconfig", kubeconfig])
    out = capsys.readouterr().out
    assert code == 0
    assert "RolledBack" in out and "Aborted" in out and "green" in out
    # Its Events, found by the field selector a real apiserver supports (involvedObject.name/kind).
    events = out[out.index("LAST SEEN"):]
    assert "Warning" in events and "RolledBack" in events
    history = [h["outcome"] for h in status(k8s)["history"]]
    assert history == ["Promoted", "RolledBack"]


async def test_object_the_api_refuses_marks_the_endpoint_degraded_with_its_message(operator, k8s, kmock):
    # Only the apiserver knows that requests may not exceed limits (the CRD checks each quantity alone).
    message = ('Deployment.apps "credit-blue" is invalid: spec.template.spec.containers[0].resources.requests: '
               'Invalid value: "2": must be less than or equal to cpu limit of 1')
    kmock.fail("patch", DEPLOYMENTS, status=422, times=None, message=message)
    resources = {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}
    await k8s.create_endpoint("credit", {**SPEC, "serving": {"replicas": 1, "resources": resources}},
                              namespace="default")
    await eventually(lambda: status(k8s).get("phase") == "Degraded")
    degraded = condition(k8s, "Degraded")
    assert degraded["reason"] == "InvalidSpec" and "resources.requests" in degraded["message"]
    assert degraded["message"].endswith("must be less than or equal to cpu limit of 1")
    assert deployment(k8s, "blue") is None
    await eventually(lambda: any(e["reason"] == "InvalidSpec" and e["type"] == "Warning"
                                 for e in k8s.events_for("credit", namespace="default")))
