"""Decision tables for validation, metric checks, canary steps and manual actions."""

from __future__ import annotations

from slotkeeper.actions import EmitEvent, SwitchTraffic
from slotkeeper.checks.verdicts import Verdict
from slotkeeper.decide import Gates
from slotkeeper.render import LABEL_SLOT

from .world import World, make_spec

NEW_URI = "file:///models/credit/2/model.joblib"
ERRORS = {"name": "errors", "source": "pods", "metric": "error_ratio", "max": 0.05, "intervalSeconds": 10,
          "failureLimit": 2, "inconclusiveLimit": 3}
SMOKE = {"name": "smoke", "request": {"inputs": []}, "expect": {"status": 200}}
PASS = Verdict("Pass", 0.01, "error_ratio 0.01 is within max 0.05")
FAIL = Verdict("Fail", 0.2, "error_ratio 0.2 is above max 0.05")
NO_DATA = Verdict("Inconclusive", None, "no data")


def deployed(**spec) -> World:
    world = World(spec=make_spec(**spec))
    world.settle()
    return world


def start_rollout(world: World, **spec) -> None:
    world.change_spec(uri=NEW_URI, **spec)
    world.step()
    world.make_ready("green")


def condition(world: World, type: str):
    return next(c for c in world.status.conditions if c.type == type)


def first_change(decision):
    """The first action that changes an object (Events aside)."""
    return next(a for a in decision.actions if not isinstance(a, EmitEvent))


# ------------------------------------------------------------------------------ validation


def test_validation_runs_before_any_traffic_and_its_failure_reverts():
    world = deployed(checks={"validation": [SMOKE]})
    start_rollout(world, checks={"validation": [SMOKE]})
    decision = world.step()
    assert world.status.rollout.step == "Validating"
    assert decision.requeue_after == 0  # the cluster layer sends the requests on the next pass
    assert world.selected_slot() == "blue"

    world.step(Gates(validation=(False, 'validation "smoke": expected status 200, got 500')))
    assert world.status.phase == "RolledBack"
    assert condition(world, "RolledBack").reason == "ValidationFailed"
    assert "expected status 200, got 500" in condition(world, "RolledBack").message
    assert world.selected_slot() == "blue"
    assert world.switches == 1  # only the first selection of blue: the candidate never had traffic


def test_validation_passes_then_traffic_switches():
    world = deployed(checks={"validation": [SMOKE]})
    start_rollout(world, checks={"validation": [SMOKE]})
    world.step()
    world.step(Gates(validation=(True, "ok")))
    assert world.status.rollout.validated is True
    assert world.status.rollout.step == "Analysing"
    assert world.selected_slot() == "green"


# ------------------------------------------------------------------------------ metric checks


def analysing_with_checks(**extra) -> World:
    checks = {"metrics": [ERRORS], "analysisSeconds": 60, **extra}
    world = deployed(checks=checks)
    start_rollout(world, checks=checks)
    world.step()  # ready -> Validating, waiting for a first round of checks
    world.step(Gates(verdicts={"errors": NO_DATA}))  # before traffic: no data is not a failure
    assert world.status.rollout.step == "Analysing"
    return world


def test_check_failing_failure_limit_times_reverts_naming_check_and_value():
    world = analysing_with_checks()
    world.advance(10)
    world.step(Gates(verdicts={"errors": FAIL}))
    assert world.status.rollout is not None  # one failure of failureLimit 2
    world.advance(10)
    decision = world.step(Gates(verdicts={"errors": FAIL}))

    assert isinstance(first_change(decision), SwitchTraffic)
    assert world.selected_slot() == "blue"
    rolled_back = condition(world, "RolledBack")
    assert rolled_back.reason == "CheckFailed"
    assert 'check "errors"' in rolled_back.message and "0.2" in rolled_back.message
    (check,) = world.status.checks
    assert (check.name, check.verdict, check.last_value, check.consecutive_failures) == ("errors", "Fail", 0.2, 2)


def test_pass_between_failures_resets_the_streak():
    world = analysing_with_checks()
    for verdict in (FAIL, PASS, FAIL):
        world.advance(10)
        world.step(Gates(verdicts={"errors": verdict}))
    assert world.status.phase == "Progressing"


def test_checks_wake_the_loop_when_due():
    world = analysing_with_checks()
    world.advance(3)
    decision = world.step()
    assert decision.requeue_after == 7  # the check ran at t0 and runs every 10 s


def test_analysis_does_not_promote_on_inconclusive_and_stalls_after_limit():
    world = analysing_with_checks()
    world.advance(61)
    world.step()
    assert world.status.rollout is not None  # latest verdict is Inconclusive: no blind promotion
    for _ in range(2):
        world.advance(10)
        world.step(Gates(verdicts={"errors": NO_DATA}))
    assert world.status.phase == "Paused"
    assert condition(world, "Progressing").reason == "ChecksInconclusive"
    world.advance(10)
    world.step(Gates(verdicts={"errors": PASS}))
    assert world.status.phase == "Healthy"
    assert world.status.history[-1].outcome == "Promoted"


