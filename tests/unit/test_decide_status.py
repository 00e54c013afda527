"""What status says at each outcome, whole: every condition (status, reason, message, as kubectl, Argo CD
and kstatus tools read them), the history entry and the Events; for a first revision that serves or
fails, an endpoint that loses its pods, a superseded or cancelled rollout, manual actions."""

from __future__ import annotations

from slotkeeper.actions import EmitEvent
from slotkeeper.api import HistoryEntry

from .world import World, make_spec

FIRST_URI = "file:///models/credit/1/model.joblib"
NEW_URI = "file:///models/credit/2/model.joblib"
NEWER_URI = "file:///models/credit/3/model.joblib"
NOW = "2026-11-21T12:00:00Z"


def conditions(world: World) -> dict[str, tuple[str, str, str]]:
    return {c.type: (c.status, c.reason, c.message) for c in world.status.conditions}


def events(decision, reason: str | None = None) -> list[EmitEvent]:
    return [a for a in decision.actions if isinstance(a, EmitEvent) and (reason is None or a.reason == reason)]


def healthy(**spec) -> World:
    world = World(spec=make_spec(**spec))
    world.settle()
    return world


def new_revision(world: World, uri: str = NEW_URI, **spec) -> None:
    world.spec = make_spec(uri=uri, **spec)
    world.generation += 1


# --------------------------------------------------------------------------------- first revision


def test_a_first_revision_that_serves_says_so_everywhere():
    world = World()
    world.step()
    world.make_ready("blue")
    decision = world.step()

    revision = world.status.stable_revision
    assert world.status.stable_model_uri == FIRST_URI
    assert (world.status.rollout, world.status.candidate_revision, world.status.candidate_slot) == (None, None, None)
    assert conditions(world) == {
        "Ready": ("True", "StableRevisionServing", f"revision {revision}: 2 ready in slot blue"),
        "Progressing": ("False", "RolloutComplete", f"revision {revision} serves from slot blue"),
        "Degraded": ("False", "StableRevisionServing", "slot blue has ready replicas"),
        "RolledBack": ("False", "RolloutComplete", f"revision {revision} serves from slot blue"),
        "Reconciling": ("False", "Healthy", "phase Healthy"),
        "Stalled": ("False", "Healthy", "phase Healthy"),
    }
    assert world.status.history == [HistoryEntry(revision=revision, model_uri=FIRST_URI, outcome="Promoted",
                                                 reason="FirstRevision", message="serving from slot blue", time=NOW)]
    assert events(decision, "Promoted") == [
        EmitEvent("Normal", "Promoted", f"revision {revision} is ready and serves from slot blue")]
    assert events(decision, "TrafficSwitched") == [EmitEvent("Normal", "TrafficSwitched", "endpoint now selects blue")]


def test_a_first_revision_under_way_is_reconciling_and_announced():
    world = World()
    decision = world.step()
    revision = world.status.candidate_revision
    assert events(decision) == [EmitEvent("Normal", "RolloutStarted", f"rolling out revision {revision} into slot blue")]
    assert conditions(world)["Reconciling"] == ("True", "Progressing", "phase Progressing")
    assert conditions(world)["Stalled"] == ("False", "Progressing", "phase Progressing")


def test_a_first_revision_that_fails_says_nothing_serves_and_there_is_nothing_to_revert_to():
    world = World()
    world.step()
    revision = world.status.candidate_revision
    world.crash("blue")
    decision = world.step()

    why = f"revision {revision} in slot blue: pod credit-blue-abc: CrashLoopBackOff: back-off restarting failed container"
    status = world.status
    assert status.phase == "Degraded"
    assert (status.rollout, status.candidate_revision, status.candidate_slot) == (None, None, None)
    assert (status.failed_revision, status.failed_generation, status.stable_revision) == (revision, 1, None)
    assert conditions(world) == {
        "Ready": ("False", "PodFailure", f"no revision is serving: {why}"),
        "Progressing": ("False", "PodFailure", why),
        "Degraded": ("True", "PodFailure", why),
        "RolledBack": ("False", "NoStableRevision", "there is no earlier revision to revert to"),
        "Reconciling": ("False", "Degraded", "phase Degraded"),
        "Stalled": ("True", "PodFailure", "phase Degraded"),
    }
    assert status.history == [HistoryEntry(revision=revision, model_uri=FIRST_URI, outcome="RolledBack",
                                           reason="PodFailure", message=why, time=NOW)]
    assert events(decision) == [
        EmitEvent("Warning", "PodFailure", f"revision {revision} failed and nothing serves yet: {why}")]


