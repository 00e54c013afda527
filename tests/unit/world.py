"""A tiny in-memory cluster for decision tests: it applies actions the way the API would and plays
the Deployment controller on request (``make_ready``) and a HorizontalPodAutoscaler
(``hpa_scales``), so a rollout can be stepped through."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from slotkeeper.actions import (ApplyAutoscaler, ApplyCronJob, ApplyDeployment, ApplyDisruptionBudget, ApplyRoute, CreateJob,
                                CreateService, DeleteAutoscaler, DeleteCronJob, DeleteRoute, EmitEvent, HandOverReplicas,
                                ScaleDeployment, SwitchTraffic)
from slotkeeper.api import ModelEndpointSpec, ModelEndpointStatus
from slotkeeper.decide import Decision, Endpoint, Gates, decide_next_step
from slotkeeper.observe import (JobSummary, PodSummary, observe_endpoint, summarise_autoscaler, summarise_deployment,
                                service_grpc_port, summarise_disruption_budget, summarise_route)
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
    autoscalers: dict[str, dict] = field(default_factory=dict)  # slot -> HorizontalPodAutoscaler
    disruption_budgets: dict[str, dict] = field(default_factory=dict)  # slot -> PodDisruptionBudget
    replica_writes: list[tuple[str, int]] = field(default_factory=list)  # (slot, replicas) the operator wrote
    handovers: list[tuple[str, int]] = field(default_factory=list)
    resets: list[str] = field(default_factory=list)  # slots whose replicas an apply reset to 1 (the SSA trap)
    co_owned: set[str] = field(default_factory=set)  # slots whose replicas another manager owns too
    route: dict | None = None  # the endpoint's HTTPRoute (Gateway API), as the apiserver holds it
    route_writes: list[dict] = field(default_factory=list)  # every route body the operator applied
    route_deletes: list[str] = field(default_factory=list)  # the routes the operator deleted
    gateway_accepts: bool = True  # settle(): the Gateway controller accepts each new route generation
    jobs: dict[str, JobSummary] = field(default_factory=dict)  # the quality monitor's Jobs, by name
    job_creates: list[dict] = field(default_factory=list)  # every Job body the operator sent (409s too)
    cron_jobs: dict[str, dict] = field(default_factory=dict)  # batch schedules' CronJobs, by name
    cron_job_applies: list[dict] = field(default_factory=list)  # every CronJob body the operator applied

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
            autoscalers=[summarise_autoscaler(a) for a in self.autoscalers.values()],
            disruption_budgets=[summarise_disruption_budget(b) for b in self.disruption_budgets.values()],
            route=summarise_route(self.route) if self.route is not None else None,
            jobs=list(self.jobs.values()),
            service_grpc_ports={name: service_grpc_port(svc["spec"]) for name, svc in self.services.items()},
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
            # Server-side apply, as far as spec.replicas goes: the apply owns what it names; a field it owned
            # and stops naming is removed (the default, 1, comes back) unless another manager owns it too.
            if "replicas" in body["spec"]:
                self.replica_writes.append((action.slot, body["spec"]["replicas"]))
                applied = True
            elif old is None:
                body["spec"]["replicas"], applied = 1, False
            else:
                body["spec"]["replicas"], applied = old["spec"]["replicas"], False
                if replicas_applied(old) and action.slot not in self.co_owned:
                    body["spec"]["replicas"] = 1
                    self.resets.append(action.slot)
            set_replicas_applied(body, applied)
            self.deployments[action.slot] = body
        elif isinstance(action, ScaleDeployment):
            self.scale(action.slot, action.replicas)
            self.replica_writes.append((action.slot, action.replicas))
        elif isinstance(action, HandOverReplicas):
            assert self.deployments[action.slot]["spec"]["replicas"] == action.replicas, "a handover never scales"
            self.handovers.append((action.slot, action.replicas))
            self.co_owned.add(action.slot)
        elif isinstance(action, ApplyAutoscaler):
            self.autoscalers[action.slot] = copy.deepcopy(action.body)
        elif isinstance(action, DeleteAutoscaler):
            self.autoscalers.pop(action.slot, None)
        elif isinstance(action, ApplyDisruptionBudget):
            self.disruption_budgets[action.slot] = copy.deepcopy(action.body)
        elif isinstance(action, CreateService):
            self.services[action.body["metadata"]["name"]] = copy.deepcopy(action.body)
        elif isinstance(action, SwitchTraffic):
            self.services["credit"]["spec"]["selector"] = dict(action.selector)
            self.switches += 1
        elif isinstance(action, ApplyRoute):
            body = copy.deepcopy(action.body)
            old = self.route
            generation = 1 if old is None else old["metadata"]["generation"] + (old["spec"] != body["spec"])
            body["metadata"]["generation"] = generation
            body["status"] = {} if old is None else old.get("status", {})
            self.route = body
            self.route_writes.append(copy.deepcopy(action.body))
        elif isinstance(action, CreateJob):
            self.job_creates.append(copy.deepcopy(action.body))
            name = action.body["metadata"]["name"]
            self.jobs.setdefault(name, JobSummary(name=name, revision=action.body["metadata"]["labels"][
                "slotkeeper.io/revision"], outcome="Running"))
        elif isinstance(action, ApplyCronJob):
            self.cron_jobs[action.body["metadata"]["name"]] = copy.deepcopy(action.body)
            self.cron_job_applies.append(copy.deepcopy(action.body))
        elif isinstance(action, DeleteCronJob):
            self.cron_jobs.pop(action.name, None)
        elif isinstance(action, DeleteRoute):
            self.route = None
            self.route_deletes.append(action.name)
        elif isinstance(action, EmitEvent):
            self.events.append(action)

    def make_ready(self, slot: str, ready: int | None = None) -> None:
        deployment = self.deployments[slot]
        replicas = deployment["spec"]["replicas"] if ready is None else ready
        deployment["status"] = {"replicas": replicas, "readyReplicas": replicas,
                                "updatedReplicas": replicas, "availableReplicas": replicas}

    def accept_route(self, accepted: bool = True, resolved: bool = True) -> None:
        """The Gateway controller's verdict on the route's current generation, for every parent."""
        generation = self.route["metadata"]["generation"]
        def condition(kind: str, ok: bool) -> dict:
            return {"type": kind, "status": "True" if ok else "False", "observedGeneration": generation,
                    "reason": kind if ok else "NotAllowedByListeners", "message": "",
                    "lastTransitionTime": "2026-11-21T12:00:00Z"}
        self.route["status"] = {"parents": [
            {"parentRef": parent, "controllerName": "example.com/gateway",
             "conditions": [condition("Accepted", accepted), condition("ResolvedRefs", resolved)]}
            for parent in self.route["spec"]["parentRefs"]]}

    def route_weights(self) -> dict[str, int]:
        return dict(summarise_route(self.route).weights)

    def hpa_scales(self, slot: str, replicas: int | None = None) -> None:
        """The slot's HorizontalPodAutoscaler sets its replicas, as the controller would: to ``replicas``
        (what the metrics call for) within its bounds, or into them when outside; never a slot at 0."""
        hpa = self.autoscalers[slot]["spec"]
        deployment = self.deployments[slot]["spec"]
        if deployment["replicas"] == 0:
            return
        wanted = deployment["replicas"] if replicas is None else replicas
        self.scale(slot, min(max(wanted, hpa["minReplicas"]), hpa["maxReplicas"]))

    def scale(self, slot: str, replicas: int) -> None:
        """Someone writes the slot's replicas (an Update, not an apply): a changed count is theirs now."""
        deployment = self.deployments[slot]
        if deployment["spec"]["replicas"] != replicas:
            deployment["spec"]["replicas"] = replicas
            set_replicas_applied(deployment, False)
            self.co_owned.discard(slot)

    def hpa_bounds(self, slot: str) -> tuple[int, int] | None:
        hpa = self.autoscalers.get(slot)
        return None if hpa is None else (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"])

    def replicas(self, slot: str) -> int:
        return self.deployments[slot]["spec"]["replicas"]

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
        """Reconcile until a step changes nothing, making every Deployment ready in between (and,
        as autoscalers do, bringing each autoscaled slot into its autoscaler's bounds)."""
        for _ in range(max_steps):
            for slot in list(self.autoscalers):
                if slot in self.deployments:
                    self.hpa_scales(slot)
            for slot in list(self.deployments):
                if not any(p.slot == slot and p.failure for p in self.pods):
                    self.make_ready(slot)
            if self.route is not None and self.gateway_accepts:
                self.accept_route()
            if not self.step().actions:
                return
        raise AssertionError("did not settle")


def _revision(deployment: dict) -> str | None:
    return summarise_deployment(deployment).revision


def replicas_applied(deployment: dict) -> bool:
    return summarise_deployment(deployment).replicas_applied


def set_replicas_applied(deployment: dict, applied: bool) -> None:
    """What managedFields say of spec.replicas: slotkeeper's apply owns them, or not."""
    fields = {"f:spec": {"f:replicas": {}}} if applied else {"f:spec": {}}
    deployment["metadata"]["managedFields"] = [
        {"manager": "slotkeeper", "operation": "Apply", "apiVersion": "apps/v1", "fieldsV1": fields}]
