"""Decision tables for Gateway API traffic (spec.traffic.gatewayAPI): exact weights for blue/green and
canary, the mirror phase, reverts, and a route its parents have not accepted. Every route the
decision writes is checked against the upstream HTTPRoute CRD (schema and CEL rules)."""

from __future__ import annotations

import pytest

from slotkeeper.actions import ApplyRoute, DeleteRoute, ScaleDeployment, SwitchTraffic
from slotkeeper.checks.verdicts import Verdict
from slotkeeper.decide import Gates, gateway_candidate_replicas

from .gateway_schema import httproute_errors
from .world import World, make_spec

NEW_URI = "file:///models/credit/2/model.joblib"
GATEWAY = {"parentRefs": [{"name": "public", "namespace": "gateways"}], "hostnames": ["credit.example.com"]}
ERRORS = {"name": "errors", "source": "pods", "metric": "error_ratio", "max": 0.05, "intervalSeconds": 10}
PASS = Verdict("Pass", 0.0, "error_ratio 0 is within max 0.05")
FAIL = Verdict("Fail", 0.5, "error_ratio 0.5 is above max 0.05")
CANARY = {"canary": {"steps": [{"setWeight": 20}, {"pause": {}}, {"setWeight": 60}, {"pause": {}}]}}


def gateway_spec(gateway=None, **spec):
    return dict(traffic={"gatewayAPI": gateway or GATEWAY}, **spec)


def deployed(**spec) -> World:
    world = World(spec=make_spec(**spec))
    world.settle()
    return world


def condition(world: World, type: str):
    return next(c for c in world.status.conditions if c.type == type)


def assert_routes_valid(world: World) -> None:
    assert world.route_writes, "the operator wrote no route"
    for body in world.route_writes:
        assert httproute_errors(body) == [], body


def promote(world: World, token: str) -> None:
    world.annotations["slotkeeper.io/promote"] = token


# ----------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("gateway", [
    GATEWAY,
    {"parentRefs": [{"group": "", "kind": "Service", "name": "credit", "port": 80}]},  # GAMMA mesh
    {"parentRefs": [{"name": "a", "sectionName": "https"}, {"name": "b"}], "pathPrefix": "/v2/models",
     "mirror": {"percent": 20, "seconds": 120}},
])
def test_every_route_of_a_rollout_is_accepted_by_the_upstream_httproute_schema(gateway):
    world = deployed(**gateway_spec(gateway, checks={"metrics": [ERRORS]}))
    world.change_spec(uri=NEW_URI, **gateway_spec(gateway, checks={"metrics": [ERRORS]}))
    for _ in range(30):
        world.advance(30)
        for slot in list(world.deployments):
            world.make_ready(slot)
        world.accept_route()
        world.step(Gates(verdicts={"errors": PASS}))
    assert world.status.phase == "Healthy" and world.status.active_slot == "green"
    assert_routes_valid(world)


def test_gateway_candidate_replicas_are_its_share_rounded_up_and_at_least_one():
    assert [gateway_candidate_replicas(2, w) for w in (1, 20, 50, 51, 100)] == [1, 1, 1, 2, 2]
    assert [gateway_candidate_replicas(10, w) for w in (5, 20, 25, 90)] == [1, 2, 3, 9]


# ----------------------------------------------------------------------------- blue/green


def test_first_revision_gets_weight_100_and_status_reports_it_only_once_accepted():
    world = World(spec=make_spec(**gateway_spec()))
    world.gateway_accepts = False
    world.settle()
    assert world.route_weights() == {"blue": 100, "green": 0}
    assert world.selected_slot() == "blue"  # the endpoint Service keeps working for in-cluster callers
    assert world.status.traffic == {}  # not accepted: nothing is claimed
    assert condition(world, "RouteAccepted").status == "False"
    assert "public" in condition(world, "RouteAccepted").message
    world.accept_route()
    world.step()
    assert world.status.traffic == {"blue": 100, "green": 0}
    assert condition(world, "RouteAccepted").status == "True"


def test_a_parent_that_refuses_refs_is_not_acceptance():
    world = World(spec=make_spec(**gateway_spec()))
    world.gateway_accepts = False
    world.settle()
    world.accept_route(accepted=True, resolved=False)
    world.step()
    assert world.status.traffic == {}