def test_analysis_promotes_when_every_check_passes():
    world = analysing_with_checks()
    world.advance(10)
    world.step(Gates(verdicts={"errors": PASS}))
    world.advance(51)
    world.step()
    assert world.status.stable_revision == world.status.history[-1].revision
    assert world.status.active_slot == "green"


# ------------------------------------------------------------------------------ canary

CANARY = {"canary": {"steps": [{"setWeight": 20}, {"pause": {"seconds": 30}}, {"setWeight": 60}, {"pause": {}}]}}


def canary_world(replicas: int = 4) -> World:
    world = World(spec=make_spec(serving={"replicas": replicas}, strategy=CANARY))
    world.settle()
    world.spec = make_spec(uri=NEW_URI, serving={"replicas": replicas}, strategy=CANARY)
    world.generation += 1
    return world


def test_canary_first_weight_selects_both_slots_and_reports_actual_share():
    world = canary_world()
    world.step()
    assert world.deployments["green"]["spec"]["replicas"] == 1  # 4 stable + 1 candidate = 20 %
    world.make_ready("green")
    world.step()
    world.step()
    assert world.status.rollout.step == "Canary"
    assert LABEL_SLOT not in world.services["credit"]["spec"]["selector"]
    assert world.status.traffic == {"blue": 80, "green": 20}


def test_canary_walks_steps_pauses_and_waits_for_promote():
    world = canary_world()
    world.settle()
    assert world.status.rollout.canary_step == 1  # paused 30 s
    world.advance(30)
    world.settle()
    # setWeight 60 with 4 replicas: candidate 4, stable shrinks to 3 once the candidate is ready
    assert world.deployments["green"]["spec"]["replicas"] == 4
    assert world.deployments["blue"]["spec"]["replicas"] == 3
    assert world.status.traffic == {"blue": 43, "green": 57}
    assert world.status.phase == "Paused"  # the indefinite pause
    assert condition(world, "Progressing").reason == "AwaitingPromotion"

    world.annotations["slotkeeper.io/promote"] = "t1"
    world.settle()
    assert world.selected_slot() == "green"
    assert world.deployments["blue"]["spec"]["replicas"] == 4  # full size again before the switch
    assert world.status.rollout.step == "Analysing"


def test_canary_revert_restores_stable_only_selector_before_replicas():
    world = canary_world()
    world.settle()
    world.advance(30)
    world.settle()
    world.crash("green")
    decision = world.step()
    assert isinstance(first_change(decision), SwitchTraffic)
    assert first_change(decision).selector[LABEL_SLOT] == "blue"
    assert world.deployments["blue"]["spec"]["replicas"] == 4
    assert world.status.phase == "RolledBack"


# ------------------------------------------------------------------------------ manual actions


def test_abort_reverts_once_per_token():
    world = deployed()
    start_rollout(world)
    world.step()
    world.annotations["slotkeeper.io/abort"] = "2026-11-21T12:00:00Z"
    world.step()
    assert world.status.phase == "RolledBack"
    assert condition(world, "RolledBack").reason == "Aborted"
    assert world.status.handled_actions == {"abort": "2026-11-21T12:00:00Z"}
    events = len(world.events)
    world.step()
    assert len(world.events) == events  # the same token is not acted on again


def test_retry_gives_a_reverted_revision_another_try_without_a_spec_change():
    world = deployed()
    start_rollout(world)
    world.crash("green")
    world.step()
    world.pods.clear()
    assert world.status.phase == "RolledBack"
    world.annotations["slotkeeper.io/retry"] = "1"
    world.step()
    assert world.status.phase == "Progressing"
    assert world.status.rollout.revision == world.status.candidate_revision


def test_manual_promotion_with_blue_green():
    world = deployed()
    start_rollout(world, strategy={"blueGreen": {"autoPromote": False}})
    world.step()
    assert world.status.rollout.step == "AwaitingPromotion"
    world.annotations["slotkeeper.io/promote"] = "a"
    world.step()
    assert world.selected_slot() == "green"
    world.step()
    assert world.status.rollout.step == "Analysing"  # the token was spent on the switch


def test_pause_holds_progress_and_resume_continues():
    world = deployed()
    world.annotations["slotkeeper.io/pause"] = "p1"
    world.change_spec(uri=NEW_URI)
    world.step()
    assert world.status.phase == "Paused"
    assert "green" not in world.deployments  # a paused endpoint starts no rollout
    world.annotations["slotkeeper.io/resume"] = "r1"
    world.step()
    assert world.status.manual_pause is False
    world.make_ready("green")
    world.step()
    assert world.selected_slot() == "green"


def test_pause_does_not_hold_back_a_revert():
    world = deployed()
    start_rollout(world)
    world.step()
    world.annotations["slotkeeper.io/pause"] = "p1"
    world.step()
    world.crash("green")
    world.step()
    assert world.status.phase == "RolledBack"
    assert world.selected_slot() == "blue"
