"""Crash-safety of the decision: the operator may die after any write of a pass and before its status
patch. Resuming from the last written status must end exactly where an uninterrupted run ends, with
no second traffic switch and no history lost or duplicated."""

from __future__ import annotations

import copy

import pytest

from slotkeeper.observe import summarise_deployment
from slotkeeper.revision import revision_of

from .world import World, make_spec

NEW_URI = "file:///models/credit/2/model.joblib"
BAD_URI = "file:///models/credit/3/model.joblib"
CPU = {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
# The same scenario with replicas set by the operator, and with each serving slot autoscaled.
SERVINGS = {"replicas": {"replicas": 2},
            "autoscaled": {"replicas": 2, "autoscaling": {"minReplicas": 2, "maxReplicas": 6, "metrics": [CPU]}}}


def scenario(world: World, crash_at: tuple[int, int] | None, crash_bad: bool = False) -> World:
    """Deploy, roll out a good revision, then a crashing one; optionally die in pass `crash_at[0]`
    after `crash_at[1]` of its actions (its status never written)."""
    passes = 0

    def step() -> bool:
        """One pass; False when the process died in it."""
        nonlocal passes
        passes += 1
        if crash_at and passes == crash_at[0]:
            decision = world.decide()
            for action in decision.actions[:crash_at[1]]:
                world.apply(action)
            return False  # the process died: the status patch never happened, in-memory state is gone
        world.single_step()
        return True

    def settle() -> None:
        for _ in range(30):
            for slot in list(world.deployments):
                if not any(p.slot == slot and p.failure for p in world.pods):
                    world.make_ready(slot)
            before = (copy.deepcopy(world.deployments), copy.deepcopy(world.services), world.status)
            if step() and (world.deployments, world.services, world.status) == before:
                return
        raise AssertionError("did not settle")

    serving = world.spec.serving.to_api()
    settle()
    if world.spec.serving.autoscaling is not None:
        world.hpa_scales("blue", 3)  # more load: the candidates start at 3
    world.change_spec(uri=NEW_URI, serving=serving)
    settle()
    world.advance(120)
    settle()
    world.advance(60)
    settle()
    world.change_spec(uri=BAD_URI, serving=serving)
    bad = revision_of(world.spec)
    for _ in range(5):  # the pods of the bad revision crash as soon as its Deployment exists
        step()
        slots = [slot for slot, d in world.deployments.items() if summarise_deployment(d).revision == bad]
        if slots:
            world.crash(slots[0])
            break
    settle()
    return world


def outcome(world: World):
    # A condition's lastTransitionTime may legitimately differ: a pass that died never showed its
    # intermediate condition (e.g. Progressing=True), so there was no transition to record.
    conditions = [c.model_copy(update={"last_transition_time": ""}) for c in world.status.conditions]
    status = world.status.model_copy(update={"conditions": conditions})
    return (status, world.selected_slot(),
            {slot: (d["spec"]["replicas"], d["spec"]["template"]["metadata"]["labels"]) for slot, d in
             world.deployments.items()},
            {slot: world.hpa_bounds(slot) for slot in world.autoscalers}, world.resets)


def count_passes_and_actions(serving: str) -> list[int]:
    """How many actions each pass of the uninterrupted scenario takes."""
    sizes: list[int] = []
    world = World(spec=make_spec(serving=SERVINGS[serving]))
    original = world.single_step

    def recording_step(gates=None):
        decision = original() if gates is None else original(gates)
        sizes.append(len(decision.actions))
        return decision

    world.single_step = recording_step  # type: ignore[method-assign]
    scenario(world, None)
    return sizes


BASELINES = {serving: scenario(World(spec=make_spec(serving=SERVINGS[serving])), None) for serving in SERVINGS}
CRASH_POINTS = [(serving, index + 1, cut) for serving in SERVINGS
                for index, size in enumerate(count_passes_and_actions(serving)) if size for cut in range(size + 1)]


@pytest.mark.parametrize("serving", SERVINGS)
def test_scenario_covers_every_rollout_step(serving):
    outcomes = [h.outcome for h in BASELINES[serving].status.history]
    assert outcomes == ["Promoted", "Promoted", "RolledBack"]
    assert len([c for c in CRASH_POINTS if c[0] == serving]) > 20


def test_the_autoscaled_scenario_ends_autoscaled_at_the_size_its_autoscaler_chose():
    world = BASELINES["autoscaled"]
    assert world.status.active_slot == "green" and world.hpa_bounds("green") == (2, 6)
    assert world.replicas("green") == 3 and "blue" not in world.autoscalers  # blue: the failed revision's pod
    assert world.resets == []


@pytest.mark.parametrize("crash_at", CRASH_POINTS, ids=lambda c: f"{c[0]}-pass{c[1]}-after{c[2]}")
def test_crash_anywhere_resumes_to_the_same_end(crash_at):
    serving, *point = crash_at
    baseline = BASELINES[serving]
    world = scenario(World(spec=make_spec(serving=SERVINGS[serving])), tuple(point))
    assert outcome(world) == outcome(baseline)
    assert world.switches <= baseline.switches  # a resumed pass never switches traffic again
    assert [h.revision for h in world.status.history] == [h.revision for h in baseline.status.history]


@pytest.mark.parametrize("serving", SERVINGS)
def test_baseline_switches_traffic_exactly_twice(serving):
    # blue selected once it is ready, then green promoted; the crashing revision never gets traffic
    assert BASELINES[serving].switches == 2
