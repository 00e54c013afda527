"""Decision tables for the blue/green rollout: each test arranges a world, steps it, and asserts on
what a user would see: the endpoint selector, the slot Deployments, status and Events."""

from __future__ import annotations

from slotkeeper.actions import ApplyDeployment, CreateService, EmitEvent, ScaleDeployment, SwitchTraffic
from slotkeeper.render import LABEL_REVISION

from .world import World

NEW_URI = "file:///models/credit/2/model.joblib"
NEWER_URI = "file:///models/credit/3/model.joblib"


def deployed_world(**spec) -> World:
    world = World()
    world.settle()
    return world


def test_traffic_moves_only_after_the_decision_is_in_status():
    world = World()
    world.single_step()
    world.make_ready("blue")
    first = world.single_step()
    assert first.requeue_after == 0
    assert not [a for a in first.actions if isinstance(a, SwitchTraffic)]
    assert world.status.stable_revision is not None  # the decision is remembered...
    second = world.single_step()
    assert [a for a in second.actions if isinstance(a, SwitchTraffic)]  # ...then carried out
    assert world.selected_slot() == "blue"


def revision_in(world: World, slot: str) -> str:
    return world.deployments[slot]["spec"]["template"]["metadata"]["labels"][LABEL_REVISION]


def condition(world: World, type: str):
    return next(c for c in world.status.conditions if c.type == type)


def first_change(decision):
    """The first action that changes an object (Events aside)."""
    return next(a for a in decision.actions if not isinstance(a, EmitEvent))


# ---------------------------------------------------------------------------------- first deploy


def test_first_deploy_renders_blue_and_selects_nothing_until_ready():
    world = World()
    decision = world.step()

    kinds = [type(a).__name__ for a in decision.actions]
    assert kinds.count("CreateService") == 3  # two slot Services and the endpoint Service
    assert [a.slot for a in decision.actions if isinstance(a, ApplyDeployment)] == ["blue"]
    assert world.selected_slot() == "none"
    assert world.status.phase == "Progressing"
    assert world.status.rollout.step == "Deploying"
    assert world.status.candidate_slot == "blue"
    assert world.status.url == "http://credit.ml.svc.cluster.local"


def test_first_revision_ready_is_selected_and_stable():
    world = World()
    world.step()
    world.make_ready("blue")
    decision = world.step()

    assert [a for a in decision.actions if isinstance(a, SwitchTraffic)]
    assert world.selected_slot() == "blue"
    assert world.status.phase == "Healthy"
    assert world.status.stable_revision == revision_in(world, "blue")
    assert world.status.active_slot == "blue"
    assert world.status.traffic == {"blue": 100, "green": 0}
    assert world.status.history[-1].outcome == "Promoted"
    assert condition(world, "Ready").status == "True"


def test_first_revision_crash_loop_degrades_without_selecting():
    world = World()
    world.step()
    world.crash("blue")
    world.step()

    assert world.selected_slot() == "none"
    assert world.status.phase == "Degraded"
    assert world.status.stable_revision is None
    assert condition(world, "Ready").status == "False"
    assert "CrashLoopBackOff" in condition(world, "Degraded").message
    assert world.events[-1].type == "Warning"


# ---------------------------------------------------------------------------------- steady state


def test_resync_without_change_does_nothing():
    world = deployed_world()
    before = world.status
    decision = world.step()

    assert decision.actions == []
    assert world.status == before


def test_conditions_keep_transition_time_across_resyncs():
    world = deployed_world()
    ready_since = condition(world, "Ready").last_transition_time
    world.advance(300)
    world.step()
    assert condition(world, "Ready").last_transition_time == ready_since


def test_replica_change_scales_active_slot_without_rollout():
    world = deployed_world()
    world.spec = world.spec.model_copy(update={"serving": world.spec.serving.model_copy(update={"replicas": 5})})
    world.generation += 1
    decision = world.step()

    assert decision.actions == [ScaleDeployment(slot="blue", replicas=5)]
    assert world.status.rollout is None


# ---------------------------------------------------------------------------------- blue/green


def test_spec_change_renders_candidate_into_idle_slot_and_keeps_traffic():
    world = deployed_world()
    stable = world.status.stable_revision
    world.change_spec(uri=NEW_URI)
    decision = world.step()

    applied = [a for a in decision.actions if isinstance(a, ApplyDeployment)]
    assert [a.slot for a in applied] == ["green"]
    assert world.selected_slot() == "blue"
    assert world.status.candidate_revision == revision_in(world, "green") != stable
    assert world.status.phase == "Progressing"


