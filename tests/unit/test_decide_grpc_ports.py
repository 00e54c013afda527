"""Decision tables for spec.serving.grpcPort on the Services: both slot Services and the endpoint
Service carry a ``grpc`` port while it is set and lose it when it is removed (service_ports.py)."""

from __future__ import annotations

import pytest

from slotkeeper.actions import CreateService, SwitchTraffic
from slotkeeper.observe import service_grpc_port
from slotkeeper.render import LABEL_SLOT, render_endpoint_service, render_slot_service, slot_selector
from slotkeeper.service_ports import grpc_port_writes

from .world import World

SERVICES = ("credit-blue", "credit-green", "credit")
OWNER = {"metadata": {"name": "credit", "namespace": "ml", "uid": "uid-1"}}
BLUE = slot_selector("credit", "blue")


def with_grpc(port: int | None = 9000) -> dict:
    return {"replicas": 2, **({"grpcPort": port} if port is not None else {})}


def ports(world: World) -> dict[str, list[dict]]:
    return {name: world.services[name]["spec"]["ports"] for name in SERVICES}


def grpc_ports(world: World) -> dict[str, int | None]:
    return {name: service_grpc_port(world.services[name]["spec"]) for name in SERVICES}


def service_writes(decision) -> list[str]:
    return [a.body["metadata"]["name"] for a in decision.actions if isinstance(a, CreateService)]


@pytest.mark.parametrize(
    ("wanted", "shown", "existing", "selector", "applied", "written"),
    [
        pytest.param(9000, {}, frozenset(), None, frozenset(), [], id="no-service-yet"),
        pytest.param(None, {n: None for n in SERVICES}, frozenset({"blue", "green"}), BLUE, frozenset(), [],
                     id="off-and-none-has-it"),
        pytest.param(9000, {n: 9000 for n in SERVICES}, frozenset({"blue", "green"}), BLUE, frozenset(), [],
                     id="on-and-all-have-it"),
        pytest.param(9000, {n: None for n in SERVICES}, frozenset({"blue", "green"}), BLUE, frozenset(),
                     list(SERVICES), id="turned-on"),
        pytest.param(None, {n: 9000 for n in SERVICES}, frozenset({"blue", "green"}), BLUE, frozenset(),
                     list(SERVICES), id="turned-off"),
        pytest.param(9001, {n: 9000 for n in SERVICES}, frozenset({"blue", "green"}), BLUE, frozenset(),
                     list(SERVICES), id="port-changed"),
        pytest.param(9000, {"credit-blue": 9000, "credit-green": None}, frozenset({"blue", "green"}), None,
                     frozenset(), ["credit-green"], id="only-the-one-that-differs-and-exists"),
        pytest.param(9000, {n: None for n in SERVICES}, frozenset({"blue", "green"}), BLUE,
                     frozenset({"credit"}), ["credit-blue", "credit-green"], id="applied-this-pass-already"),
    ],
)
def test_which_services_are_applied_again(wanted, shown, existing, selector, applied, written):
    writes = grpc_port_writes(OWNER, wanted, shown, existing, selector, applied)
    assert [w.body["metadata"]["name"] for w in writes] == written
    for write in writes:
        assert service_grpc_port(write.body["spec"]) == wanted
        if write.body["metadata"]["name"] == "credit":
            assert write.body["spec"]["selector"] == selector  # the apply never moves traffic


def test_the_grpc_port_is_named_and_declared_for_meshes_and_grpc_routes():
    for body in (render_slot_service(OWNER, "blue", 9000), render_endpoint_service(OWNER, BLUE, 9000)):
        http, grpc = body["spec"]["ports"]
        assert http["name"] == "http"
        assert grpc == {"name": "grpc", "port": 9000, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"}
    assert [p["name"] for p in render_slot_service(OWNER, "blue")["spec"]["ports"]] == ["http"]


def test_a_new_endpoint_with_grpc_creates_every_service_with_the_port():
    world = World()
    world.change_spec(serving=with_grpc())
    world.settle()
    assert grpc_ports(world) == {name: 9000 for name in SERVICES}
    pod_ports = world.deployments["blue"]["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert {"name": "grpc", "containerPort": 9000, "protocol": "TCP"} in pod_ports  # what targetPort names
    assert service_writes(world.single_step()) == []  # settled: nothing is applied again


def test_turning_grpc_on_then_off_adds_then_removes_the_port_on_all_three_services():
    world = World()
    world.settle()
    assert grpc_ports(world) == {name: None for name in SERVICES}

    world.change_spec(serving=with_grpc())
    first = world.single_step()
    assert sorted(service_writes(first)) == sorted(SERVICES)  # at once, not only after the rollout
    assert grpc_ports(world) == {name: 9000 for name in SERVICES}
    assert world.selected_slot() == "blue"  # the endpoint Service's apply kept the traffic where it was
    world.settle()
    assert world.selected_slot() == "green"  # the candidate took the traffic
    assert grpc_ports(world) == {name: 9000 for name in SERVICES}

    # Mid-analysis: the first pass only moves traffic back (the write-ahead rule keeps the rest for
    # the pass after the status write, which world.step() runs at once).
    world.change_spec(serving=with_grpc(None))
    world.step()
    assert grpc_ports(world) == {name: None for name in SERVICES}
    assert all([p["name"] for p in service_ports] == ["http"] for service_ports in ports(world).values())
    world.settle()
    assert world.selected_slot() == "blue"
    assert service_writes(world.single_step()) == []


def test_a_pass_that_switches_traffic_applies_the_endpoint_service_with_the_new_selector():
    world = World()
    world.settle()
    world.change_spec(serving=with_grpc())
    world.step()
    world.make_ready("green")
    # Lose the port again behind the operator's back, so the switching pass also re-applies it.
    world.services["credit"]["spec"]["ports"] = world.services["credit"]["spec"]["ports"][:1]
    for _ in range(10):
        decision = world.single_step()
        if any(isinstance(a, SwitchTraffic) for a in decision.actions):
            break
        world.make_ready("green")
    else:
        pytest.fail("no traffic switch")
    applied = [a for a in decision.actions if isinstance(a, CreateService) and a.body["metadata"]["name"] == "credit"]
    switch = next(a for a in decision.actions if isinstance(a, SwitchTraffic))
    assert applied and applied[-1].body["spec"]["selector"] == switch.selector
    assert decision.actions.index(applied[-1]) > decision.actions.index(switch)
    assert world.services["credit"]["spec"]["selector"][LABEL_SLOT] == "green"
    assert service_grpc_port(world.services["credit"]["spec"]) == 9000