def test_blue_green_moves_the_weights_0_100_in_one_apply_after_status_is_written():
    world = deployed(**gateway_spec())
    world.change_spec(uri=NEW_URI, **gateway_spec())
    writes = len(world.route_writes)
    world.settle()
    moves = world.route_writes[writes:]
    assert [m["spec"]["rules"][0]["backendRefs"][1]["weight"] for m in moves] == [100]
    assert [m["spec"]["rules"][0]["backendRefs"][0]["weight"] for m in moves] == [0]
    assert world.status.traffic == {"blue": 0, "green": 100}
    world.advance(121)
    world.settle()
    assert world.status.active_slot == "green" and world.status.traffic == {"blue": 0, "green": 100}
    assert world.selected_slot() == "green"
    assert_routes_valid(world)


def test_switch_waits_for_the_parent_to_accept_the_new_generation_before_analysis_counts():
    world = deployed(**gateway_spec())
    world.gateway_accepts = False
    world.change_spec(uri=NEW_URI, **gateway_spec())
    world.settle()
    assert world.route_weights() == {"blue": 0, "green": 100}
    assert world.status.phase == "Progressing"
    progressing = condition(world, "Progressing")
    assert progressing.reason == "RouteNotAccepted" and "public" in progressing.message
    assert world.status.traffic == {}  # the old generation's verdict says nothing of the new weights
    world.advance(10_000)
    world.step()
    assert world.status.stable_revision != world.status.rollout.revision  # never promoted unaccepted
    world.accept_route()
    world.step()
    world.advance(121)
    world.step()
    assert world.status.phase == "Healthy" and world.status.active_slot == "green"


# -------------------------------------------------------------------------------- canary


def test_canary_set_weight_20_with_2_replicas_holds_exact_weights_80_20():
    world = deployed(**gateway_spec(strategy=CANARY))
    world.change_spec(uri=NEW_URI, **gateway_spec(strategy=CANARY))
    world.settle()
    assert world.status.phase == "Paused" and world.status.rollout.canary_step == 1
    assert world.route_weights() == {"blue": 80, "green": 20}
    assert world.status.traffic == {"blue": 80, "green": 20}  # not 33 %: no replica arithmetic
    assert world.replicas("green") == 1 and world.replicas("blue") == 2
    assert world.selected_slot() == "blue"  # the Service follows the stable slot
    promote(world, "p1")
    world.settle()
    assert world.route_weights() == {"blue": 40, "green": 60}
    assert world.replicas("green") == 2 and world.replicas("blue") == 2  # stable keeps its size
    assert world.status.traffic == {"blue": 40, "green": 60}
    promote(world, "p2")
    world.settle()
    world.advance(121)
    world.settle()
    assert world.status.phase == "Healthy" and world.route_weights() == {"blue": 0, "green": 100}
    assert_routes_valid(world)


def test_a_weight_moves_only_once_the_candidate_has_the_pods_for_it():
    world = deployed(**gateway_spec(strategy=CANARY))
    world.change_spec(uri=NEW_URI, **gateway_spec(strategy=CANARY))
    world.settle()
    promote(world, "p1")
    world.step()  # setWeight 60: the candidate grows to 2 first
    assert world.replicas("green") == 2
    assert world.route_weights() == {"blue": 80, "green": 20}
    world.settle()
    assert world.route_weights() == {"blue": 40, "green": 60}


def test_revert_puts_100_on_stable_first():
    world = deployed(**gateway_spec(strategy=CANARY, checks={"metrics": [ERRORS]}))
    world.change_spec(uri=NEW_URI, **gateway_spec(strategy=CANARY, checks={"metrics": [ERRORS]}))
    for _ in range(6):
        if "green" in world.deployments:
            world.make_ready("green")
        world.accept_route()
        world.step(Gates(verdicts={"errors": PASS}))
    assert world.route_weights() == {"blue": 80, "green": 20}
    world.advance(10)
    decision = world.step(Gates(verdicts={"errors": FAIL}))
    assert world.status.phase == "RolledBack"
    changes = [a for a in decision.actions if isinstance(a, (ApplyRoute, ScaleDeployment, SwitchTraffic))]
    assert isinstance(changes[0], ApplyRoute)
    assert world.route_weights() == {"blue": 100, "green": 0}
    assert world.replicas("green") == 1  # failedSlotReplicas, after the route moved


# -------------------------------------------------------------------------------- mirror


MIRRORED = {**GATEWAY, "mirror": {"percent": 20, "seconds": 120}}


