"""The status patch the operator sends: applied by the apiserver (RFC 7386), it must leave exactly
the status the decision wanted. A key the decision dropped must disappear from the object, not linger
with its old value (a finished rollout still showing ``status.rollout`` would say it is under way)."""

from __future__ import annotations

import copy
from typing import Any

from slotkeeper.cluster import merge_patch

from .world import World

NEW_URI = "file:///models/credit/2/model.joblib"


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """What the apiserver does with an application/merge-patch+json body (RFC 7386, section 2)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def stored_after_patch(old: dict, new: dict) -> dict:
    return apply_merge_patch(old, merge_patch(old, new))


def test_a_status_key_the_decision_dropped_disappears_from_the_object():
    old = {"phase": "Progressing", "candidateRevision": "abc", "rollout": {"revision": "abc", "step": "Analysing"}}
    new = {"phase": "Healthy"}

    stored = stored_after_patch(old, new)

    assert stored == new
    assert "rollout" not in stored and "candidateRevision" not in stored


def test_a_key_dropped_inside_a_nested_status_field_disappears_too():
    old = {"slots": {"blue": {"replicas": 2}, "green": {"replicas": 1}}, "phase": "Healthy"}
    new = {"slots": {"blue": {"replicas": 2}}, "phase": "Healthy"}

    assert stored_after_patch(old, new) == new


def test_a_promotion_written_as_a_patch_leaves_no_trace_of_the_finished_rollout():
    """The real thing: the statuses before and after the first revision is promoted."""
    world = World()
    world.step()
    during = world.status.to_api()
    assert "rollout" in during and "candidateRevision" in during
    world.settle()
    after = world.status.to_api()
    assert "rollout" not in after

    assert stored_after_patch(during, after) == after


def test_a_rollout_and_its_revert_round_trip_through_patches():
    """Every status the decision writes along a rollout and a revert, patched one onto the other."""
    world = World()
    world.settle()
    stored = world.status.to_api()
    world.change_spec(model={"name": "credit", "uri": NEW_URI})
    for _ in range(4):
        world.step()
        stored = stored_after_patch(stored, world.status.to_api())
        assert stored == world.status.to_api()
    world.crash("green")
    world.step()
    assert world.status.phase == "RolledBack"
    assert stored_after_patch(stored, world.status.to_api()) == world.status.to_api()


def test_an_unchanged_status_needs_no_patch_and_a_changed_one_sends_only_the_change():
    status = {"phase": "Healthy", "traffic": {"blue": 100, "green": 0}, "history": [{"revision": "a"}]}
    assert merge_patch(status, copy.deepcopy(status)) == {}

    new = {**copy.deepcopy(status), "traffic": {"blue": 0, "green": 100}}
    assert merge_patch(status, new) == {"traffic": {"blue": 0, "green": 100}}


def test_lists_and_scalars_are_replaced_whole():
    old = {"history": [{"revision": "a"}, {"revision": "b"}], "observedGeneration": 1}
    new = {"history": [{"revision": "b"}], "observedGeneration": 2}
    assert merge_patch(old, new) == new
    assert stored_after_patch(old, new) == new


def test_a_field_that_changes_type_is_sent_as_its_new_value():
    assert merge_patch({"scaleDown": {"slot": "blue"}}, {"scaleDown": "x"}) == {"scaleDown": "x"}
    assert merge_patch({"scaleDown": "x"}, {"scaleDown": {"slot": "blue"}}) == {"scaleDown": {"slot": "blue"}}
