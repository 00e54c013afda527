"""Autoscaled endpoints against the API double, with a stand-in for the HorizontalPodAutoscaler
controller that changes replicas behind the operator's back through the ``scale`` subresource.

What a user would check: the operator leaves the replicas the autoscaler chose alone (no replica
write reaches the API), a rollout starts the candidate at the stable slot's current size and switches
only once that many pods are ready, the old slot loses its autoscaler before it goes to 0, each slot
has a PodDisruptionBudget; and upgrading from an operator whose applies owned ``spec.replicas``
never resets a running slot to 1 (server-side apply's pruning, which the double emulates)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import kopf
import pytest
import yaml

from controllers import autoscaler_controller, deployment_controller
from kmock_cluster import DEPLOYMENTS, HPAS, MODELENDPOINTS, PDBS, SERVICES, eventually
from slotkeeper.api import ModelEndpointSpec
from slotkeeper.reconciler import EndpointReconciler
from slotkeeper.render import render_slot_deployment
from slotkeeper.revision import revision_of
from test_operator import FAST_CHECKS, NEW_MODEL, SLOT, selector, status

OPERATOR_AGENTS = ("kopf/", "slotkeeper/")
CPU = {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
AUTOSCALED = {
    "model": {"name": "credit", "uri": "file:///models/credit/1/model.joblib"},
    "serving": {"replicas": 1, "autoscaling": {"minReplicas": 2, "maxReplicas": 10, "metrics": [CPU]}},
    "strategy": {"blueGreen": {"scaleDownDelaySeconds": 30}},
    "checks": {**FAST_CHECKS, "analysisSeconds": 60},
}
NEWER_MODEL = {"name": "credit", "uri": "file:///models/credit/3/model.joblib"}


class FakeClock:
    """The operator's clock (memo.clock): it moves only when the test says."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 21, 12, 0, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture()
def passes(monkeypatch) -> list[str]:
    """One entry per finished reconcile pass of any endpoint."""
    done: list[str] = []
    original = EndpointReconciler.reconcile

    async def counted(self, body, sources):
        try:
            return await original(self, body, sources)
        finally:
            done.append(self.name)

    monkeypatch.setattr(EndpointReconciler, "reconcile", counted)
    return done


async def reconcile_for(operator, passes: list[str], clock: FakeClock, seconds: int) -> None:
    """``seconds`` of the operator's time, one woken pass per second."""
    for _ in range(seconds):
        clock.advance(1)
        before = len(passes)
        operator.memo.loops.wake("default", "credit")
        await eventually(lambda: len(passes) > before, message="a reconcile pass")


def replicas(k8s, slot: str) -> int | None:
    found = k8s.peek(DEPLOYMENTS, f"credit-{slot}", namespace="default")
    return None if found is None else found["spec"]["replicas"]


def ready_replicas(k8s, slot: str) -> int:
    found = k8s.peek(DEPLOYMENTS, f"credit-{slot}", namespace="default") or {}
    return (found.get("status") or {}).get("readyReplicas") or 0


def hpa_bounds(k8s, slot: str) -> tuple[int, int] | None:
    found = k8s.peek(HPAS, f"credit-{slot}", namespace="default")
    return None if found is None else (found["spec"]["minReplicas"], found["spec"]["maxReplicas"])


def body_of(request) -> Any:
    if request.data is not None:
        return request.data
    return yaml.safe_load(request.text) if request.text else None


def replica_writes(kmock, since: int = 0) -> list:
    """The operator's requests that write a Deployment's replicas: anything through the scale
    subresource, and any patch or apply of a Deployment whose body names spec.replicas."""
    found = []
    for request in list(kmock)[since:]:
        agent = request.headers.get("User-Agent", "")
        method = str(request.method).upper()
        if request.resource != DEPLOYMENTS or not agent.startswith(OPERATOR_AGENTS) or \
                not method.endswith(("PATCH", "PUT", "POST")):
            continue
        body = body_of(request)
        if request.subresource == "scale" or (isinstance(body, dict) and "replicas" in (body.get("spec") or {})) \
                or (isinstance(body, list) and any(str(op.get("path", "")).startswith("/spec/replicas") for op in body)):
            found.append(request)
    return found


def switched_to_green_at(kmock) -> int:
    """The resourceVersion of the endpoint Service's change that moved traffic to green."""
    return next(rv for rv, _, service in kmock.changes(SERVICES, "credit", "default")
                if (service["spec"].get("selector") or {}).get(SLOT) == "green")


def green_before(kmock, rv: int) -> dict:
    return [d for at, _, d in kmock.changes(DEPLOYMENTS, "credit-green", "default") if at < rv][-1]


