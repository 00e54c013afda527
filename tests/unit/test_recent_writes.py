"""Writes the watches have not delivered yet: the next decision must see them (or it switches traffic,
announces and creates twice), the watch catching up must end them (or they would mask a later
change by someone else), and they must expire (a write the watch never shows is forgotten)."""

from __future__ import annotations

from slotkeeper.actions import (ApplyAutoscaler, ApplyDeployment, ApplyDisruptionBudget, CreateService,
                                DeleteAutoscaler, EmitEvent, ScaleDeployment, SwitchTraffic)
from slotkeeper.decide import Decision, decide_next_step
from slotkeeper.observe import DeploymentSummary, Observed, PodSummary, SlotObservation
from slotkeeper.recent_writes import EXPIRY_SECONDS, RecentWrites
from slotkeeper.render import LABEL_SLOT

from .world import World, make_spec

NEW_URI = "file:///models/credit/2/model.joblib"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lagging_pass(world: World, writes: RecentWrites, *, deliver: tuple[type, ...] = ()) -> Decision:
    """One reconcile pass as the reconciler runs it (decide from the overlaid view, remember each
    write), where the watches deliver only the writes of the ``deliver`` types; the others are
    carried out by the API but not seen yet."""
    observed = writes.overlay(world.observed())
    decision = decide_next_step(world.endpoint(), observed, world.now)
    for action in decision.actions:
        if isinstance(action, EmitEvent) or isinstance(action, deliver):
            world.apply(action)
        writes.remember("credit", action, observed)
    world.status = decision.status
    return decision


def switches(decision: Decision) -> list[SwitchTraffic]:
    return [a for a in decision.actions if isinstance(a, SwitchTraffic)]


def announced(decision: Decision) -> list[str]:
    return [a.reason for a in decision.actions if isinstance(a, EmitEvent) and a.reason == "TrafficSwitched"]


def world_about_to_switch() -> World:
    """The first revision is ready and promoted in status; the next pass selects it."""
    world = World()
    world.single_step()
    world.make_ready("blue")
    world.single_step()
    assert world.status.stable_revision is not None and world.selected_slot() == "none"
    return world


# --------------------------------------------------------------------------------------- selector


def test_a_selector_just_written_is_seen_by_the_next_decision_before_the_watch_delivers_it():
    world, clock = world_about_to_switch(), FakeClock()
    writes = RecentWrites(clock=clock)
    everything_but_traffic = (ApplyDeployment, ScaleDeployment, CreateService)

    first = lagging_pass(world, writes, deliver=everything_but_traffic)
    assert [s.selector[LABEL_SLOT] for s in switches(first)] == ["blue"]
    assert world.selected_slot() == "none"  # the Service's watch event is still on its way

    clock.now += 1
    second = lagging_pass(world, writes, deliver=everything_but_traffic)
    assert switches(second) == [] and announced(second) == []  # no second switch, no second Event
    # Status reports what the cluster shows (nobody selected yet), not the switch just written.
    assert second.status.traffic == {"blue": 0, "green": 0}

    clock.now += 1
    world.apply(switches(first)[0])  # the Service's watch event arrives
    third = lagging_pass(world, writes)
    assert switches(third) == [] and world.selected_slot() == "blue"
    assert third.status.traffic == {"blue": 100, "green": 0}


def test_the_written_selector_expires_and_a_lost_write_is_made_again():
    world, clock = world_about_to_switch(), FakeClock()
    writes = RecentWrites(clock=clock)
    everything_but_traffic = (ApplyDeployment, ScaleDeployment, CreateService)
    lagging_pass(world, writes, deliver=everything_but_traffic)

    clock.now += EXPIRY_SECONDS  # not yet past the expiry: still trusted
    assert switches(lagging_pass(world, writes, deliver=everything_but_traffic)) == []

    clock.now += 1  # past it: the watch must be right, and it says nobody is selected
    again = lagging_pass(world, writes, deliver=everything_but_traffic + (SwitchTraffic,))
    assert [s.selector[LABEL_SLOT] for s in switches(again)] == ["blue"]
    assert world.selected_slot() == "blue"


