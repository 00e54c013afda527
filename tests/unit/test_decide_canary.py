"""The canary, step by step, and the traffic it reports: the split the endpoint selects at each step,
when the stable slot may shrink, the deadline of a step that does not get ready, one promote per wait,
the hand-over to analysis, and status.traffic / trafficSummary / TrafficSwitched as a user reads them."""

from __future__ import annotations

import pytest

from slotkeeper.actions import CreateService, EmitEvent, ScaleDeployment, SwitchTraffic
from slotkeeper.checks.verdicts import Verdict
from slotkeeper.decide import Gates
from slotkeeper.status_report import traffic_shares
from slotkeeper.observe import DeploymentSummary, Observed, SlotObservation, summarise_deployment
from slotkeeper.render import LABEL_SLOT, slot_selector

from .world import World, make_spec

NEW_URI = "file:///models/credit/2/model.joblib"
CANARY = {"canary": {"steps": [{"setWeight": 20}, {"pause": {"seconds": 30}}, {"setWeight": 60}, {"pause": {}}]}}
ERRORS = {"name": "errors", "source": "pods", "metric": "error_ratio", "max": 0.05, "intervalSeconds": 10,
          "inconclusiveLimit": 2}
LATENCY = {"name": "latency", "source": "pods", "metric": "latency_p95_seconds", "max": 0.5, "intervalSeconds": 10}
PASS = Verdict("Pass", 0.01, "error_ratio 0.01 is within max 0.05")
NO_DATA = Verdict("Inconclusive", None, "error_ratio: no data")


def progressing(world: World) -> tuple[str, str, str]:
    c = next(c for c in world.status.conditions if c.type == "Progressing")
    return c.status, c.reason, c.message


def canary_rollout(strategy=CANARY, replicas: int = 4, **spec) -> World:
    world = World(spec=make_spec(serving={"replicas": replicas}, strategy=strategy, **spec))
    world.settle()
    world.spec = make_spec(uri=NEW_URI, serving={"replicas": replicas}, strategy=strategy, **spec)
    world.generation += 1
    return world


def replicas(world: World, slot: str) -> int:
    return world.deployments[slot]["spec"]["replicas"]


def both_slots(world: World) -> bool:
    return LABEL_SLOT not in world.services["credit"]["spec"]["selector"]


# ------------------------------------------------------------------------------ traffic_shares


def observed(blue_ready: int, green_ready: int) -> Observed:
    return Observed(slots={slot: SlotObservation(DeploymentSummary(slot=slot, revision="r", replicas=4,
                                                                   ready_replicas=ready))
                           for slot, ready in (("blue", blue_ready), ("green", green_ready))},
                    endpoint_selector=None)


@pytest.mark.parametrize("selector, blue_ready, green_ready, shares", [
    (None, 2, 2, {"blue": 0, "green": 0}),  # no endpoint Service: no traffic
    ({}, 2, 2, {"blue": 0, "green": 0}),
    (slot_selector("credit", "blue"), 1, 3, {"blue": 100, "green": 0}),  # one ready pod is enough
    (slot_selector("credit", "blue"), 0, 3, {"blue": 0, "green": 0}),  # selected, but nothing ready
    (slot_selector("credit", "green"), 3, 1, {"blue": 0, "green": 100}),
    (slot_selector("credit", None), 0, 0, {"blue": 0, "green": 0}),  # both slots, nothing ready
    (slot_selector("credit", None), 1, 0, {"blue": 100, "green": 0}),
    (slot_selector("credit", None), 0, 1, {"blue": 0, "green": 100}),
    (slot_selector("credit", None), 3, 1, {"blue": 75, "green": 25}),
])
def test_traffic_shares_follow_the_selector_and_the_ready_pods_behind_it(selector, blue_ready, green_ready, shares):
    assert traffic_shares(selector, observed(blue_ready, green_ready)) == shares


def test_a_canary_split_is_reported_and_summarised_slot_by_slot():
    world = canary_rollout({"canary": {"steps": [{"setWeight": 1}, {"pause": {}}]}})
    world.settle()
    assert world.status.rollout.canary_step == 1 and both_slots(world)  # weight 1 is a split too
    assert world.status.traffic == {"blue": 80, "green": 20}  # 4 stable pods, 1 candidate pod
    assert world.status.traffic_summary == "blue 80%, green 20%"