def test_after_a_failed_first_revision_the_endpoint_keeps_selecting_nothing():
    world = World()
    world.step()
    world.crash("blue")
    world.step()
    for _ in range(3):
        world.make_ready("blue")  # even if the failed slot's pod comes up, it gets no traffic
        decision = world.step()
    assert world.selected_slot() == "none"
    assert world.status.phase == "Degraded" and world.status.stable_revision is None
    assert events(decision) == []


def test_a_first_revision_not_ready_in_time_says_how_many_pods_were():
    world = World()
    world.step()
    revision = world.status.candidate_revision
    world.make_ready("blue", ready=1)
    world.advance(300)  # progressDeadlineSeconds, to the second
    world.step()
    why = f"revision {revision} in slot blue was not ready within 300s (1/2 ready)"
    assert world.status.phase == "Degraded"
    assert conditions(world)["Degraded"] == ("True", "ProgressDeadlineExceeded", why)
    assert world.status.history[-1].reason == "ProgressDeadlineExceeded"


def test_a_fixed_first_revision_after_a_failed_one_clears_the_failure_when_it_serves():
    world = World()
    world.step()
    world.crash("blue")
    world.step()
    world.pods.clear()
    world.change_spec(model={"name": "credit", "uri": NEW_URI})
    world.step()
    # Under way again: reconciling, not stalled, whatever Degraded still says of the failed one.
    assert conditions(world)["Degraded"][:2] == ("True", "PodFailure")
    assert conditions(world)["Reconciling"] == ("True", "Progressing", "phase Progressing")
    assert conditions(world)["Stalled"] == ("False", "Progressing", "phase Progressing")
    world.make_ready("blue")
    world.step()
    assert world.status.phase == "Healthy" and world.selected_slot() == "blue"
    assert (world.status.failed_revision, world.status.failed_generation) == (None, None)
    assert conditions(world)["Degraded"] == ("False", "StableRevisionServing", "slot blue has ready replicas")


def test_a_first_revision_ready_late_is_still_promoted():
    world = World()
    world.step()
    world.advance(301)
    world.make_ready("blue")  # ready, though observed only after the deadline
    world.step()
    assert world.status.phase == "Healthy" and world.selected_slot() == "blue"


def test_a_first_revision_replaced_before_it_was_ready_is_recorded_as_superseded():
    world = World()
    world.step()
    first = world.status.candidate_revision
    world.change_spec(model={"name": "credit", "uri": NEW_URI})
    decision = world.step()
    second = world.status.candidate_revision
    assert second != first and world.status.rollout.slot == "blue"
    assert world.status.history == [HistoryEntry(revision=first, model_uri=FIRST_URI, outcome="Superseded",
                                                 reason="NewRevision",
                                                 message=f"replaced by revision {second} before it was ready",
                                                 time=NOW)]
    assert events(decision, "RolloutStarted") == [
        EmitEvent("Normal", "RolloutStarted", f"rolling out revision {second} into slot blue")]


def test_a_first_revision_created_paused_deploys_nothing_and_selects_nothing():
    world = World(spec=make_spec(paused=True))
    decision = world.step()
    assert world.deployments == {} and world.selected_slot() == "none"
    assert world.status.phase == "Paused"
    assert conditions(world)["Progressing"] == ("False", "Paused", "spec.paused is true")
    assert events(decision) == []


def test_pausing_a_first_rollout_under_way_still_lets_it_serve_when_ready():
    world = World()
    world.step()
    world.change_spec(paused=True)  # same revision
    world.make_ready("blue")
    world.step()
    assert world.status.phase == "Healthy" and world.selected_slot() == "blue"