def mirrored_rollout(world_spec: dict) -> World:
    world = deployed(**world_spec)
    world.change_spec(uri=NEW_URI, **world_spec)
    for _ in range(6):
        if "green" in world.deployments:
            world.make_ready("green")
        world.accept_route()
        world.step(Gates(verdicts={"errors": PASS}))
    return world


def test_mirror_phase_copies_percent_to_the_candidate_with_no_weight_then_moves_traffic():
    spec = gateway_spec(MIRRORED, checks={"metrics": [ERRORS]})
    world = mirrored_rollout(spec)
    assert world.status.rollout.step == "Mirroring"
    route = world.route["spec"]["rules"][0]
    assert world.route_weights() == {"blue": 100, "green": 0}
    assert route["filters"] == [{"type": "RequestMirror", "requestMirror": {
        "backendRef": {"group": "", "kind": "Service", "name": "credit-green", "port": 80}, "percent": 20}}]
    assert world.status.traffic == {"blue": 100, "green": 0}
    assert "mirror 20% to green" in world.status.traffic_summary
    assert world.status.rollout.mirror_started_at is not None
    world.advance(121)
    for _ in range(4):
        world.accept_route()
        world.step(Gates(verdicts={"errors": PASS}))
    assert world.status.rollout.step == "Analysing"
    assert world.route_weights() == {"blue": 0, "green": 100}
    assert "filters" not in world.route["spec"]["rules"][0]
    assert_routes_valid(world)


def test_a_failing_check_during_the_mirror_reverts_before_the_candidate_had_any_weight():
    spec = gateway_spec(MIRRORED, checks={"metrics": [{**ERRORS, "failureLimit": 1}]})
    world = mirrored_rollout(spec)
    assert world.status.rollout.step == "Mirroring"
    world.advance(10)
    world.step(Gates(verdicts={"errors": FAIL}))
    assert world.status.phase == "RolledBack" and condition(world, "RolledBack").reason == "CheckFailed"
    assert world.route_weights() == {"blue": 100, "green": 0}
    assert "filters" not in world.route["spec"]["rules"][0]  # the mirror is gone too
    weights = [{ref["name"]: ref["weight"] for ref in body["spec"]["rules"][0]["backendRefs"]}
               for body in world.route_writes]
    assert all(w["credit-green"] == 0 for w in weights)  # no route ever gave the candidate a request to answer


def test_the_mirror_window_starts_when_the_parent_accepts_the_mirror():
    spec = gateway_spec(MIRRORED, checks={"metrics": [ERRORS]})
    world = deployed(**spec)
    world.change_spec(uri=NEW_URI, **spec)
    for _ in range(6):
        if "green" in world.deployments:
            world.make_ready("green")
        world.step(Gates(verdicts={"errors": PASS}))
    assert world.status.rollout.step == "Mirroring" and world.status.rollout.mirror_started_at is None
    assert condition(world, "Progressing").reason == "RouteNotAccepted"


def test_endpoints_without_gateway_api_write_no_route():
    world = deployed()
    world.change_spec(uri=NEW_URI)
    world.settle()
    assert world.route is None and world.route_writes == []


def test_removing_gateway_api_deletes_the_route_and_the_endpoint_service_alone_carries_traffic():
    world = deployed(**gateway_spec())
    world.change_spec(uri=NEW_URI, **gateway_spec())
    for _ in range(30):
        world.advance(30)
        world.settle()
    assert world.status.active_slot == "green" and world.route_weights() == {"blue": 0, "green": 100}
    writes = len(world.route_writes)

    world.change_spec(uri=NEW_URI)  # the same model, without spec.traffic.gatewayAPI
    decision = world.step()
    assert [a for a in decision.actions if isinstance(a, DeleteRoute)] == [DeleteRoute(name="credit")]
    assert not any(isinstance(a, ApplyRoute) for a in decision.actions)
    assert any(e.reason == "RouteDeleted" for e in world.events)
    world.settle()
    assert world.route is None and world.route_deletes == ["credit"] and len(world.route_writes) == writes
    assert world.selected_slot() == "green"  # the slot that held all the route's traffic
    assert world.status.phase == "Healthy" and world.status.traffic == {"blue": 0, "green": 100}


def test_without_a_route_to_delete_nothing_is_deleted():
    world = deployed()
    world.change_spec(uri=NEW_URI)
    world.settle()
    assert world.route_deletes == []