def test_each_traffic_switch_is_announced_right_after_it_and_says_where_traffic_goes():
    world = canary_rollout({"canary": {"steps": [{"setWeight": 60}, {"pause": {}}]}})
    world.step()
    world.make_ready("green")
    world.single_step()  # into the canary: written first
    decision = world.single_step()
    (switch,) = [a for a in decision.actions if isinstance(a, SwitchTraffic)]
    at = decision.actions.index(switch)
    assert decision.actions[at + 1] == EmitEvent("Normal", "TrafficSwitched", "endpoint now selects every slot (canary)")
    world.settle()

    world.annotations["slotkeeper.io/abort"] = "a1"
    world.single_step()
    decision = world.single_step()  # traffic back to blue, then blue's replicas
    (switch,) = [a for a in decision.actions if isinstance(a, SwitchTraffic)]
    at = decision.actions.index(switch)
    assert decision.actions[at + 1] == EmitEvent("Normal", "TrafficSwitched", "endpoint now selects blue")
    assert ScaleDeployment(slot="blue", replicas=4) in decision.actions[at + 2:]


# ------------------------------------------------------------------------------ canary steps


def test_a_canary_step_that_does_not_get_ready_keeps_stable_at_full_size_then_reverts_at_its_deadline():
    world = canary_rollout()
    world.step()
    world.make_ready("green")
    world.step()
    world.advance(30)
    decision = world.step()  # step 3/4, setWeight 60: four candidate pods, only one ready
    revision = world.status.rollout.revision
    assert world.status.rollout.canary_step == 2
    assert world.status.rollout.step_started_at == "2026-11-21T12:00:30Z"
    assert summarise_deployment(world.deployments["green"]).revision == revision  # scaled, not re-rendered
    assert replicas(world, "green") == 4
    assert replicas(world, "blue") == 4  # stable shrinks only once the candidate's pods are ready
    assert progressing(world) == ("True", "Canary", "step 3/4: scaling for weight 60%")
    assert decision.requeue_after == 10

    world.advance(299)  # the deadline counts from the start of this step, not of the canary
    world.step()
    assert world.status.rollout is not None and replicas(world, "blue") == 4

    world.advance(1)
    decision = world.single_step()
    why = "canary step 3/4 (setWeight 60) was not ready within 300s"
    assert world.status.phase == "RolledBack" and world.status.failed_revision == revision
    rolled_back = next(c for c in world.status.conditions if c.type == "RolledBack")
    assert (rolled_back.status, rolled_back.reason, rolled_back.message) == ("True", "ProgressDeadlineExceeded", why)
    assert world.status.history[-1].reason == "ProgressDeadlineExceeded" and world.status.history[-1].message == why
    stable = world.status.stable_revision
    assert [a for a in decision.actions if isinstance(a, EmitEvent) and a.reason == "RolledBack"] == [
        EmitEvent("Warning", "RolledBack", f"reverted to revision {stable}: {why}")]


def test_stable_shrinks_for_a_weight_once_the_candidate_pods_for_it_are_ready():
    world = canary_rollout()
    world.step()
    world.make_ready("green")
    world.step()
    world.advance(30)
    world.step()
    world.make_ready("green")
    world.step()
    assert replicas(world, "blue") == 3
    world.make_ready("blue")
    world.step()
    assert world.status.rollout.canary_step == 3


def test_a_set_weight_100_step_sends_all_traffic_through_both_slots_without_shrinking_stable():
    strategy = {"canary": {"steps": [{"setWeight": 50}, {"setWeight": 100}, {"pause": {}}]}}
    world = canary_rollout(strategy)
    world.settle()
    assert world.status.rollout.canary_step == 2
    assert both_slots(world)
    assert replicas(world, "blue") == 4 and replicas(world, "green") == 4


def test_one_promote_skips_one_canary_pause():
    strategy = {"canary": {"steps": [{"setWeight": 20}, {"pause": {}}, {"pause": {}}, {"setWeight": 60}]}}
    world = canary_rollout(strategy)
    world.settle()
    assert progressing(world) == ("True", "AwaitingPromotion", "canary step 2/4 paused until promote")
    world.annotations["slotkeeper.io/promote"] = "p1"
    world.step()
    assert world.status.rollout.canary_step == 2
    assert progressing(world) == ("True", "AwaitingPromotion", "canary step 3/4 paused until promote")


def test_a_pending_check_does_not_hold_a_canary_step_only_the_end_of_analysis():
    world = canary_rollout(checks={"metrics": [ERRORS]})
    world.step()
    world.make_ready("green")
    world.step(Gates(verdicts={"errors": NO_DATA}))  # one inconclusive verdict: pending, not stalled
    assert world.status.rollout.canary_step == 1
    assert progressing(world) == ("True", "Canary", "canary step 2/4 paused until 2026-11-21T12:00:30Z")


def test_a_pause_ending_in_less_than_a_second_is_looked_at_when_it_ends():
    world = canary_rollout()
    world.step()
    world.make_ready("green")
    world.step()
    world.advance(29.5)
    decision = world.step()
    assert world.status.rollout.canary_step == 1 and decision.requeue_after == 0.5


