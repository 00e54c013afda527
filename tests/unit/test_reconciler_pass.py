"""One reconcile pass end to end, with the cluster layer and the check runner recorded: what the pass
hands to each (namespace, endpoint, the Event poster, the endpoint's uid, generation and annotations),
that it decides from the status it wrote itself while the watch lags, writes only what changed and
leaves keys it does not own, remembers its writes, counts them, and when it wants to be woken."""

from __future__ import annotations

import copy

import pytest
from slotkeeper.kube_api import ApiError
from pydantic import ValidationError

from slotkeeper.actions import ApplyDeployment, CreateService, EmitEvent, ScaleDeployment
from slotkeeper.api import ModelEndpointSpec
from slotkeeper.decide import Gates
from slotkeeper.observe import Observed, summarise_autoscaler, summarise_deployment, summarise_disruption_budget
from slotkeeper.reconciler import (IDLE_RESYNC_SECONDS, EndpointGone, EndpointReconciler, ObservedSources,
                                   api_message, spec_error)

from .test_reconciler_api_errors import api_error
from .world import T0, World, make_spec

SPEC = {"model": {"name": "credit", "uri": "file:///models/credit/1/model.joblib"}, "serving": {"replicas": 2}}
NEW_SPEC = {**SPEC, "model": {"name": "credit", "uri": "file:///models/credit/2/model.joblib"},
            "checks": {"validation": [{"name": "smoke", "request": {"inputs": []}, "expect": {"status": 200}}]}}
NOTHING = ObservedSources(deployments=[], pods=[], services={})


class RecordingCluster:
    def __init__(self) -> None:
        self.applied: list[tuple] = []  # (namespace, endpoint, action, post_event)
        self.status_patches: list[tuple] = []  # (namespace, name, patch)

    @property
    def actions(self) -> list:
        return [action for _, _, action, _ in self.applied]

    async def apply(self, namespace, endpoint, action, post_event) -> None:
        self.applied.append((namespace, endpoint, action, post_event))
        if isinstance(action, EmitEvent):
            post_event(type=action.type, reason=action.reason, message=action.message)

    async def patch_status(self, namespace, name, patch) -> None:
        self.status_patches.append((namespace, name, copy.deepcopy(patch)))


class RecordingRunner:
    """Stands in for CheckRunner: records what it was given, answers with fixed gates."""

    def __init__(self, gates: Gates) -> None:
        self.gates, self.calls = gates, []

    async def run(self, endpoint, observed, now) -> Gates:
        self.calls.append((endpoint, observed, now))
        return self.gates


def body(spec=SPEC, status=None, generation=1, **metadata) -> dict:
    meta = {"name": "credit", "namespace": "ml", "uid": "u-123", "generation": generation, **metadata}
    return {"metadata": meta, "spec": spec, **({"status": status} if status is not None else {})}


def reconciler(cluster=None, **kwargs) -> tuple[EndpointReconciler, list[dict]]:
    events: list[dict] = []
    return EndpointReconciler(namespace="ml", name="credit", cluster=cluster or RecordingCluster(),
                              post_event=lambda **event: events.append(event), clock=lambda: T0, **kwargs), events


def sources(world: World) -> ObservedSources:
    return ObservedSources(deployments=[summarise_deployment(d) for d in world.deployments.values()],
                           pods=list(world.pods),
                           services={name: svc["spec"]["selector"] for name, svc in world.services.items()},
                           autoscalers=[summarise_autoscaler(a) for a in world.autoscalers.values()],
                           disruption_budgets=[summarise_disruption_budget(b)
                                               for b in world.disruption_budgets.values()])


def healthy_world() -> World:
    world = World(spec=make_spec(serving={"replicas": 2}))
    world.settle()
    return world


# -------------------------------------------------------------------------------- a first pass


async def test_a_first_pass_acts_for_this_endpoint_and_writes_its_status():
    cluster = RecordingCluster()
    loop, events = reconciler(cluster)
    requeue = await loop.reconcile(body(generation=7), NOTHING)

    assert {(ns, name) for ns, name, _, _ in cluster.applied} == {("ml", "credit")}
    assert all(post_event == loop.post_event for *_, post_event in cluster.applied)
    (deployment,) = [a for a in cluster.actions if isinstance(a, ApplyDeployment)]
    assert deployment.body["metadata"]["ownerReferences"][0]["uid"] == "u-123"
    assert [e["reason"] for e in events] == ["RolloutStarted"]
    ((ns, name, patch),) = cluster.status_patches
    assert (ns, name) == ("ml", "credit")
    assert patch["observedGeneration"] == 7 and patch["url"] == "http://credit.ml.svc.cluster.local"
    assert requeue == 10  # the candidate's readiness is polled
    assert loop.writes_done == len(cluster.applied) + 1


