"""status.traffic reports what the cluster routes by: the selector as the watches showed it, never
the switch the operator has just written (or is about to write) and not yet seen take effect."""

from __future__ import annotations

import dataclasses

from slotkeeper.actions import SwitchTraffic
from slotkeeper.decide import Gates, decide_next_step
from slotkeeper.recent_writes import RecentWrites
from slotkeeper.render import slot_selector

from .world import World, make_spec


def healthy_world() -> World:
    world = World()
    world.settle()
    assert world.status.traffic == {"blue": 100, "green": 0}
    return world


def test_a_written_switch_not_yet_seen_is_not_reported():
    world = healthy_world()
    seen = world.observed()
    overlaid = dataclasses.replace(seen, endpoint_selector=slot_selector("credit", "green"),
                                   shown_selector=seen.endpoint_selector)
    decision = decide_next_step(world.endpoint(), overlaid, world.now, Gates())
    assert decision.status.traffic == {"blue": 100, "green": 0}


def test_the_overlay_keeps_what_the_watches_showed():
    world = healthy_world()
    seen = world.observed()
    writes = RecentWrites(clock=lambda: 0.0)
    writes.remember("credit", SwitchTraffic(selector=slot_selector("credit", None)), seen)
    overlaid = writes.overlay(seen)
    assert dict(overlaid.endpoint_selector) == slot_selector("credit", None)  # decisions see the write
    assert dict(overlaid.cluster_selector) == dict(seen.endpoint_selector)  # status sees the cluster


def test_a_canary_selector_the_cluster_never_took_reports_no_candidate_share():
    """The bug a real cluster showed: status said 50 % while the Service still selected blue alone."""
    world = World(spec=make_spec(strategy={"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}}))
    world.settle()
    world.change_spec(strategy={"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}},
                      model={"name": "credit", "uri": "file:///models/credit/2/model.joblib"})
    for _ in range(10):
        for slot in list(world.deployments):
            world.make_ready(slot)
        decision = world.decide()
        for action in decision.actions:
            if isinstance(action, SwitchTraffic):
                continue  # the write "did not take": the Service keeps selecting blue alone
            world.apply(action)
        world.status = decision.status
    assert world.selected_slot() == "blue"
    assert world.status.traffic == {"blue": 100, "green": 0}
