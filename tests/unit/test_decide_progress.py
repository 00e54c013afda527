"""What a person reads while a rollout waits: the Progressing condition (status, reason, message),
the phase and when the operator looks again, at each point where a rollout can wait; and the status
and Events a promotion or a revert leaves behind."""

from __future__ import annotations

from slotkeeper.actions import EmitEvent, ScaleDeployment, SwitchTraffic
from slotkeeper.checks.verdicts import Verdict
from slotkeeper.decide import Gates
from slotkeeper.render import LABEL_SLOT

from .world import World, make_spec

NEW_URI = "file:///models/credit/2/model.joblib"
NEWER_URI = "file:///models/credit/3/model.joblib"
SMOKE = {"name": "smoke", "request": {"inputs": []}, "expect": {"status": 200}}
ERRORS = {"name": "errors", "source": "pods", "metric": "error_ratio", "max": 0.05, "intervalSeconds": 10,
          "inconclusiveLimit": 2}
LATENCY = {"name": "latency", "source": "pods", "metric": "latency_p95_seconds", "max": 0.5, "intervalSeconds": 10}
PASS = Verdict("Pass", 0.01, "error_ratio 0.01 is within max 0.05")
NO_DATA = Verdict("Inconclusive", None, "error_ratio: no data")


def progressing(world: World) -> tuple[str, str, str]:
    c = next(c for c in world.status.conditions if c.type == "Progressing")
    return c.status, c.reason, c.message


def events(decision, reason: str | None = None) -> list[EmitEvent]:
    return [a for a in decision.actions if isinstance(a, EmitEvent) and (reason is None or a.reason == reason)]


def deployed(**spec) -> World:
    world = World(spec=make_spec(**spec))
    world.settle()
    return world


def new_revision(world: World, uri: str = NEW_URI, **spec) -> None:
    world.spec = make_spec(uri=uri, **spec)
    world.generation += 1


def candidate_revision(world: World) -> str:
    return world.status.rollout.revision


# -------------------------------------------------------------------------------- blue/green waits


def test_validation_waits_say_what_they_wait_for_and_look_again_at_once():
    checks = {"validation": [SMOKE], "metrics": [ERRORS, LATENCY], "analysisSeconds": 60}
    world = deployed(checks=checks)
    new_revision(world, checks=checks)
    world.step()
    world.make_ready("green")

    decision = world.single_step()  # ready: the validation requests are due
    assert world.status.rollout.step == "Validating"
    assert progressing(world) == ("True", "Validating", "sending validation requests to slot green")
    assert decision.requeue_after == 0

    decision = world.single_step(Gates(validation=(True, 'validation "smoke": status 200 as expected')))
    assert world.status.rollout.step == "Validating" and world.status.rollout.validated is True
    assert progressing(world) == ("True", "Validating", "running metric checks: errors, latency")
    assert decision.requeue_after == 0
    assert events(decision, "RolloutStarted") == []

    world.single_step(Gates(verdicts={"errors": PASS}))
    assert progressing(world) == ("True", "Validating", "running metric checks: latency")

    world.single_step(Gates(verdicts={"latency": Verdict("Pass", 0.1, "latency_p95_seconds 0.1 is within max 0.5")}))
    assert world.status.rollout.step == "Analysing"


def test_analysis_switches_looks_again_at_once_then_says_until_when():
    world = deployed(checks={"analysisSeconds": 60})
    new_revision(world, checks={"analysisSeconds": 60})
    world.step()
    world.make_ready("green")
    world.advance(5)

    decision = world.single_step()  # ready: straight to Analysing, the switch is written ahead
    assert world.status.rollout.step == "Analysing"
    assert world.status.rollout.step_started_at == "2026-11-21T12:00:05Z"
    assert decision.requeue_after == 0

    decision = world.single_step()  # the switch itself
    assert [a.selector[LABEL_SLOT] for a in decision.actions if isinstance(a, SwitchTraffic)] == ["green"]
    assert progressing(world) == ("True", "Analysing", "switching traffic to slot green")
    assert decision.requeue_after == 0

    decision = world.single_step()
    revision = candidate_revision(world)
    assert progressing(world) == ("True", "Analysing",
                                  f"revision {revision} takes traffic; analysis until 2026-11-21T12:01:05Z")
    assert decision.requeue_after == 60


def test_at_the_end_of_analysis_pending_checks_keep_it_going_and_say_which():
    checks = {"metrics": [ERRORS], "analysisSeconds": 30}
    world = deployed(checks=checks)
    new_revision(world, checks=checks)
    world.step()
    world.make_ready("green")
    world.step()
    world.step(Gates(verdicts={"errors": NO_DATA}))
    world.advance(31)

    world.single_step()

    assert world.status.rollout is not None and world.status.phase == "Progressing"
    assert progressing(world) == ("True", "Analysing", 'waiting for a passing verdict from "errors" (Inconclusive)')


