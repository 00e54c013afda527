"""Which existing Services must be applied again because their gRPC port is not what the spec says. Pure.

With ``spec.serving.grpcPort`` every Service of the endpoint (both slot Services and the endpoint
Service) carries a second port named ``grpc`` with ``appProtocol: grpc`` (render.py): the name and
appProtocol are what Gateway API GRPCRoutes, Istio and Linkerd go by to treat the port as HTTP/2
gRPC. Without it they carry only ``http``. A change is one more server-side apply of the whole
Service with slotkeeper's field manager: the apply owns the ports it sent, so one that leaves
``grpc`` out removes it (tests/contract pins that).

The ports follow the spec, not the revision a slot runs: while a rollout that turns gRPC on is under
way, the stable slot's pods have no ``grpc`` container port yet, so that Service port has no
endpoints there until the candidate takes over (the HTTP port is unaffected either way).
"""

from __future__ import annotations

from typing import Mapping

from .actions import CreateService
from .api import SLOTS
from .render import render_endpoint_service, render_slot_service, slot_object_name


def grpc_port_writes(owner: dict, grpc_port: int | None, grpc_ports: Mapping[str, int | None],
                     existing_slots: frozenset[str], endpoint_selector: Mapping[str, str] | None,
                     applied: frozenset[str]) -> list[CreateService]:
    """Applies for the Services that exist and show another gRPC port than ``grpc_port``.

    ``grpc_ports`` is what the cluster shows (Service name -> port, None: no grpc port);
    ``endpoint_selector`` the endpoint Service's selector once this pass's actions ran (None: it
    does not exist); ``applied`` the Service names this pass applies already (rendered with the
    port, nothing more to do for them).
    """
    endpoint = owner["metadata"]["name"]
    writes = []
    for slot in SLOTS:
        name = slot_object_name(endpoint, slot)
        if slot in existing_slots and name not in applied and grpc_ports.get(name) != grpc_port:
            writes.append(CreateService(render_slot_service(owner, slot, grpc_port)))
    if endpoint_selector is not None and endpoint not in applied and grpc_ports.get(endpoint) != grpc_port:
        writes.append(CreateService(render_endpoint_service(owner, dict(endpoint_selector), grpc_port)))
    return writes