def test_once_the_watch_shows_the_selector_a_later_change_by_someone_else_is_seen_at_once():
    world, clock = world_about_to_switch(), FakeClock()
    writes = RecentWrites(clock=clock)
    lagging_pass(world, writes, deliver=(ApplyDeployment, ScaleDeployment, CreateService, SwitchTraffic))
    assert world.selected_slot() == "blue"
    lagging_pass(world, writes)  # the watch shows it: the remembered write is done with
    assert writes.selector is None

    world.services["credit"]["spec"]["selector"][LABEL_SLOT] = "none"  # kubectl edit, say
    clock.now += 1
    fix = lagging_pass(world, writes, deliver=(SwitchTraffic,))
    assert [s.selector[LABEL_SLOT] for s in switches(fix)] == ["blue"]


def test_an_endpoint_service_just_created_counts_as_its_selector():
    clock = FakeClock()
    writes = RecentWrites(clock=clock)
    empty = Observed(slots={}, endpoint_selector=None)
    body = {"metadata": {"name": "credit"}, "spec": {"selector": {LABEL_SLOT: "none"}}}
    writes.remember("credit", CreateService(body), empty)
    assert writes.overlay(empty).endpoint_selector == {LABEL_SLOT: "none"}


# ----------------------------------------------------------------------------- deployments, services


def test_a_deployment_and_services_just_created_are_not_created_again():
    world, clock = World(), FakeClock()
    writes = RecentWrites(clock=clock)
    first = lagging_pass(world, writes)  # nothing is delivered
    assert [a.slot for a in first.actions if isinstance(a, ApplyDeployment)] == ["blue"]
    assert len([a for a in first.actions if isinstance(a, CreateService)]) == 3

    clock.now += 1
    second = lagging_pass(world, writes)
    assert [a for a in second.actions if not isinstance(a, EmitEvent)] == []

    overlaid = writes.overlay(world.observed())
    blue = overlaid.slot("blue")
    assert blue.ready_replicas == 0 and blue.replicas == 2 and blue.revision is not None  # no pod is ready yet
    assert overlaid.slot_services == frozenset({"blue", "green"})
    assert overlaid.endpoint_selector == {"slotkeeper.io/endpoint": "credit", LABEL_SLOT: "none"}

    clock.now += EXPIRY_SECONDS + 1  # the watch never showed them: forget them and create again
    third = lagging_pass(world, writes, deliver=(ApplyDeployment, ScaleDeployment, CreateService, ApplyDisruptionBudget))
    assert [a.slot for a in third.actions if isinstance(a, ApplyDeployment)] == ["blue"]
    assert writes.overlay(world.observed()) == world.observed()  # delivered now: nothing left to lay over
    assert writes.deployments == {} and writes.services == {} and writes.selector is None
    assert writes.disruption_budgets == {}


def test_a_scale_just_written_is_seen_with_the_pods_already_observed():
    clock = FakeClock()
    writes = RecentWrites(clock=clock)
    seen = DeploymentSummary(slot="blue", revision="r1", replicas=2, ready_replicas=2, updated_replicas=2,
                             available_replicas=2, status_replicas=2)
    pod = PodSummary(name="credit-blue-1", slot="blue", revision="r1", ready=True)
    observed = Observed(slots={"blue": SlotObservation(deployment=seen, pods=(pod,))}, endpoint_selector=None)

    writes.remember("credit", ScaleDeployment(slot="blue", replicas=5), observed)
    overlaid = writes.overlay(observed).slot("blue")
    assert overlaid.deployment.revision == "r1" and overlaid.replicas == 5
    assert overlaid.ready_replicas == 2  # the same pods: only the wanted size changed
    assert overlaid.pods == (pod,)

    writes.remember("credit", ScaleDeployment(slot="blue", replicas=3), observed)  # revision from the last write
    assert writes.overlay(observed).slot("blue").replicas == 3

    delivered = Observed(slots={"blue": SlotObservation(deployment=DeploymentSummary(
        slot="blue", revision="r1", replicas=3))}, endpoint_selector=None)
    assert writes.overlay(delivered).slot("blue").replicas == 3
    assert writes.deployments == {}


