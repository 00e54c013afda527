"""A tiny in-memory cluster for decision tests: it applies actions the way the API would and plays
the Deployment controller on request (``make_ready``), so a rollout can be stepped through."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from slotkeeper.actions import ApplyDeployment, CreateService, EmitEvent, ScaleDeployment, SwitchTraffic
from slotkeeper.api import ModelEndpointSpec, ModelEndpointStatus
from slotkeeper.decide import Decision, Endpoint, Gates, decide_next_step
from slotkeeper.observe import (PodSummary, observe_endpoint, summarise_deployment)
from slotkeeper.render import LABEL_SLOT

T0 = datetime(2026, 11, 21, 12, 0, 0, tzinfo=timezone.utc)


def make_spec(uri: str = "file:///models/credit/1/model.joblib", **overrides: Any) -> ModelEndpointSpec:
    body: dict[str, Any] = {"model": {"name": "credit", "uri": uri}, "serving": {"replicas": 2}}
    for key, value in overrides.items():
        body[key] = value
    return ModelEndpointSpec.model_validate(body)


@dataclass
class World:
    spec: ModelEndpointSpec = field(default_factory=make_spec)
    status: ModelEndpointStatus = field(default_factory=ModelEndpointStatus)
    generation: int = 1
    now: datetime = T0
    deployments: dict[str, dict] = field(default_factory=dict)
    services: dict[str, dict] = field(default_factory=dict)
    pods: list[PodSummary] = field(default_factory=list)
    events: list[EmitEvent] = field(default_factory=list)
    switches: int = 0
    annotations: dict[str, str] = field(default_factory=dict)

    def endpoint(self) -> Endpoint:
        return Endpoint(name="credit", namespace="ml", uid="uid-1", generation=self.generation,
                        spec=self.spec, status=self.status, annotations=dict(self.annotations))

    def observed(self):
        endpoint_service = self.services.get("credit")
        return observe_endpoint(
            deployments=[summarise_deployment(d) for d in self.deployments.values()],
            pods=self.pods,
            endpoint_selector=endpoint_service["spec"]["selector"] if endpoint_service else None,
            slot_services=[name.rsplit("-", 1)[1] for name in self.services if name != "credit"],
        )

    def decide(self, gates: Gates = Gates()) -> Decision:
        return decide_next_step(self.endpoint(), self.observed(), self.now, gates)

    def single_step(self, gates: Gates = Gates()) -> Decision:
        """One reconcile pass: decide, apply every action, store the status."""
        decision = self.decide(gates)
        for action in decision.actions:
            self.apply(action)
        self.status = decision.status
        return decision

    def step(self, gates: Gates = Gates()) -> Decision:
        """A pass plus the passes it asks for at once (requeue 0), as the reconcile loop runs them:
        a decision that moves traffic is written first and carried out by the next pass; a pass
        that switched the selector is followed by the one its Service's watch event wakes."""
        decision = self.single_step(gates)
        actions = list(decision.actions)
        for _ in range(5):
            switched = any(isinstance(action, SwitchTraffic) for action in decision.actions)
            if decision.requeue_after != 0 and not switched:
                break
            before = self.status
            decision = self.single_step()
            actions += decision.actions
            if not decision.actions and self.status == before:
                break
        return Decision(status=self.status, actions=actions, requeue_after=decision.requeue_after)

    def apply(self, action) -> None:
        if isinstance(action, ApplyDeployment):
            body = copy.deepcopy(action.body)
            old = self.deployments.get(action.slot)
            body["status"] = {} if old is None or _revision(old) != _revision(body) else old.get("status", {})
            self.deployments[action.slot] = body
        elif isinstance(action, ScaleDeployment):
            self.deployments[action.slot]["spec"]["replicas"] = action.replicas
        elif isinstance(action, CreateService):
            self.services[action.body["metadata"]["name"]] = copy.deepcopy(action.body)
        elif isinstance(action, SwitchTraffic):
            self.services["credit"]["spec"]["selector"] = dict(action.selector)
            self.switches += 1
        elif isinstance(action, EmitEvent):
            self.events.append(action)

    def make_ready(self, slot: str, ready: int | None = None) -> None:
        deployment = self.deployments[slot]
        replicas = deployment["spec"]["replicas"] if ready is None else ready
        deployment["status"] = {"replicas": replicas, "readyReplicas": replicas,
                                "updatedReplicas": replicas, "availableReplicas": replicas}

    def crash(self, slot: str, reason: str = "CrashLoopBackOff") -> None:
        revision = _revision(self.deployments[slot])
        self.pods.append(PodSummary(name=f"credit-{slot}-abc", slot=slot, revision=revision, ready=False,
                                    failure=f"{reason}: back-off restarting failed container"))

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def change_spec(self, **overrides: Any) -> None:
        self.spec = make_spec(**overrides)
        self.generation += 1

    def selected_slot(self) -> str | None:
        return self.services["credit"]["spec"]["selector"].get(LABEL_SLOT)

    def settle(self, max_steps: int = 20) -> None:
        """Reconcile until a step changes nothing, making every Deployment ready in between."""
        for _ in range(max_steps):
            for slot in list(self.deployments):
                if not any(p.slot == slot and p.failure for p in self.pods):
                    self.make_ready(slot)
            if not self.step().actions:
                return
        raise AssertionError("did not settle")


def _revision(deployment: dict) -> str | None:
    return summarise_deployment(deployment).revision
