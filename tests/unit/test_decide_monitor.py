"""Decision tables for the quality monitor (spec.monitor, issue 16): episode start, cooldown,
recovery, inconclusive data, revert to previous, no previous, and a crash between the Job's name
and its create."""

from __future__ import annotations

from slotkeeper.checks.verdicts import Verdict
from slotkeeper.decide import Gates
from slotkeeper.monitor import job_name

from .world import World, make_spec

NEW_URI = "file:///models/credit/2/model.joblib"
ACCURACY = {"name": "accuracy", "source": "prometheus", "address": "http://prometheus:9090",
            "query": 'accuracy{revision="{{revision}}"}', "min": 0.88, "intervalSeconds": 10,
            "failureLimit": 2, "inconclusiveLimit": 3}
JOB = {"spec": {"template": {"spec": {"containers": [{"name": "retrain", "image": "example/retrain:1"}]}}},
       "cooldownSeconds": 3600}
GOOD = Verdict("Pass", 0.95, "value 0.95 is within min 0.88")
BAD = Verdict("Fail", 0.80, "value 0.8 is below min 0.88")
NO_DATA = Verdict("Inconclusive", None, "value: no data")


def monitored(on_failure=None, **spec) -> World:
    monitor = {"checks": [ACCURACY], "onFailure": on_failure if on_failure is not None else {"job": JOB}}
    world = World(spec=make_spec(monitor=monitor, **spec))
    world.settle()
    return world


def check(world: World, verdict: Verdict, passes: int = 1):
    for _ in range(passes):
        world.step(Gates(monitor={"accuracy": verdict}))
        world.advance(10)


def condition(world: World, type: str = "QualityDegraded"):
    return next((c for c in world.status.conditions if c.type == type), None)


def reasons(world: World) -> list[str]:
    return [e.reason for e in world.events]


def test_no_monitor_no_condition_and_no_status():
    world = World()
    world.settle()
    assert condition(world) is None and world.status.monitor is None


def test_episode_starts_at_failure_limit_with_one_job_one_event_and_the_condition():
    world = monitored()
    check(world, GOOD)
    assert condition(world).status == "False"
    check(world, BAD)
    assert condition(world).status == "False"  # one failure of failureLimit 2
    check(world, BAD)
    degraded = condition(world)
    assert degraded.status == "True" and degraded.reason == "CheckFailed"
    assert 'check "accuracy"' in degraded.message and "0.8" in degraded.message and "0.88" in degraded.message
    assert reasons(world).count("QualityDegraded") == 1
    assert len(world.job_creates) == 1
    job = world.job_creates[0]
    revision = world.status.stable_revision
    assert job["metadata"]["name"] == job_name("credit", revision, world.status.monitor.episode.started_at)
    assert job["metadata"]["labels"]["slotkeeper.io/revision"] == revision
    assert job["metadata"]["labels"]["slotkeeper.io/endpoint"] == "credit"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"name": "SLOTKEEPER_REVISION", "value": revision} in pod["containers"][0]["env"]
    # Still failing: no second Job, no second Event; the Job's outcome shows in status and condition.
    check(world, BAD, passes=3)
    assert len(world.job_creates) == 1 and reasons(world).count("QualityDegraded") == 1
    assert world.status.monitor.job.outcome == "Running"
    assert "Running" in condition(world).message


def test_a_drop_right_after_a_passing_check_is_reported_within_two_intervals():
    """The issue's "QualityDegraded=True within two intervals" (failureLimit 2): each pass asks to be
    woken for the check's next evaluation no later than one interval on, and the second failing
    evaluation sets the condition."""
    world = monitored()
    interval = ACCURACY["intervalSeconds"]
    assert world.step(Gates(monitor={"accuracy": GOOD})).requeue_after <= interval
    for _ in range(2):  # the accuracy fell just after that pass
        world.advance(interval)
        assert condition(world).status == "False"
        assert world.step(Gates(monitor={"accuracy": BAD})).requeue_after <= interval
    assert condition(world).status == "True"


def test_recovery_clears_the_condition_and_makes_no_second_job():
    world = monitored()
    check(world, BAD, passes=2)
    check(world, GOOD)
    assert condition(world).status == "False" and condition(world).reason == "QualityRecovered"
    assert world.status.monitor.episode is None
    assert "QualityRecovered" in reasons(world)
    check(world, GOOD, passes=3)
    assert len(world.job_creates) == 1


def test_a_second_episode_within_the_cooldown_makes_no_job_after_it_one_more():
    world = monitored()
    check(world, BAD, passes=2)
    check(world, GOOD)
    check(world, BAD, passes=2)  # a new episode, 40 s after the first Job
    assert condition(world).status == "True"
    assert len(world.job_creates) == 1 and "RetrainingSkipped" in reasons(world)
    check(world, GOOD)
    world.advance(3600)
    check(world, BAD, passes=2)
    assert len(world.job_creates) == 2
    assert world.job_creates[0]["metadata"]["name"] != world.job_creates[1]["metadata"]["name"]