def test_the_endpoint_service_deleted_while_the_first_revision_deploys_comes_back_selecting_it():
    world = World()
    world.step()
    del world.services["credit"]
    world.make_ready("blue")
    world.step()
    assert world.selected_slot() == "blue" and world.status.phase == "Healthy"


# ------------------------------------------------------------------------------ losing every pod


def test_a_healthy_endpoint_whose_pods_all_go_unready_is_degraded_and_stalled_then_recovers():
    world = healthy()
    revision = world.status.stable_revision
    world.make_ready("blue", ready=0)
    world.step()
    message = f"slot blue (revision {revision}) has no ready replica"
    assert world.status.phase == "Degraded"
    assert world.status.traffic == {"blue": 0, "green": 0} and world.status.traffic_summary is None
    assert conditions(world) == {
        "Ready": ("False", "NoReadyReplicas", message),
        "Progressing": ("False", "RolloutComplete", f"revision {revision} serves from slot blue"),
        "Degraded": ("True", "NoReadyReplicas", message),
        "RolledBack": ("False", "RolloutComplete", f"revision {revision} serves from slot blue"),
        "Reconciling": ("False", "Degraded", "phase Degraded"),
        "Stalled": ("True", "NoReadyReplicas", "phase Degraded"),
    }

    world.make_ready("blue", ready=1)
    world.step()
    assert world.status.phase == "Healthy"
    assert conditions(world)["Ready"] == ("True", "StableRevisionServing", f"revision {revision}: 1 ready in slot blue")
    assert conditions(world)["Stalled"] == ("False", "Healthy", "phase Healthy")


def test_a_rolled_back_endpoint_whose_stable_pods_go_unready_stays_rolled_back_and_says_why():
    world = healthy()
    new_revision(world)
    world.step()
    world.crash("green")
    world.step()
    assert world.status.phase == "RolledBack"
    world.make_ready("blue", ready=0)
    world.step()
    assert world.status.phase == "RolledBack"
    assert conditions(world)["Ready"][:2] == ("False", "NoReadyReplicas")
    assert conditions(world)["Stalled"] == ("True", "PodFailure", "phase RolledBack")


def test_green_as_the_stable_slot_is_what_ready_reports_on():
    world = healthy(checks={"analysisSeconds": 0})
    new_revision(world, checks={"analysisSeconds": 0})
    world.settle()
    assert world.status.active_slot == "green"
    revision = world.status.stable_revision
    assert conditions(world)["Ready"] == ("True", "StableRevisionServing", f"revision {revision}: 2 ready in slot green")
    assert conditions(world)["Progressing"] == ("False", "RolloutComplete", f"revision {revision} serves from slot green")


# ----------------------------------------------------------------------------- second rollouts


def test_a_rollout_is_announced_and_waits_for_its_pods():
    world = healthy()
    new_revision(world)
    decision = world.step()
    revision = world.status.candidate_revision
    assert events(decision) == [EmitEvent("Normal", "RolloutStarted", f"rolling out revision {revision} into slot green")]
    assert conditions(world)["Progressing"] == ("True", "Deploying", f"waiting for revision {revision} in slot green")
    assert conditions(world)["Reconciling"] == ("True", "Progressing", "phase Progressing")


def test_a_rollout_waiting_for_promotion_says_how_to_go_on():
    strategy = {"blueGreen": {"autoPromote": False}}
    world = healthy(strategy=strategy)
    new_revision(world, strategy=strategy)
    world.step()
    world.make_ready("green")
    world.step()
    revision = world.status.candidate_revision
    assert world.status.phase == "Paused" and world.selected_slot() == "blue"
    assert conditions(world)["Progressing"] == (
        "True", "AwaitingPromotion", f"revision {revision} is ready in slot green; promote it to switch traffic")


def test_a_candidate_waiting_for_promotion_past_the_deadline_is_not_reverted_for_a_lost_pod():
    strategy = {"blueGreen": {"autoPromote": False}}
    world = healthy(strategy=strategy)
    new_revision(world, strategy=strategy)
    world.step()
    world.make_ready("green")
    world.step()
    world.advance(400)
    world.make_ready("green", ready=1)  # the deadline is for getting ready, not for staying ready
    world.step()
    assert world.status.rollout.step == "AwaitingPromotion" and world.status.failed_revision is None