def test_promotion_clears_the_candidate_and_the_old_failure_and_schedules_the_scale_down():
    world = deployed()
    old_stable = world.status.stable_revision
    new_revision(world)
    world.step()
    world.crash("green")
    world.step()
    assert world.status.failed_revision is not None
    world.pods.clear()

    new_revision(world, uri=NEWER_URI, checks={"analysisSeconds": 0})
    world.step()
    world.make_ready("green")
    decision = world.step()

    status = world.status
    assert status.stable_revision != old_stable and status.active_slot == "green"
    assert (status.candidate_revision, status.candidate_slot) == (None, None)
    assert (status.failed_revision, status.failed_generation) == (None, None)
    assert status.scale_down.slot == "blue" and status.scale_down.revision == old_stable
    assert status.scale_down.at == "2026-11-21T12:01:00Z"  # blueGreen's default scaleDownDelaySeconds: 60
    (promoted,) = events(decision, "Promoted")
    assert promoted.type == "Normal"
    assert promoted.message == f"revision {status.stable_revision} is stable in slot green"
    assert decision.requeue_after == 60  # the old slot is scaled down on time, event or not


def test_a_promote_during_analysis_promotes_at_once_and_history_says_so():
    world = deployed(checks={"analysisSeconds": 600})
    new_revision(world, checks={"analysisSeconds": 600})
    world.step()
    world.make_ready("green")
    world.step()
    assert world.status.rollout.step == "Analysing" and world.selected_slot() == "green"

    world.annotations["slotkeeper.io/promote"] = "now"
    world.step()

    assert world.status.phase == "Healthy" and world.status.rollout is None
    assert world.status.history[-1].reason == "PromotedManually"


# --------------------------------------------------------------------------------------- reverts