def test_candidate_ready_switches_selector_once():
    world = deployed_world()
    world.change_spec(uri=NEW_URI)
    world.step()
    world.make_ready("green")
    decision = world.step()

    assert [a for a in decision.actions if isinstance(a, SwitchTraffic)] == [
        SwitchTraffic(selector={"slotkeeper.io/endpoint": "credit", "slotkeeper.io/slot": "green"})
    ]
    assert world.status.rollout.step == "Analysing"
    assert world.status.traffic == {"blue": 0, "green": 100}
    # Still analysing: the old slot keeps full size and the next step switches nothing.
    assert not [a for a in world.step().actions if isinstance(a, (SwitchTraffic, ScaleDeployment))]
    assert world.switches == 2  # the first selection of blue, then this switch
    assert [e.reason for e in decision.actions if isinstance(e, EmitEvent)] == ["TrafficSwitched"]


def test_candidate_not_ready_keeps_waiting_and_polls():
    world = deployed_world()
    world.change_spec(uri=NEW_URI)
    world.step()
    world.make_ready("green", ready=1)
    decision = world.step()

    assert world.selected_slot() == "blue"
    assert 0 < decision.requeue_after <= 10


def test_analysis_passes_then_promotes_and_scales_old_slot_down_after_delay():
    world = deployed_world()
    world.change_spec(uri=NEW_URI)
    world.step()
    world.make_ready("green")
    world.step()
    candidate = world.status.candidate_revision

    world.advance(120)  # default analysisSeconds
    world.step()
    assert world.status.stable_revision == candidate
    assert world.status.active_slot == "green"
    assert world.status.phase == "Healthy"
    assert world.status.history[-1].outcome == "Promoted"
    assert world.deployments["blue"]["spec"]["replicas"] == 2  # scale-down waits

    world.advance(60)  # default scaleDownDelaySeconds
    decision = world.step()
    assert decision.actions == [ScaleDeployment(slot="blue", replicas=0)]
    assert world.status.scale_down is None


def test_manual_promotion_waits_in_paused_phase():
    world = deployed_world()
    world.change_spec(uri=NEW_URI, strategy={"blueGreen": {"autoPromote": False}})
    world.step()
    world.make_ready("green")
    world.step()

    assert world.status.phase == "Paused"
    assert world.status.rollout.step == "AwaitingPromotion"
    assert world.selected_slot() == "blue"


# ---------------------------------------------------------------------------------- revert


def test_progress_deadline_reverts_and_leaves_failed_slot_for_inspection():
    world = deployed_world()
    stable = world.status.stable_revision
    world.change_spec(uri=NEW_URI)
    world.step()
    failed = world.status.candidate_revision
    world.make_ready("green", ready=1)
    world.advance(301)
    world.step()

    assert world.selected_slot() == "blue"
    assert world.status.phase == "RolledBack"
    assert world.status.stable_revision == stable
    assert world.status.failed_revision == failed
    assert world.deployments["green"]["spec"]["replicas"] == 1  # failedSlotReplicas
    assert revision_in(world, "green") == failed
    rolled_back = condition(world, "RolledBack")
    assert (rolled_back.status, rolled_back.reason) == ("True", "ProgressDeadlineExceeded")
    assert world.status.history[-1].outcome == "RolledBack"
    assert world.events[-1].type == "Warning" and world.events[-1].reason == "RolledBack"


def test_crash_loop_reverts_at_once_without_waiting_for_deadline():
    world = deployed_world()
    world.change_spec(uri=NEW_URI)
    world.step()
    world.crash("green")
    world.advance(1)
    world.step()

    assert world.status.phase == "RolledBack"
    assert condition(world, "RolledBack").reason == "PodFailure"
    assert "CrashLoopBackOff" in condition(world, "RolledBack").message


def test_image_pull_error_after_switch_reverts_selector_first():
    world = deployed_world()
    world.change_spec(uri=NEW_URI)
    world.step()
    world.make_ready("green")
    world.step()
    assert world.selected_slot() == "green"
    world.crash("green", reason="ImagePullBackOff")
    decision = world.step()

    assert isinstance(first_change(decision), SwitchTraffic)
    assert first_change(decision).selector["slotkeeper.io/slot"] == "blue"
    assert world.selected_slot() == "blue"
    assert world.status.active_slot == "blue"