def test_a_retried_revision_starts_its_checks_afresh():
    checks = {"metrics": [ERRORS]}
    world = World(spec=make_spec(checks=checks))
    world.settle()
    world.spec = make_spec(uri=NEW_URI, checks=checks)
    world.generation += 1
    world.step()
    world.make_ready("green")
    world.step(Gates(verdicts={"errors": Verdict("Fail", 0.5, "error_ratio 0.5 is above max 0.05")}))
    assert world.status.phase == "RolledBack" and world.status.history[-1].reason == "CheckFailed"

    world.annotations["slotkeeper.io/retry"] = "t1"
    world.single_step()
    assert world.status.phase == "Progressing" and world.status.rollout.step == "Deploying"
    assert world.status.checks == []


# ----------------------------------------------------------------------- hand-over to analysis


def test_after_a_canary_of_pauses_a_candidate_short_of_pods_gets_no_traffic():
    world = canary_rollout({"canary": {"steps": [{"pause": {"seconds": 10}}]}})
    world.step()
    world.make_ready("green")
    world.step()
    world.advance(10)
    world.make_ready("green", ready=3)  # lost a pod during the pause
    world.step()
    assert world.status.rollout.step == "Analysing"
    assert world.selected_slot() == "blue"
    assert progressing(world) == ("True", "Analysing", "scaling slot green to full size")


def test_the_last_canary_split_holds_while_the_candidate_grows_even_if_the_service_was_deleted():
    world = canary_rollout({"canary": {"steps": [{"setWeight": 1}]}})
    world.step()
    world.make_ready("green")
    world.step()
    assert world.status.rollout.step == "Analysing" and replicas(world, "green") == 4
    del world.services["credit"]
    world.step()
    assert both_slots(world)


def test_an_endpoint_service_recreated_during_analysis_counts_as_a_switch():
    checks = {"analysisSeconds": 60}
    world = World(spec=make_spec(checks=checks))
    world.settle()
    world.spec = make_spec(uri=NEW_URI, checks=checks)
    world.generation += 1
    world.step()
    world.make_ready("green")
    world.step()
    assert world.selected_slot() == "green"
    world.advance(61)
    del world.services["credit"]
    decision = world.single_step()
    assert [a.body["spec"]["selector"][LABEL_SLOT] for a in decision.actions
            if isinstance(a, CreateService) and a.body["metadata"]["name"] == "credit"] == ["green"]
    assert world.status.rollout is not None  # analysis counts from when traffic really moved
    assert progressing(world) == ("True", "Analysing", "switching traffic to slot green")
    assert decision.requeue_after == 0


# ---------------------------------------------------------------------------------- checks order


def test_status_checks_follow_the_spec_order_and_a_removed_check_comes_last():
    checks = {"metrics": [ERRORS, LATENCY]}
    world = World(spec=make_spec(checks=checks))
    world.settle()
    world.spec = make_spec(uri=NEW_URI, checks=checks)
    world.generation += 1
    world.step()
    world.make_ready("green")
    world.single_step(Gates(verdicts={"latency": Verdict("Pass", 0.1, "ok")}))
    world.single_step(Gates(verdicts={"errors": PASS}))
    assert [c.name for c in world.status.checks] == ["errors", "latency"]

    world.spec = make_spec(uri=NEW_URI, checks={"metrics": [LATENCY]})  # same revision: checks are not part of it
    world.generation += 1
    world.single_step()
    assert [c.name for c in world.status.checks] == ["latency", "errors"]


# --------------------------------------------------------------------------- reverts, idle slot


def test_a_revert_brings_a_stable_slot_scaled_down_by_hand_back_at_once():
    world = World()
    world.settle()
    world.spec = make_spec(uri=NEW_URI)
    world.generation += 1
    world.step()
    world.deployments["blue"]["spec"]["replicas"] = 1  # kubectl scale
    world.crash("green")
    decision = world.single_step()
    assert world.status.phase == "RolledBack"
    assert ScaleDeployment(slot="blue", replicas=2) in decision.actions


def test_the_old_slot_stays_at_full_size_until_its_scale_down_is_due():
    world = World(spec=make_spec(checks={"analysisSeconds": 0}))
    world.settle()
    world.spec = make_spec(uri=NEW_URI, checks={"analysisSeconds": 0})
    world.generation += 1
    world.settle()
    assert world.status.active_slot == "green" and world.status.scale_down.slot == "blue"
    world.deployments["blue"]["spec"]["replicas"] = 0  # kubectl scale
    decision = world.step()
    assert ScaleDeployment(slot="blue", replicas=2) in decision.actions
    assert decision.requeue_after == 60
    world.advance(60)
    world.step()
    assert replicas(world, "blue") == 0 and world.status.scale_down is None