def test_a_second_rollout_that_fails_goes_back_to_the_stable_slot_green():
    world = deployed(checks={"analysisSeconds": 0})
    new_revision(world, checks={"analysisSeconds": 0})
    world.settle()
    assert world.status.active_slot == "green"

    new_revision(world, uri=NEWER_URI, checks={"analysisSeconds": 0})
    world.step()
    assert world.status.rollout.slot == "blue"
    world.make_ready("blue")
    world.crash("blue")
    decision = world.single_step()

    assert world.selected_slot() == "green"
    assert world.status.phase == "RolledBack"
    ready = next(c for c in world.status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("True", "StableRevisionServing")
    assert ready.message.endswith("ready in slot green")
    (rolled_back,) = events(decision, "RolledBack")
    assert rolled_back.message.startswith(f"reverted to revision {world.status.stable_revision}: revision ")


def test_an_aborted_canary_is_announced_then_traffic_and_the_stable_slot_go_back():
    canary = {"canary": {"steps": [{"setWeight": 60}, {"pause": {}}]}}
    world = deployed(serving={"replicas": 4}, strategy=canary)
    new_revision(world, serving={"replicas": 4}, strategy=canary)
    world.settle()
    assert world.deployments["blue"]["spec"]["replicas"] == 3  # shrunk for weight 60

    world.annotations["slotkeeper.io/abort"] = "a1"
    decision = world.single_step()  # the revert is written to status first...
    assert world.status.phase == "RolledBack"
    assert [e.message for e in events(decision, "ManualAction")] == ["abort requested"]
    assert events(decision, "RolledBack")
    assert decision.requeue_after == 0

    decision = world.single_step()  # ...then carried out: traffic back first, then the replicas
    changes = [a for a in decision.actions if not isinstance(a, EmitEvent)]
    assert isinstance(changes[0], SwitchTraffic) and changes[0].selector[LABEL_SLOT] == "blue"
    assert ScaleDeployment(slot="blue", replicas=4) in changes[1:]


def test_a_failed_slot_scaled_by_hand_is_brought_back_to_its_inspection_size():
    world = deployed()
    new_revision(world)
    world.step()
    world.crash("green")
    world.step()
    assert world.deployments["green"]["spec"]["replicas"] == 1  # failedSlotReplicas

    world.deployments["green"]["spec"]["replicas"] = 5  # kubectl scale
    decision = world.step()
    assert ScaleDeployment(slot="green", replicas=1) in decision.actions


# ----------------------------------------------------------------------------------------- pauses


def test_a_paused_spec_says_so():
    world = deployed()
    new_revision(world, paused=True)
    world.step()
    assert world.status.phase == "Paused"
    assert progressing(world) == ("False", "Paused", "spec.paused is true")


def test_the_pause_action_says_how_to_continue():
    world = deployed()
    world.annotations["slotkeeper.io/pause"] = "p1"
    new_revision(world)
    world.step()
    assert world.status.phase == "Paused"
    assert progressing(world) == ("False", "Paused", "paused by the pause action; resume to continue")


# ----------------------------------------------------------------------------------------- canary


CANARY = {"canary": {"steps": [{"setWeight": 20}, {"pause": {"seconds": 30}}, {"setWeight": 60}, {"pause": {}}]}}


def canary_rollout(strategy=CANARY, replicas: int = 4, **spec) -> World:
    world = deployed(serving={"replicas": replicas}, strategy=strategy, **spec)
    new_revision(world, serving={"replicas": replicas}, strategy=strategy, **spec)
    return world


def test_each_canary_wait_says_what_it_waits_for():
    world = canary_rollout()
    world.step()
    world.make_ready("green")
    world.step()
    assert world.status.rollout.canary_step == 1
    assert progressing(world) == ("True", "Canary", "canary step 2/4 paused until 2026-11-21T12:00:30Z")
    # The pause keeps the weight of the step before it: one candidate pod, four stable ones.
    assert world.deployments["green"]["spec"]["replicas"] == 1
    assert world.deployments["blue"]["spec"]["replicas"] == 4

    world.advance(30)
    world.step()  # setWeight 60: four candidate pods, not ready yet
    assert world.deployments["green"]["spec"]["replicas"] == 4
    assert progressing(world) == ("True", "Canary", "step 3/4: scaling for weight 60%")

    world.settle()
    assert world.status.phase == "Paused"
    assert progressing(world) == ("True", "AwaitingPromotion", "canary step 4/4 paused until promote")


def test_a_canary_that_starts_with_a_pause_keeps_traffic_on_stable_meanwhile():
    strategy = {"canary": {"steps": [{"pause": {"seconds": 60}}, {"setWeight": 50}]}}
    world = canary_rollout(strategy)
    world.step()
    world.make_ready("green")
    world.step()
    assert world.status.rollout.step == "Canary"
    assert world.selected_slot() == "blue"
    assert progressing(world) == ("True", "Canary", "canary step 1/2 paused until 2026-11-21T12:01:00Z")


def test_a_canary_of_pauses_only_deploys_the_candidate_at_full_size():
    strategy = {"canary": {"steps": [{"pause": {"seconds": 10}}]}}
    world = canary_rollout(strategy)
    world.step()
    assert world.deployments["green"]["spec"]["replicas"] == 4


def test_a_candidate_that_lost_a_pod_while_validating_gets_no_traffic_until_ready_again():
    world = deployed(checks={"validation": [SMOKE]})
    new_revision(world, checks={"validation": [SMOKE]})
    world.step()
    world.make_ready("green")
    world.step()
    assert world.status.rollout.step == "Validating"
    world.make_ready("green", ready=1)  # one of two pods went unready meanwhile

    decision = world.single_step(Gates(validation=(True, "ok")))

    assert world.status.rollout.step == "Analysing" and world.selected_slot() == "blue"
    assert progressing(world) == ("True", "Analysing", "scaling slot green to full size")
    assert decision.requeue_after == 10


def test_after_the_canary_steps_traffic_moves_to_the_candidate_alone_only_at_full_size():
    strategy = {"canary": {"steps": [{"setWeight": 20}]}}
    world = canary_rollout(strategy)
    world.step()
    world.make_ready("green")  # the one pod of weight 20 is ready
    world.step()
    assert world.status.rollout.step == "Analysing"
    assert world.deployments["green"]["spec"]["replicas"] == 4
    assert LABEL_SLOT not in world.services["credit"]["spec"]["selector"]  # still both slots: 1 of 4 pods ready
    assert progressing(world) == ("True", "Analysing", "scaling slot green to full size")
    world.make_ready("green")
    world.step()
    assert world.selected_slot() == "green"


def test_promote_lifts_a_canary_stalled_on_inconclusive_checks():
    checks = {"metrics": [ERRORS]}
    world = canary_rollout(checks=checks)
    world.step()
    world.make_ready("green")
    world.step(Gates(verdicts={"errors": NO_DATA}))
    assert world.status.rollout.step == "Canary"
    world.advance(10)
    world.step(Gates(verdicts={"errors": NO_DATA}))
    assert world.status.phase == "Paused"
    assert progressing(world) == ("False", "ChecksInconclusive",
                                  'check "errors" inconclusive 2 time(s) in a row: error_ratio: no data; '
                                  "promote or abort to decide")
    step = world.status.rollout.canary_step

    world.annotations["slotkeeper.io/promote"] = "go"
    world.step()
    assert world.status.rollout.canary_step > step


def test_step_started_at_moves_with_each_step():
    world = canary_rollout()
    world.step()
    world.make_ready("green")
    world.advance(40)
    world.step()
    assert world.status.rollout.step == "Canary"
    assert world.status.rollout.started_at == "2026-11-21T12:00:00Z"
    assert world.status.rollout.step_started_at == "2026-11-21T12:00:40Z"