def test_reverted_revision_is_not_retried_until_spec_changes_again():
    world = deployed_world()
    stable = world.status.stable_revision
    world.change_spec(uri=NEW_URI)
    world.step()
    world.crash("green")
    world.step()
    world.pods.clear()  # the crash-looping pod went away; the spec still names the failed revision

    for _ in range(3):
        world.advance(30)
        decision = world.step()
        assert not [a for a in decision.actions if isinstance(a, (ApplyDeployment, SwitchTraffic))]
        assert world.status.stable_revision == stable
        assert world.status.phase == "RolledBack"

    world.generation += 1  # the user edits the spec again (same model): the revision gets another try
    world.step()
    assert world.status.phase == "Progressing"
    assert world.status.rollout.revision == world.status.failed_revision


def test_spec_back_at_stable_after_revert_is_healthy():
    world = deployed_world()
    world.change_spec(uri=NEW_URI)
    world.step()
    world.crash("green")
    world.step()
    world.change_spec()  # GitOps revert to the first model
    world.step()

    assert world.status.phase == "Healthy"
    assert condition(world, "RolledBack").status == "False"


# ---------------------------------------------------------------------------------- supersede


def test_second_change_before_ready_supersedes_candidate_in_same_slot():
    world = deployed_world()
    world.change_spec(uri=NEW_URI)
    world.step()
    first = world.status.candidate_revision
    world.change_spec(uri=NEWER_URI)
    world.step()

    assert world.status.candidate_revision != first
    assert world.status.candidate_slot == "green"
    assert revision_in(world, "green") == world.status.candidate_revision
    assert world.status.history[-1].outcome == "Superseded"
    assert world.status.history[-1].revision == first
    assert world.selected_slot() == "blue"


def test_second_change_during_analysis_returns_traffic_to_stable_first():
    world = deployed_world()
    world.change_spec(uri=NEW_URI)
    world.step()
    world.make_ready("green")
    world.step()
    assert world.selected_slot() == "green"
    world.change_spec(uri=NEWER_URI)
    decision = world.step()

    switch = next(a for a in decision.actions if isinstance(a, SwitchTraffic))
    apply = next(a for a in decision.actions if isinstance(a, ApplyDeployment))
    assert decision.actions.index(switch) < decision.actions.index(apply)
    assert world.selected_slot() == "blue"
    assert world.status.rollout.step == "Deploying"


def test_spec_reverted_to_stable_mid_rollout_cancels_candidate():
    world = deployed_world()
    world.change_spec(uri=NEW_URI)
    world.step()
    world.change_spec()
    decision = world.step()

    assert world.status.rollout is None
    assert world.status.phase == "Healthy"
    assert world.status.history[-1].outcome == "Superseded"
    assert ScaleDeployment(slot="green", replicas=0) in decision.actions


# ---------------------------------------------------------------------------------- history


def test_history_is_trimmed_to_revision_history_limit():
    world = World()
    world.spec = world.spec.model_copy(update={"revision_history_limit": 3})
    world.settle()
    for version in range(2, 8):
        world.spec = world.spec.model_copy(update={
            "model": world.spec.model.model_copy(update={"uri": f"file:///models/credit/{version}/model.joblib"}),
        })
        world.generation += 1
        world.step()
        world.settle()
        world.advance(200)
        world.settle()

    assert len(world.status.history) == 3
    assert world.status.history[-1].model_uri.endswith("/7/model.joblib")
    assert world.status.history[-1].outcome == "Promoted"


def test_paused_spec_holds_everything():
    world = deployed_world()
    world.change_spec(uri=NEW_URI, paused=True)
    decision = world.step()

    assert not [a for a in decision.actions if not isinstance(a, CreateService)]
    assert world.status.phase == "Paused"


def test_kstatus_conditions_follow_the_phase():
    world = deployed_world()
    assert (condition(world, "Reconciling").status, condition(world, "Stalled").status) == ("False", "False")
    world.change_spec(uri=NEW_URI)
    world.step()
    assert condition(world, "Reconciling").status == "True"
    world.crash("green")
    world.step()
    stalled = condition(world, "Stalled")
    assert (stalled.status, stalled.reason) == ("True", "PodFailure")
    assert condition(world, "Reconciling").status == "False"