async def test_manual_actions_are_read_from_the_annotations():
    cluster = RecordingCluster()
    loop, events = reconciler(cluster)
    await loop.reconcile(body(annotations={"slotkeeper.io/pause": "p1"}), NOTHING)
    (_, _, patch), = cluster.status_patches
    assert patch["handledActions"] == {"pause": "p1"} and patch["phase"] == "Paused"
    assert {"type": "Normal", "reason": "ManualAction", "message": "pause requested"} in events


async def test_while_the_watch_lags_the_next_pass_decides_from_the_status_it_wrote():
    cluster = RecordingCluster()
    loop, events = reconciler(cluster)
    await loop.reconcile(body(), NOTHING)
    assert loop.written_status["rollout"]["step"] == "Deploying"
    first_pass = len(cluster.applied)

    await loop.reconcile(body(), NOTHING)  # the same stale body, nothing observed yet
    assert [e["reason"] for e in events] == ["RolloutStarted"]  # not started twice
    # Nothing changed: the rollout is the one written, and the slots too (the first pass reported the
    # Deployment it had just applied, as this pass sees it from its own write).
    assert cluster.status_patches[1:] == []
    assert cluster.applied[first_pass:] == []  # its own writes are remembered too


async def test_the_pass_that_applies_a_slot_deployment_reports_it_in_the_same_status_write():
    cluster = RecordingCluster()
    loop, _ = reconciler(cluster)
    await loop.reconcile(body(), NOTHING)
    ((_, _, patch),) = cluster.status_patches
    (slot,) = patch["slots"]
    assert patch["slots"][slot] == {"revision": patch["rollout"]["revision"], "replicas": 2,
                                    "currentReplicas": 0, "readyReplicas": 0, "autoscaled": False}
    assert slot == patch["rollout"]["slot"]


async def test_a_restarted_operator_resumes_from_the_status_in_the_object():
    world = healthy_world()
    cluster = RecordingCluster()
    loop, events = reconciler(cluster)
    requeue = await loop.reconcile(body(status=world.status.to_api()), sources(world))
    assert cluster.applied == [] and cluster.status_patches == [] and events == []
    assert requeue == IDLE_RESYNC_SECONDS


async def test_a_pass_over_an_unchanged_healthy_endpoint_writes_nothing():
    world = healthy_world()
    cluster = RecordingCluster()
    loop, _ = reconciler(cluster)
    await loop.reconcile(body(status=world.status.to_api()), sources(world))
    await loop.reconcile(body(status=world.status.to_api()), sources(world))
    assert cluster.applied == [] and cluster.status_patches == [] and loop.writes_done == 0


async def test_keys_the_operator_does_not_own_are_left_alone():
    world = healthy_world()
    world.make_ready("blue", ready=0)
    cluster = RecordingCluster()
    loop, _ = reconciler(cluster)
    await loop.reconcile(body(status={**world.status.to_api(), "kopf": {"progress": {}}}), sources(world))
    ((_, _, patch),) = cluster.status_patches
    assert patch["phase"] == "Degraded" and "kopf" not in patch
    assert "slots" in patch and "stableRevision" not in patch  # only what changed
    assert loop.written_status["kopf"] == {"progress": {}}


async def test_a_key_the_decision_drops_is_gone_from_what_the_next_pass_starts_from():
    world = World(spec=make_spec(serving={"replicas": 2}))
    world.step()
    world.make_ready("blue")
    cluster = RecordingCluster()
    loop, _ = reconciler(cluster)
    await loop.reconcile(body(status=world.status.to_api()), sources(world))  # promoted: no rollout any more
    ((_, _, patch),) = cluster.status_patches
    assert patch["rollout"] is None
    assert "rollout" not in loop.written_status and loop.written_status["phase"] == "Healthy"


async def test_a_scale_is_remembered_so_the_next_pass_does_not_repeat_it():
    world = healthy_world()
    world.deployments["blue"]["spec"]["replicas"] = 1  # kubectl scale
    cluster = RecordingCluster()
    loop, _ = reconciler(cluster)
    await loop.reconcile(body(status=world.status.to_api()), sources(world))
    assert cluster.actions == [ScaleDeployment(slot="blue", replicas=2)]
    await loop.reconcile(body(status=world.status.to_api()), sources(world))  # the watch has not shown it yet
    assert cluster.actions == [ScaleDeployment(slot="blue", replicas=2)]


