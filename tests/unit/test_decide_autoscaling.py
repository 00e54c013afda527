"""Decision tables for autoscaled endpoints (``serving.autoscaling``): a HorizontalPodAutoscaler per
serving slot that the operator never fights, rollouts sized from the stable slot's live size, reverts
onto a still-autoscaled stable slot, scale-down that removes the old slot's autoscaler first, and a
PodDisruptionBudget per slot. The world plays the autoscaler (``hpa_scales``) and server-side apply's
hold on ``spec.replicas`` (``World.resets`` lists every slot an apply would have reset to 1)."""

from __future__ import annotations

from typing import Any

import pytest

from slotkeeper.actions import (ApplyAutoscaler, ApplyDeployment, ApplyDisruptionBudget, DeleteAutoscaler,
                                EmitEvent, HandOverReplicas, ScaleDeployment, SwitchTraffic)
from slotkeeper.api import ModelEndpointSpec
from slotkeeper.checks.canary import replicas_for_weight
from slotkeeper.render import LABEL_SLOT
from slotkeeper.revision import revision_of

from .world import World, make_spec, set_replicas_applied

URI = "file:///models/credit/1/model.joblib"
NEW_URI = "file:///models/credit/2/model.joblib"
NEWER_URI = "file:///models/credit/3/model.joblib"
CPU = {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
REQUEST_RATE = {"type": "Pods", "pods": {"metric": {"name": "slotkeeper_requests_per_second"},
                                         "target": {"type": "AverageValue", "averageValue": "50"}}}
AUTOSCALING = {"minReplicas": 2, "maxReplicas": 10, "metrics": [CPU, REQUEST_RATE]}
CANARY = {"canary": {"steps": [{"setWeight": 20}, {"pause": {}}]}}


def spec(uri: str = URI, autoscaling: dict[str, Any] | None = AUTOSCALING, **overrides: Any) -> ModelEndpointSpec:
    serving = {"replicas": 2, **({"autoscaling": autoscaling} if autoscaling else {}), **overrides.pop("serving", {})}
    return make_spec(uri, serving=serving, **overrides)


def autoscaled_world(**overrides: Any) -> World:
    world = World(spec=spec(**overrides))
    world.settle()
    return world


def respec(world: World, uri: str | None = None, **overrides: Any) -> None:
    """A new generation of the spec: the same serving block unless overridden."""
    serving = world.spec.serving.to_api()
    serving.update(overrides.pop("serving", {}))
    body = world.spec.to_api() | {"serving": serving, **overrides}
    if uri is not None:
        body["model"] = {**body["model"], "uri": uri}
    world.spec = ModelEndpointSpec.model_validate(body)
    world.generation += 1


def of(decision, kind, slot: str | None = None) -> list:
    return [a for a in decision.actions if isinstance(a, kind) and (slot is None or a.slot == slot)]


def replica_writes(decision, slot: str | None = None) -> list:
    """Writes that set a slot's replicas: scales, and applies that name them."""
    return [a for a in decision.actions if (isinstance(a, ScaleDeployment) or isinstance(a, ApplyDeployment)
                                             and "replicas" in a.body["spec"]) and (slot is None or a.slot == slot)]


def switch_to(world: World) -> None:
    """The candidate is ready: the passes that validate it and move traffic to it."""
    world.make_ready(world.status.candidate_slot)
    world.step()
    assert world.selected_slot() == world.status.candidate_slot


# ----------------------------------------------------------------------------------- no autoscaling


def test_without_autoscaling_there_is_no_autoscaler_and_replicas_are_the_operators():
    world = World()
    world.settle()
    assert world.autoscalers == {}
    assert world.replicas("blue") == 2
    world.spec = world.spec.model_copy(update={"serving": world.spec.serving.model_copy(update={"replicas": 4})})
    world.generation += 1
    assert world.step().actions == [ScaleDeployment(slot="blue", replicas=4)]


def test_the_autoscaling_fields_are_not_part_of_the_revision():
    assert revision_of(spec(autoscaling=None)) == "9c802ca3f2"  # what every endpoint had before them
    assert revision_of(spec()) == "9c802ca3f2"
    assert revision_of(spec(serving={"disruptionBudget": {"maxUnavailable": "25%"}})) == "9c802ca3f2"


# ------------------------------------------------------------------------------------ steady state


def test_the_first_revision_starts_at_min_replicas_and_then_its_autoscaler_drives_it():
    world = World(spec=spec())
    first = world.step()
    (created,) = of(first, ApplyDeployment)
    assert created.body["spec"]["replicas"] == 2  # minReplicas; serving.replicas is not used
    assert world.autoscalers == {}  # not before it serves
    world.settle()

    (hpa,) = world.autoscalers.values()
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "credit-blue"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    assert hpa["spec"]["metrics"] == [CPU, REQUEST_RATE]
    assert hpa["metadata"]["ownerReferences"][0]["kind"] == "ModelEndpoint"
    assert hpa["metadata"]["labels"][LABEL_SLOT] == "blue"
    assert world.status.slots["blue"].autoscaled is True


@pytest.mark.parametrize("chosen", [2, 5, 10])
def test_replicas_the_autoscaler_chose_are_never_written_back(chosen):
    world = autoscaled_world()
    world.hpa_scales("blue", chosen)
    writes_before = list(world.replica_writes)
    for _ in range(60):  # a minute of passes, a second apart
        world.advance(1)
        world.make_ready("blue")
        assert world.step().actions == []
    assert world.replicas("blue") == chosen
    assert world.replica_writes == writes_before
    slot = world.status.slots["blue"]
    assert (slot.replicas, slot.current_replicas, slot.ready_replicas, slot.autoscaled) == (chosen, chosen, chosen, True)


def test_with_autoscaling_serving_replicas_is_not_used():
    world = autoscaled_world()
    world.hpa_scales("blue", 5)
    respec(world, serving={"replicas": 1})
    assert world.step().actions == []
    assert world.replicas("blue") == 5


def test_changing_only_autoscaling_changes_the_autoscaler_and_rolls_nothing_out():
    world = autoscaled_world()
    world.hpa_scales("blue", 5)
    respec(world, serving={"autoscaling": {**AUTOSCALING, "maxReplicas": 20,
                                           "behavior": {"scaleDown": {"stabilizationWindowSeconds": 600}}}})
    decision = world.step()
    (applied,) = [a for a in decision.actions if not isinstance(a, EmitEvent)]
    assert isinstance(applied, ApplyAutoscaler) and applied.slot == "blue"
    assert applied.body["spec"]["maxReplicas"] == 20
    assert applied.body["spec"]["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 600}}
    assert world.status.rollout is None and world.replicas("blue") == 5


def test_turning_autoscaling_off_removes_the_autoscaler_before_replicas_are_written_again():
    world = autoscaled_world()
    world.hpa_scales("blue", 5)
    respec(world, serving={"autoscaling": None, "replicas": 3})
    decision = world.step()
    assert [a for a in decision.actions if not isinstance(a, EmitEvent)] == [
        DeleteAutoscaler(slot="blue"), ScaleDeployment(slot="blue", replicas=3)]
    assert world.autoscalers == {}
    world.step()  # status reports what the cluster shows: the next pass sees the autoscaler gone
    assert world.status.slots["blue"].autoscaled is False


def test_turning_autoscaling_on_hands_the_active_slot_to_its_new_autoscaler():
    world = World()
    world.settle()
    respec(world, serving={"autoscaling": {**AUTOSCALING, "minReplicas": 3}})
    decision = world.step()
    assert of(decision, ApplyAutoscaler, "blue") and not replica_writes(decision)
    world.hpa_scales("blue")  # the autoscaler brings it up to minReplicas itself
    assert world.replicas("blue") == 3 and world.step().actions == []


# ------------------------------------------------------------------------------------- blue/green


def test_a_blue_green_candidate_starts_at_the_active_slots_current_size_not_min_replicas():
    world = autoscaled_world()
    world.hpa_scales("blue", 5)
    respec(world, uri=NEW_URI)
    decision = world.step()

    (created,) = of(decision, ApplyDeployment, "green")
    assert created.body["spec"]["replicas"] == 5
    assert not replica_writes(decision, "blue") and world.hpa_bounds("blue") == (2, 10)
    assert "green" not in world.autoscalers  # no autoscaler on a slot without traffic: it would shrink it


def test_the_candidate_follows_the_stable_slots_size_until_the_switch_so_it_never_lands_on_fewer_pods():
    world = autoscaled_world()
    world.hpa_scales("blue", 5)
    respec(world, uri=NEW_URI)
    world.step()
    world.hpa_scales("blue", 7)  # more load while the candidate deploys
    assert of(world.step(), ScaleDeployment, "green") == [ScaleDeployment(slot="green", replicas=7)]

    world.make_ready("green", ready=5)
    world.step()
    assert world.selected_slot() == "blue"  # 5 of 7 ready: not yet
    world.make_ready("green")
    world.step()
    assert world.selected_slot() == "green"
    assert (world.replicas("green"), world.deployments["green"]["status"]["readyReplicas"]) == (7, 7)


def test_after_the_switch_the_candidate_gets_its_autoscaler_and_stable_keeps_its_size_through_analysis():
    world = autoscaled_world()
    world.hpa_scales("blue", 5)
    respec(world, uri=NEW_URI)
    world.step()
    world.make_ready("green")
    decision = world.step()

    switch = next(i for i, a in enumerate(decision.actions) if isinstance(a, SwitchTraffic))
    (hpa,) = [i for i, a in enumerate(decision.actions) if isinstance(a, ApplyAutoscaler) and a.slot == "green"]
    assert switch < hpa  # with the traffic, not before: without load it would shrink the candidate
    assert world.hpa_bounds("green") == (2, 10)
    assert world.hpa_bounds("blue") == (5, 10)  # a revert lands on a full stable slot
    assert world.status.rollout.stable_replicas == 5
    world.hpa_scales("blue", 2)  # no traffic, no load: the autoscaler would go down, the floor holds
    assert world.replicas("blue") == 5
    world.hpa_scales("green", 6)
    assert not replica_writes(world.step())


def test_a_revert_after_the_switch_finds_stable_autoscaled_and_parks_the_failed_slot_without_one():
    world = autoscaled_world()
    world.hpa_scales("blue", 5)
    respec(world, uri=NEW_URI)
    world.step()
    switch_to(world)
    world.crash("green", reason="ImagePullBackOff")
    decision = world.step()

    kinds = [(type(a).__name__, getattr(a, "slot", None)) for a in decision.actions if not isinstance(a, EmitEvent)]
    assert kinds.index(("SwitchTraffic", None)) < kinds.index(("DeleteAutoscaler", "green")) \
        < kinds.index(("ScaleDeployment", "green"))  # traffic back first
    assert world.selected_slot() == "blue" and world.status.phase == "RolledBack"
    assert world.hpa_bounds("blue") == (2, 10)  # never removed, the floor lifted
    assert "green" not in world.autoscalers and world.replicas("green") == 1  # failedSlotReplicas
    assert world.replicas("blue") == 5


def test_promotion_keeps_the_old_slot_autoscaled_through_the_delay_then_removes_its_autoscaler_and_scales_to_zero():
    world = autoscaled_world()
    world.hpa_scales("blue", 5)
    respec(world, uri=NEW_URI)
    world.step()
    switch_to(world)
    world.advance(120)
    world.step()
    assert world.status.active_slot == "green" and world.status.phase == "Healthy"
    assert world.hpa_bounds("blue") == (2, 10) and world.replicas("blue") == 5

    world.advance(60)
    decision = world.step()
    assert [a for a in decision.actions if not isinstance(a, EmitEvent)] == [
        DeleteAutoscaler(slot="blue"), ScaleDeployment(slot="blue", replicas=0)]  # nothing to scale it back up
    assert set(world.autoscalers) == {"green"}
    assert world.settle() is None and world.replicas("blue") == 0


def test_a_manual_promotion_waits_with_the_candidate_at_the_stable_slots_size():
    world = autoscaled_world(strategy={"blueGreen": {"autoPromote": False}})
    world.hpa_scales("blue", 4)
    respec(world, uri=NEW_URI)
    world.step()
    world.make_ready("green")
    world.step()
    assert world.status.phase == "Paused" and world.replicas("green") == 4
    world.hpa_scales("blue", 6)
    world.step()
    world.make_ready("green")
    world.annotations["slotkeeper.io/promote"] = "p1"
    world.step()
    assert world.selected_slot() == "green" and world.replicas("green") == 6


def test_a_superseding_revision_after_the_switch_takes_the_autoscaler_off_the_candidate_slot():
    world = autoscaled_world()
    world.hpa_scales("blue", 5)
    respec(world, uri=NEW_URI)
    world.step()
    switch_to(world)
    assert "green" in world.autoscalers
    respec(world, uri=NEWER_URI)
    world.step()
    assert world.selected_slot() == "blue"
    assert "green" not in world.autoscalers and world.replicas("green") == 5
    assert world.status.rollout.stable_replicas is None  # a new rollout sizes by the live stable slot again


# ------------------------------------------------------------------------------------------ canary


def test_canary_steps_size_the_candidate_from_the_stable_slots_live_size():
    world = autoscaled_world(strategy=CANARY)
    world.hpa_scales("blue", 8)
    world.replica_writes.clear()
    respec(world, uri=NEW_URI)
    decision = world.step()
    (created,) = of(decision, ApplyDeployment, "green")
    assert created.body["spec"]["replicas"] == replicas_for_weight(8, 20)[1] == 2
    world.make_ready("green")
    world.step()
    assert world.selected_slot() is None  # both slots
    assert world.status.phase == "Paused" and world.replicas("blue") == 8
    assert world.hpa_bounds("blue") == (2, 10) and not [w for w in world.replica_writes if w[0] == "blue"]
    world.hpa_scales("blue", 4)  # the stable slot's load went down: the candidate follows
    world.annotations["slotkeeper.io/promote"] = "p1"
    world.step()
    assert world.status.rollout.step == "Analysing" and world.status.rollout.stable_replicas == 4
    world.step()
    assert world.replicas("green") == 4  # full size for analysis is the stable slot's size


def test_a_canary_weight_above_50_pins_the_stable_autoscaler_instead_of_writing_its_replicas():
    world = autoscaled_world(strategy={"canary": {"steps": [{"setWeight": 75}, {"pause": {}}]}})
    world.hpa_scales("blue", 4)
    world.replica_writes.clear()
    respec(world, uri=NEW_URI)
    world.step()
    assert world.replicas("green") == 4
    world.make_ready("green")
    world.step()
    stable_n = replicas_for_weight(4, 75)[0]
    assert world.hpa_bounds("blue") == (stable_n, stable_n) and world.replicas("blue") == 4
    assert world.status.rollout.stable_replicas == 4 and world.status.rollout.canary_step == 0
    world.hpa_scales("blue")  # the autoscaler shrinks it to its pin
    world.make_ready("blue")
    world.step()
    assert world.replicas("blue") == stable_n and world.status.phase == "Paused"
    assert not [w for w in world.replica_writes if w[0] == "blue"]

    world.annotations["slotkeeper.io/promote"] = "p1"
    world.step()  # analysis: stable gets its floor back before traffic moves to the candidate alone
    assert world.hpa_bounds("blue") == (4, 10)
    world.hpa_scales("blue")
    world.settle()
    assert world.selected_slot() == "green" and world.replicas("blue") == 4


def test_a_canary_revert_with_the_stable_slot_shrunk_gives_its_autoscaler_the_users_bounds_back():
    world = autoscaled_world(strategy={"canary": {"steps": [{"setWeight": 75}, {"pause": {}}]}})
    world.hpa_scales("blue", 4)
    respec(world, uri=NEW_URI)
    world.step()
    world.make_ready("green")
    world.step()
    world.hpa_scales("blue")
    world.annotations["slotkeeper.io/abort"] = "a1"
    world.step()
    assert world.selected_slot() == "blue" and world.status.phase == "RolledBack"
    assert world.hpa_bounds("blue") == (2, 10) and "green" not in world.autoscalers
    world.hpa_scales("blue")  # up to minReplicas at once; the load does the rest
    assert world.replicas("blue") == 2


# -------------------------------------------------------------------------------- disruption budgets


def test_every_slot_gets_a_disruption_budget_of_one_pod_by_default():
    world = World()
    world.settle()
    (budget,) = world.disruption_budgets.values()
    assert budget["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": {
        "slotkeeper.io/endpoint": "credit", LABEL_SLOT: "blue"}}}
    assert budget["metadata"]["ownerReferences"][0]["name"] == "credit"
    world.change_spec(uri=NEW_URI)
    world.step()
    assert set(world.disruption_budgets) == {"blue", "green"}


def test_a_changed_disruption_budget_is_applied_to_every_slot_without_a_rollout():
    world = autoscaled_world()
    respec(world, uri=NEW_URI)
    world.step()
    switch_to(world)
    respec(world, serving={"disruptionBudget": {"maxUnavailable": "25%"}})
    decision = world.step()
    assert {a.slot for a in of(decision, ApplyDisruptionBudget)} == {"blue", "green"}
    assert {b["spec"]["maxUnavailable"] for b in world.disruption_budgets.values()} == {"25%"}
    assert world.status.rollout is not None and world.status.rollout.revision == revision_of(world.spec)
    assert not world.step().actions


# ------------------------------------------------------------------------- server-side apply hand-off


def legacy_world() -> World:
    """Green serves v2; blue still runs v1 in its scale-down delay, its replicas owned by slotkeeper's
    apply, as every slotkeeper before the hand-off applied them."""
    world = World(spec=spec(autoscaling=None, strategy={"blueGreen": {"scaleDownDelaySeconds": 3600}}))
    world.settle()
    world.change_spec(uri=NEW_URI, serving={"replicas": 2}, strategy={"blueGreen": {"scaleDownDelaySeconds": 3600}})
    world.step()
    switch_to(world)
    world.advance(120)
    world.settle()
    assert world.status.active_slot == "green" and world.replicas("blue") == 2
    set_replicas_applied(world.deployments["blue"], True)
    return world


def test_replicas_an_older_slotkeeper_applied_are_handed_over_before_an_apply_without_them():
    world = legacy_world()
    world.change_spec(uri=NEWER_URI, serving={"replicas": 2},
                      strategy={"blueGreen": {"scaleDownDelaySeconds": 3600}})
    decision = world.step()
    kinds = [type(a) for a in decision.actions if not isinstance(a, EmitEvent)]
    assert kinds.index(HandOverReplicas) < kinds.index(ApplyDeployment)
    assert of(decision, HandOverReplicas) == [HandOverReplicas(slot="blue", replicas=2)]
    assert "replicas" not in of(decision, ApplyDeployment, "blue")[0].body["spec"]
    assert world.resets == [] and world.replicas("blue") == 2


def test_without_the_hand_over_the_apply_would_reset_the_running_slot_to_one():
    """What the hand-off prevents, played by the same world (server-side apply's pruning)."""
    world = legacy_world()
    world.change_spec(uri=NEWER_URI, serving={"replicas": 2},
                      strategy={"blueGreen": {"scaleDownDelaySeconds": 3600}})
    decision = world.decide()
    for action in decision.actions:
        if not isinstance(action, HandOverReplicas):
            world.apply(action)
    assert world.resets == ["blue"] and world.replicas("blue") == 1


def test_a_slot_created_by_the_operator_is_handed_over_once_and_then_never_again():
    world = World(spec=spec(autoscaling=None))
    world.settle()  # blue created by an apply naming its replicas
    world.change_spec(uri=NEW_URI)
    world.step()
    switch_to(world)
    world.advance(120)
    world.settle()
    world.advance(60)
    world.settle()  # blue scaled to 0 by a merge patch: the apply's claim on the count is gone
    assert world.replicas("blue") == 0
    world.change_spec(uri=NEWER_URI)
    assert not of(world.step(), HandOverReplicas)
    assert world.resets == []