async def test_an_autoscaled_slot_scaled_behind_the_operators_back_stays_and_a_rollout_starts_at_that_size(
        run_operator, operator_registry, operator_settings, k8s, kmock, passes):
    clock = FakeClock()
    operator = await run_operator(operator_registry, settings=operator_settings, memo=kopf.Memo(clock=clock))
    async with deployment_controller(k8s), autoscaler_controller(k8s) as autoscaler:
        await k8s.create_endpoint("credit", AUTOSCALED, namespace="default")
        await eventually(lambda: status(k8s).get("phase") == "Healthy" and hpa_bounds(k8s, "blue") == (2, 10),
                         message="blue serves, autoscaled")
        hpa = k8s.peek(HPAS, "credit-blue", namespace="default")
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "credit-blue"}
        assert hpa["metadata"]["ownerReferences"][0]["name"] == "credit"
        assert replicas(k8s, "blue") == 2  # minReplicas, not serving.replicas
        pdb = k8s.peek(PDBS, "credit-blue", namespace="default")
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["selector"] == {"matchLabels": {"slotkeeper.io/endpoint": "credit", SLOT: "blue"}}

        mark = len(list(kmock))
        autoscaler.load("credit-blue", 5)  # the metrics say 5: the autoscaler scales blue behind our back
        await eventually(lambda: replicas(k8s, "blue") == 5 and ready_replicas(k8s, "blue") == 5)
        await reconcile_for(operator, passes, clock, 60)
        assert replicas(k8s, "blue") == 5
        assert replica_writes(kmock, since=mark) == [], "the operator wrote replicas the autoscaler owns"
        # The count does see writes: the apply that created blue named its replicas (minReplicas).
        assert [body_of(r)["spec"]["replicas"] for r in replica_writes(kmock)] == [2]
        assert autoscaler.writes >= 1  # the autoscaler's own writes are not the operator's
        await eventually(lambda: status(k8s)["slots"]["blue"] == {
            "revision": status(k8s)["stableRevision"], "replicas": 5, "currentReplicas": 5, "readyReplicas": 5,
            "autoscaled": True})

        # A blue/green rollout at that moment: the candidate comes up at 5 before the switch.
        await k8s.patch_endpoint("credit", {"model": NEW_MODEL}, namespace="default")
        await eventually(lambda: selector(k8s)[SLOT] == "green", message="switched to green")
        switch = switched_to_green_at(kmock)
        first_green = kmock.changes(DEPLOYMENTS, "credit-green", "default")[0][2]
        assert first_green["spec"]["replicas"] == 5  # created at the stable slot's size, not minReplicas
        at_switch = green_before(kmock, switch)
        assert (at_switch["spec"]["replicas"], at_switch["status"]["readyReplicas"]) == (5, 5)
        await eventually(lambda: hpa_bounds(k8s, "green") == (2, 10), message="the candidate's own autoscaler")
        assert kmock.changes(HPAS, "credit-green", "default")[0][0] > switch  # with the traffic, not before
        assert hpa_bounds(k8s, "blue") == (5, 10)  # stable keeps its size through the analysis

        clock.advance(61)
        operator.memo.loops.wake("default", "credit")
        await eventually(lambda: status(k8s).get("activeSlot") == "green" and status(k8s).get("phase") == "Healthy",
                         message="promoted")
        await eventually(lambda: hpa_bounds(k8s, "blue") == (2, 10), message="the old slot's floor lifted")
        assert replicas(k8s, "blue") == 5
        clock.advance(31)
        operator.memo.loops.wake("default", "credit")
        await eventually(lambda: replicas(k8s, "blue") == 0 and hpa_bounds(k8s, "blue") is None,
                         message="old slot scaled down, its autoscaler gone")
        deleted = next(rv for rv, kind, _ in kmock.changes(HPAS, "credit-blue", "default") if kind == "DELETED")
        scaled_to_zero = next(rv for rv, _, d in kmock.changes(DEPLOYMENTS, "credit-blue", "default")
                              if d["spec"]["replicas"] == 0)
        assert deleted < scaled_to_zero  # nothing left that could scale it back up
        await reconcile_for(operator, passes, clock, 5)
        assert replicas(k8s, "blue") == 0 and replicas(k8s, "green") == 5
        assert {p["metadata"]["name"] for p in k8s.objects(PDBS, namespace="default")} == {"credit-blue", "credit-green"}