async def test_services_created_are_remembered_so_the_next_pass_does_not_create_them_again():
    cluster = RecordingCluster()
    loop, _ = reconciler(cluster)
    await loop.reconcile(body(), NOTHING)
    created = [a for a in cluster.actions if isinstance(a, CreateService)]
    assert len(created) == 3
    await loop.reconcile(body(), NOTHING)
    assert len([a for a in cluster.actions if isinstance(a, CreateService)]) == 3


# ------------------------------------------------------------------------------------- checks


def validating_world() -> World:
    world = healthy_world()
    world.spec = ModelEndpointSpec.model_validate(NEW_SPEC)
    world.generation += 1
    world.step()
    world.make_ready("green")
    world.step()
    assert world.status.rollout.step == "Validating"
    return world


async def test_the_check_runner_is_given_this_pass_and_its_gates_decide():
    world = validating_world()
    runner = RecordingRunner(Gates(validation=(False, 'validation "smoke": status 500, expected 200')))
    cluster = RecordingCluster()
    loop, events = reconciler(cluster, checks=runner)
    await loop.reconcile(body(NEW_SPEC, status=world.status.to_api(), generation=2), sources(world))

    ((endpoint, observed, now),) = runner.calls
    assert (endpoint.name, endpoint.namespace, endpoint.uid, endpoint.generation) == ("credit", "ml", "u-123", 2)
    assert endpoint.status.rollout.step == "Validating"
    assert isinstance(observed, Observed) and observed.slot("green").revision == world.status.rollout.revision
    assert now == T0
    ((_, _, patch),) = cluster.status_patches
    assert patch["phase"] == "RolledBack"
    assert [e["reason"] for e in events] == ["RolledBack"]


# ------------------------------------------------------------------------------ invalid specs


async def test_an_invalid_spec_is_a_warning_and_a_degraded_condition_of_this_generation():
    cluster = RecordingCluster()
    loop, events = reconciler(cluster)
    requeue = await loop.reconcile(body({"model": {"name": "credit"}}, generation=4), NOTHING)
    ((_, _, patch),) = cluster.status_patches
    assert patch["phase"] == "Degraded" and patch["observedGeneration"] == 4
    (degraded,) = [c for c in patch["conditions"] if c["type"] == "Degraded"]
    assert (degraded["status"], degraded["reason"], degraded["observedGeneration"]) == ("True", "InvalidSpec", 4)
    assert events == [{"type": "Warning", "reason": "InvalidSpec", "message": degraded["message"]}]
    assert degraded["message"].startswith("spec.model.uri: ")
    assert cluster.applied == [] and requeue == IDLE_RESYNC_SECONDS

    await loop.reconcile(body({"model": {"name": "credit"}}, generation=4), NOTHING)
    assert len(events) == 1 and len(cluster.status_patches) == 1  # said once


def test_an_invalid_spec_names_its_first_three_problems():
    with pytest.raises(ValidationError) as raised:
        ModelEndpointSpec.model_validate({"model": {}, "serving": {"replicas": "x"}, "paused": "maybe"})
    assert len(raised.value.errors()) >= 4
    message = spec_error(raised.value)
    parts = message.split("; ")
    assert len(parts) == 3 and all(part.startswith("spec.") for part in parts)
    assert parts[0].startswith("spec.model.name: ")


async def test_the_endpoint_gone_error_names_it():
    class Gone(RecordingCluster):
        async def patch_status(self, namespace, name, patch) -> None:
            raise api_error(404, {"reason": "NotFound", "code": 404})

    loop, _ = reconciler(Gone())
    with pytest.raises(EndpointGone, match="^ml/credit$"):
        await loop.reconcile(body(), NOTHING)


# -------------------------------------------------------------------------------- api_message


def test_a_quoted_value_up_to_120_characters_is_kept_a_longer_one_is_elided_whole():
    kept = '"' + "k" * 118 + '"'  # 120 characters with its quotes
    long = '"' + "x" * 119 + '"'
    message = api_message(api_error(422, {"message": f"Deployment {kept} is invalid: patch: {long}: bad quantity"}))
    assert message == f'Deployment {kept} is invalid: patch: "<object>": bad quantity'


@pytest.mark.parametrize("raw", ["<html>gateway timeout</html>", None, ""])
def test_without_a_status_body_the_http_reason_is_the_message(raw):
    error = ApiError(status=504, reason="Gateway Timeout")
    error.body = raw
    assert api_message(error) == "Gateway Timeout"