def test_a_new_revision_just_applied_over_an_old_one_has_no_ready_pod_yet():
    clock = FakeClock()
    writes = RecentWrites(clock=clock)
    old = DeploymentSummary(slot="green", revision="old", replicas=2, ready_replicas=2, updated_replicas=2,
                            available_replicas=2, status_replicas=2)
    observed = Observed(slots={"green": SlotObservation(deployment=old)}, endpoint_selector=None)
    world = World()
    world.change_spec(model={"name": "credit", "uri": NEW_URI})
    decision = world.decide()
    apply = next(a for a in decision.actions if isinstance(a, ApplyDeployment))
    writes.remember("credit", ApplyDeployment(slot="green", body=apply.body), observed)

    green = writes.overlay(observed).slot("green")
    assert green.revision != "old"
    assert green.ready_replicas == 0 and not green.fully_ready(green.revision)


def test_each_remembered_deployment_is_handled_on_its_own():
    """Blue's write has shown up in the watch; green's has not: green is still laid over."""
    clock = FakeClock()
    writes = RecentWrites(clock=clock)
    blue = DeploymentSummary(slot="blue", revision="r1", replicas=2, ready_replicas=2)
    green = DeploymentSummary(slot="green", revision="r2", replicas=2, ready_replicas=2)
    before = Observed(slots={"blue": SlotObservation(deployment=blue), "green": SlotObservation(deployment=green)},
                      endpoint_selector=None)
    writes.remember("credit", ScaleDeployment(slot="blue", replicas=4), before)
    writes.remember("credit", ScaleDeployment(slot="green", replicas=0), before)

    blue_seen = Observed(slots={"blue": SlotObservation(deployment=DeploymentSummary(
        slot="blue", revision="r1", replicas=4)), "green": SlotObservation(deployment=green)}, endpoint_selector=None)
    overlaid = writes.overlay(blue_seen)
    assert overlaid.slot("green").deployment == DeploymentSummary(slot="green", revision="r2", replicas=0,
                                                                  ready_replicas=2)
    assert list(writes.deployments) == ["green"]


def test_a_scale_right_after_a_new_revision_keeps_the_new_revision():
    """Apply revision r2 into green, then scale it, before the watch showed either: green is r2."""
    clock = FakeClock()
    writes = RecentWrites(clock=clock)
    old = DeploymentSummary(slot="green", revision="r1", replicas=0)
    observed = Observed(slots={"green": SlotObservation(deployment=old)}, endpoint_selector=None)
    world = World()
    world.change_spec(model={"name": "credit", "uri": NEW_URI})
    body = next(a for a in world.decide().actions if isinstance(a, ApplyDeployment)).body
    writes.remember("credit", ApplyDeployment(slot="green", body=body), observed)
    revision = writes.overlay(observed).slot("green").revision

    writes.remember("credit", ScaleDeployment(slot="green", replicas=3), observed)

    assert writes.overlay(observed).slot("green").deployment == DeploymentSummary(
        slot="green", revision=revision, replicas=3)
    assert revision != "r1"


def test_writes_are_trusted_up_to_the_expiry_and_not_a_moment_longer():
    clock = FakeClock()
    writes = RecentWrites(clock=clock)
    empty = Observed(slots={}, endpoint_selector=None)
    world = World()
    body = next(a for a in world.decide().actions if isinstance(a, ApplyDeployment)).body
    writes.remember("credit", ApplyDeployment(slot="blue", body=body), empty)
    writes.remember("credit", CreateService({"metadata": {"name": "credit-green"}, "spec": {"selector": {}}}), empty)

    clock.now += EXPIRY_SECONDS
    overlaid = writes.overlay(empty)
    assert overlaid.slot("blue").deployment is not None and overlaid.slot_services == frozenset({"green"})

    clock.now += 0.5
    assert writes.overlay(empty) == Observed(slots={}, endpoint_selector=None)