def test_inconclusive_neither_starts_nor_ends_an_episode_and_stalls_as_unknown():
    world = monitored()
    check(world, BAD)
    check(world, NO_DATA)
    check(world, BAD)  # Fail, no data, Fail: still two failures in a row (no Pass in between)
    assert condition(world).status == "True"
    check(world, NO_DATA, passes=5)
    assert condition(world).status == "True"  # no data is no recovery
    world2 = monitored()
    check(world2, NO_DATA, passes=3)
    assert condition(world2).status == "Unknown" and condition(world2).reason == "ChecksInconclusive"
    assert world2.job_creates == []


def test_a_crash_between_naming_the_job_and_creating_it_makes_one_job():
    world = monitored()
    check(world, BAD)
    before = world.status
    decision = world.single_step(Gates(monitor={"accuracy": BAD}))
    named = world.status.monitor.job.name
    assert not any(type(a).__name__ == "CreateJob" for a in decision.actions)  # named first, created next pass
    # The next pass creates it; its status write is lost (a crash); the pass after sends the same create.
    world.single_step()
    world.status = world.status.model_copy(update={"monitor": world.status.monitor.model_copy(
        update={"job": world.status.monitor.job.model_copy(update={"created": False})})})
    world.jobs.clear()  # the watch has not shown it yet
    world.single_step()
    assert [j["metadata"]["name"] for j in world.job_creates] == [named, named]  # the second is a 409
    assert before.monitor.job is None


def test_revert_to_previous_scales_its_slot_up_and_moves_traffic_back():
    world = monitored(on_failure={"revertTo": "previous"},
                      strategy={"blueGreen": {"scaleDownDelaySeconds": 0}}, checks={"analysisSeconds": 0})
    first = world.status.stable_revision
    world.change_spec(uri=NEW_URI, monitor={"checks": [ACCURACY], "onFailure": {"revertTo": "previous"}},
                      strategy={"blueGreen": {"scaleDownDelaySeconds": 0}}, checks={"analysisSeconds": 0})
    world.settle()
    second = world.status.stable_revision
    assert second != first and world.selected_slot() == "green" and world.replicas("blue") == 0
    check(world, BAD, passes=2)
    assert world.status.monitor.revert is not None and world.replicas("blue") == 2
    assert world.selected_slot() == "green"  # not before the previous revision's pods are ready
    world.make_ready("blue")
    world.step()
    world.step()
    assert world.status.stable_revision == first and world.status.active_slot == "blue"
    assert world.selected_slot() == "blue"
    assert world.status.phase == "RolledBack"
    assert condition(world, "RolledBack").reason == "QualityDegraded"
    last = world.status.history[-1]
    assert (last.revision, last.outcome, last.reason, last.model_uri) == (second, "RolledBack", "QualityDegraded",
                                                                          NEW_URI)
    world.settle()
    assert world.status.stable_revision == first  # the spec still names the newer model: not retried
    assert world.replicas("green") == 1  # failedSlotReplicas, for inspection


def test_revert_without_a_previous_revision_only_reports():
    world = monitored(on_failure={"revertTo": "previous"})
    check(world, BAD, passes=2)
    assert condition(world).status == "True" and "no previous revision" in condition(world).message
    assert world.status.monitor.revert is None and world.selected_slot() == "blue"
    assert "RevertImpossible" in reasons(world)


def test_revert_when_the_idle_slot_no_longer_holds_the_previous_revision_only_reports():
    world = monitored(on_failure={"revertTo": "previous"},
                      strategy={"blueGreen": {"scaleDownDelaySeconds": 0}}, checks={"analysisSeconds": 0})
    spec = dict(monitor={"checks": [ACCURACY], "onFailure": {"revertTo": "previous"}},
                strategy={"blueGreen": {"scaleDownDelaySeconds": 0}}, checks={"analysisSeconds": 0})
    world.change_spec(uri=NEW_URI, **spec)
    world.settle()
    world.deployments["blue"]["spec"]["template"]["metadata"]["labels"]["slotkeeper.io/revision"] = "0000000000"
    check(world, BAD, passes=2)
    assert "cannot be rebuilt" in condition(world).message and "serving template" in condition(world).message
    assert world.status.monitor.revert is None and world.selected_slot() == "green"


def test_monitor_is_not_part_of_the_revision():
    from slotkeeper.revision import revision_of
    assert revision_of(make_spec()) == revision_of(make_spec(monitor={"checks": [ACCURACY]}))
