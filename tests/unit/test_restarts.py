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

    settle()
    world.change_spec(uri=NEW_URI)
    settle()
    world.advance(120)
    settle()
    world.advance(60)
    settle()
    world.change_spec(uri=BAD_URI)
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
             world.deployments.items()})


def count_passes_and_actions() -> list[int]:
    """How many actions each pass of the uninterrupted scenario takes."""
    sizes: list[int] = []
    world = World(spec=make_spec())
    original = world.single_step

    def recording_step(gates=None):
        decision = original() if gates is None else original(gates)
        sizes.append(len(decision.actions))
        return decision

    world.single_step = recording_step  # type: ignore[method-assign]
    scenario(world, None)
    return sizes


BASELINE = scenario(World(spec=make_spec()), None)
CRASH_POINTS = [(index + 1, cut) for index, size in enumerate(count_passes_and_actions()) if size
                for cut in range(size + 1)]


def test_scenario_covers_every_rollout_step():
    outcomes = [h.outcome for h in BASELINE.status.history]
    assert outcomes == ["Promoted", "Promoted", "RolledBack"]
    assert len(CRASH_POINTS) > 20


@pytest.mark.parametrize("crash_at", CRASH_POINTS, ids=lambda c: f"pass{c[0]}-after{c[1]}")
def test_crash_anywhere_resumes_to_the_same_end(crash_at):
    world = scenario(World(spec=make_spec()), crash_at)
    assert outcome(world) == outcome(BASELINE)
    assert world.switches <= BASELINE.switches  # a resumed pass never switches traffic again
    assert [h.revision for h in world.status.history] == [h.revision for h in BASELINE.status.history]


def test_baseline_switches_traffic_exactly_twice():
    # blue selected once it is ready, then green promoted; the crashing revision never gets traffic
    assert BASELINE.switches == 2