def test_slot_services_of_an_endpoint_with_dashes_in_its_name_are_remembered_by_slot():
    writes = RecentWrites(clock=FakeClock())
    empty = Observed(slots={}, endpoint_selector=None)
    body = {"metadata": {"name": "fraud-model-v2-green"}, "spec": {"selector": {}}}
    writes.remember("fraud-model-v2", CreateService(body), empty)
    assert writes.overlay(empty).slot_services == frozenset({"green"})


# --------------------------------------------------------------------------- autoscalers, budgets


def autoscaled_world() -> World:
    cpu = {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
    world = World(spec=make_spec(serving={"replicas": 2, "autoscaling": {"minReplicas": 2, "maxReplicas": 5,
                                                                         "metrics": [cpu]}}))
    world.settle()
    return world


def test_an_autoscaler_just_applied_or_deleted_is_not_written_again_before_the_watch_shows_it():
    world, clock = autoscaled_world(), FakeClock()
    writes = RecentWrites(clock=clock)
    world.change_spec(uri=NEW_URI, serving=world.spec.serving.to_api())
    world.step()
    world.make_ready("green")
    lagging_pass(world, writes)  # the switch is decided (in status first)
    switch = lagging_pass(world, writes, deliver=(SwitchTraffic,))  # made; green's autoscaler written, not seen
    assert "green" in writes.autoscalers
    clock.now += 1
    again = lagging_pass(world, writes)
    assert not [a for a in again.actions if isinstance(a, ApplyAutoscaler)]
    assert writes.overlay(world.observed()).slot("green").autoscaler is not None
    for action in switch.actions:  # the watch shows them now
        if isinstance(action, ApplyAutoscaler):
            world.apply(action)
    lagging_pass(world, writes)
    assert writes.autoscalers == {}  # shown by the watch: nothing left to lay over

    world.change_spec(uri=NEW_URI, serving={"replicas": 2})  # autoscaling off: the autoscalers go
    first = lagging_pass(world, writes)
    assert {a.slot for a in first.actions if isinstance(a, DeleteAutoscaler)} == {"blue", "green"}
    clock.now += 1
    assert not [a for a in lagging_pass(world, writes).actions if isinstance(a, DeleteAutoscaler)]
    assert writes.overlay(world.observed()).slot("green").autoscaler is None
    clock.now += EXPIRY_SECONDS + 1  # never shown: the deletes are made again
    assert {a.slot for a in lagging_pass(world, writes).actions if isinstance(a, DeleteAutoscaler)} == {"blue", "green"}


def test_a_grpc_port_just_applied_is_not_applied_again_before_the_watch_shows_it():
    world, clock = World(), FakeClock()
    world.settle()
    writes = RecentWrites(clock=clock)
    world.change_spec(serving={"replicas": 2, "grpcPort": 9000})
    first = lagging_pass(world, writes, deliver=(ApplyDeployment, ScaleDeployment, ApplyDisruptionBudget))
    applied = sorted(a.body["metadata"]["name"] for a in first.actions if isinstance(a, CreateService))
    assert applied == ["credit", "credit-blue", "credit-green"]
    assert writes.overlay(world.observed()).service_grpc_ports == {name: 9000 for name in applied}

    clock.now += 1
    second = lagging_pass(world, writes, deliver=(ApplyDeployment, ScaleDeployment, ApplyDisruptionBudget))
    assert [a for a in second.actions if isinstance(a, CreateService)] == []  # not shown yet, still remembered

    for action in first.actions:  # the watch catches up: nothing is left to lay over
        if isinstance(action, CreateService):
            world.apply(action)
    assert writes.overlay(world.observed()).service_grpc_ports == world.observed().service_grpc_ports
    assert writes.grpc_ports == {}