def test_one_promote_skips_one_wait():
    strategy = {"blueGreen": {"autoPromote": False}}
    checks = {"analysisSeconds": 60}
    world = healthy(strategy=strategy, checks=checks)
    new_revision(world, strategy=strategy, checks=checks)
    world.step()
    world.make_ready("green")
    world.step()
    world.annotations["slotkeeper.io/promote"] = "p1"
    world.step()
    # Past AwaitingPromotion, and not promoted at once: the analysis still runs.
    assert world.status.rollout.step == "Analysing" and world.status.phase == "Progressing"
    assert world.selected_slot() == "green"


def test_a_superseded_candidate_is_recorded_and_announced():
    world = healthy()
    new_revision(world)
    world.step()
    world.make_ready("green")
    first = world.status.candidate_revision
    new_revision(world, uri=NEWER_URI)
    decision = world.step()
    second = world.status.candidate_revision
    assert world.status.history[-1] == HistoryEntry(revision=first, model_uri=NEW_URI, outcome="Superseded",
                                                    reason="NewRevision", message=f"replaced by revision {second}",
                                                    time=NOW)
    assert events(decision, "Superseded") == [
        EmitEvent("Normal", "Superseded", f"rollout of {first} superseded by {second}")]


def test_a_canary_superseded_midway_gets_the_stable_slot_back_to_full_size_before_the_next_candidate():
    canary = {"canary": {"steps": [{"setWeight": 60}, {"pause": {}}]}}
    world = healthy(serving={"replicas": 4}, strategy=canary)
    new_revision(world, serving={"replicas": 4}, strategy=canary)
    world.settle()
    assert world.deployments["blue"]["spec"]["replicas"] == 3  # shrunk for weight 60
    new_revision(world, uri=NEWER_URI, serving={"replicas": 4}, strategy=canary)
    world.step()
    assert world.status.rollout.step == "Deploying"
    assert world.selected_slot() == "blue"
    assert world.deployments["blue"]["spec"]["replicas"] == 4


def test_the_spec_going_back_to_the_stable_revision_cancels_the_rollout_and_says_so():
    world = healthy()
    stable = world.status.stable_revision
    new_revision(world)
    world.step()
    candidate = world.status.candidate_revision
    world.change_spec()  # back to the first model
    decision = world.step()
    status = world.status
    assert (status.rollout, status.candidate_revision, status.candidate_slot) == (None, None, None)
    assert status.phase == "Healthy"
    assert status.history[-1] == HistoryEntry(revision=candidate, model_uri=NEW_URI, outcome="Superseded",
                                              reason="SpecReverted",
                                              message=f"the spec asks for the stable revision {stable} again", time=NOW)
    assert events(decision, "Superseded") == [
        EmitEvent("Normal", "Superseded", f"rollout of {candidate} cancelled: the spec is back at {stable}")]


# ------------------------------------------------------------------------------- manual actions


def test_manual_actions_are_announced_in_order_and_acted_on_once():
    world = healthy()
    world.annotations.update({"slotkeeper.io/resume": "r1", "slotkeeper.io/abort": "a1"})
    decision = world.step()
    assert events(decision) == [EmitEvent("Normal", "ManualAction", "abort requested"),
                                EmitEvent("Normal", "ManualAction", "resume requested")]
    assert events(world.step()) == []


def test_only_retry_lets_a_reverted_revision_roll_out_again():
    world = healthy()
    new_revision(world)
    world.step()
    failed = world.status.candidate_revision
    world.crash("green")
    world.step()
    world.pods.clear()
    assert world.status.failed_revision == failed

    world.annotations["slotkeeper.io/resume"] = "r1"  # any other action leaves the failure alone
    world.step()
    assert (world.status.failed_revision, world.status.failed_generation) == (failed, 2)
    assert world.status.phase == "RolledBack" and world.status.rollout is None

    world.annotations["slotkeeper.io/retry"] = "t1"
    world.single_step()
    assert (world.status.failed_revision, world.status.failed_generation) == (None, None)
    assert world.status.rollout.revision == failed and world.status.phase == "Progressing"