async def test_a_revert_after_the_switch_lands_on_the_stable_slot_still_autoscaled(operator, k8s):
    async with deployment_controller(k8s), autoscaler_controller(k8s) as autoscaler:
        await k8s.create_endpoint("credit", {**AUTOSCALED, "checks": {**FAST_CHECKS, "analysisSeconds": 600}},
                                  namespace="default")
        await eventually(lambda: status(k8s).get("phase") == "Healthy" and hpa_bounds(k8s, "blue") == (2, 10))
        autoscaler.load("credit-blue", 4)
        await eventually(lambda: ready_replicas(k8s, "blue") == 4)
        await k8s.patch_endpoint("credit", {"model": NEW_MODEL}, namespace="default")
        await eventually(lambda: selector(k8s)[SLOT] == "green" and hpa_bounds(k8s, "green") == (2, 10))
        assert hpa_bounds(k8s, "blue") == (4, 10)
        await k8s.patch(MODELENDPOINTS, "credit", {"metadata": {"annotations": {"slotkeeper.io/abort": "a1"}}},
                        namespace="default")
        await eventually(lambda: status(k8s).get("phase") == "RolledBack" and selector(k8s)[SLOT] == "blue")
        await eventually(lambda: hpa_bounds(k8s, "blue") == (2, 10) and hpa_bounds(k8s, "green") is None)
        assert replicas(k8s, "blue") == 4  # still at the autoscaler's size: it never lost its autoscaler
        await eventually(lambda: replicas(k8s, "green") == 1)  # failedSlotReplicas, sized by the operator


# ------------------------------------------------------------------------------------ the upgrade


def legacy_apply_body(k8s, spec: dict, slot: str, replicas: int) -> dict:
    """The Deployment as slotkeeper applied it before the hand-off: spec.replicas in every apply."""
    endpoint = k8s.endpoint("credit", namespace="default")
    owner = {"metadata": {"name": "credit", "namespace": "default", "uid": endpoint["metadata"]["uid"]}}
    model = ModelEndpointSpec.model_validate(spec)
    return render_slot_deployment(owner, model, slot, revision_of(model), replicas=replicas)


async def test_upgrading_from_applies_that_owned_replicas_never_resets_a_running_slot_to_one(
        run_operator, operator_registry, operator_settings, k8s, kmock):
    spec = {**AUTOSCALED, "serving": {"replicas": 3}, "strategy": {"blueGreen": {"scaleDownDelaySeconds": 3600}},
            "checks": FAST_CHECKS}
    async with deployment_controller(k8s):
        old = await run_operator(operator_registry, settings=operator_settings)
        await k8s.create_endpoint("credit", spec, namespace="default")
        await eventually(lambda: status(k8s).get("phase") == "Healthy")
        await k8s.patch_endpoint("credit", {"model": NEW_MODEL}, namespace="default")
        await eventually(lambda: status(k8s).get("activeSlot") == "green" and status(k8s).get("phase") == "Healthy",
                         timeout=10, message="v2 promoted; blue, v1, keeps 3 pods in its scale-down delay")
        await old.stop()

        # What the operator before the hand-off left: both slots' replicas owned by its apply alone.
        v1 = legacy_apply_body(k8s, spec, "blue", 3)
        v2 = legacy_apply_body(k8s, {**spec, "model": NEW_MODEL}, "green", 3)
        await k8s.apply(DEPLOYMENTS, v1, manager="slotkeeper", namespace="default")
        await k8s.apply(DEPLOYMENTS, v2, manager="slotkeeper", namespace="default")
        for slot in ("blue", "green"):
            owners = {e["manager"] for e in k8s.peek(DEPLOYMENTS, f"credit-{slot}", namespace="default")["metadata"][
                "managedFields"] if "f:replicas" in e.get("fieldsV1", {}).get("f:spec", {})}
            assert owners == {"slotkeeper"}
        mark = kmock.resource_version

        await run_operator(operator_registry, settings=operator_settings)  # the new operator
        await k8s.patch_endpoint("credit", {"model": NEWER_MODEL}, namespace="default")  # into blue, running
        await eventually(lambda: status(k8s).get("activeSlot") == "blue" and status(k8s).get("phase") == "Healthy",
                         timeout=10, message="v3 promoted in blue")
    blue = [d["spec"]["replicas"] for rv, _, d in kmock.changes(DEPLOYMENTS, "credit-blue", "default") if rv > mark]
    assert blue and min(blue) == 3, f"blue's replicas went {blue}"
    assert replicas(k8s, "green") == 3
    handovers = [r for r in kmock if r.resource == DEPLOYMENTS and r.params.get("fieldManager") == "slotkeeper-handover"]
    assert [body_of(r)["spec"] for r in handovers] == [{"replicas": 3}]
    owners = {e["manager"] for e in k8s.peek(DEPLOYMENTS, "credit-blue", namespace="default")["metadata"][
        "managedFields"] if "f:replicas" in e.get("fieldsV1", {}).get("f:spec", {})}
    assert owners == {"slotkeeper-handover"}  # the apply gave up its claim: later applies leave replicas alone
