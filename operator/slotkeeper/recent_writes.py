"""What this operator wrote and its watches have not shown yet.

Watches of different resources arrive on different streams: right after switching the selector,
the status patch's own event may wake the reconcile loop before the Service's watch event has
updated the index. Deciding from that stale view would switch (and announce) twice. So each write
is remembered until the index shows it, or until it is old enough that the index must be right.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable

from .actions import (Action, ApplyAutoscaler, ApplyDeployment, ApplyDisruptionBudget, CreateService,
                      ApplyRoute, DeleteAutoscaler, DeleteRoute, ScaleDeployment, SwitchTraffic)
from .observe import (DEFAULT_REPLICAS, AutoscalerSummary, DeploymentSummary, DisruptionBudgetSummary, Observed,
                      RouteSummary, service_grpc_port, summarise_route,
                      summarise_autoscaler, summarise_deployment, summarise_disruption_budget)

# How long a write is trusted without its watch event. Long enough for a watch that lags behind a
# busy apiserver: at 10,000 endpoints created at once (benchmarks/operator) 30 s was not, and 9,353
# endpoints had their selector switched (and TrafficSwitched announced) a second time. The cost of
# longer: a change someone else makes to the same field before our write's event arrives is noticed
# only after this long (the event of their change then hides ours).
EXPIRY_SECONDS = 120.0


@dataclass
class RecentWrites:
    clock: Callable[[], float] = time.monotonic
    # slot -> revision, replicas, whether slotkeeper's apply owns the replicas, when
    deployments: dict[str, tuple[str | None, int, bool, float]] = field(default_factory=dict)
    selector: tuple[dict[str, str], float] | None = None
    services: dict[str, float] = field(default_factory=dict)  # slot Services created, by slot ("" = endpoint)
    grpc_ports: dict[str, tuple[int | None, float]] = field(default_factory=dict)  # Service name -> grpc port applied
    # slot -> the autoscaler applied (None: deleted); slot -> the disruption budget applied
    autoscalers: dict[str, tuple[AutoscalerSummary | None, float]] = field(default_factory=dict)
    disruption_budgets: dict[str, tuple[DisruptionBudgetSummary, float]] = field(default_factory=dict)
    route: tuple[RouteSummary | None, float] | None = None  # the HTTPRoute applied (None: deleted), not shown yet

    def remember(self, endpoint: str, action: Action, observed: Observed) -> None:
        now = self.clock()
        if isinstance(action, ApplyDeployment):
            summary = summarise_deployment(action.body)
            applied = "replicas" in action.body.get("spec", {})
            if applied:
                replicas = summary.replicas
            else:  # a body naming no replicas: an existing Deployment keeps its own
                replicas = self.deployments.get(action.slot, (None, None))[1]
                if replicas is None:
                    seen = observed.slot(action.slot).deployment
                    replicas = seen.replicas if seen is not None else DEFAULT_REPLICAS
            self.deployments[action.slot] = (summary.revision, replicas, applied, now)
        elif isinstance(action, ApplyAutoscaler):
            self.autoscalers[action.slot] = (summarise_autoscaler(action.body), now)
        elif isinstance(action, DeleteAutoscaler):
            self.autoscalers[action.slot] = (None, now)
        elif isinstance(action, ApplyDisruptionBudget):
            self.disruption_budgets[action.slot] = (summarise_disruption_budget(action.body), now)
        elif isinstance(action, ScaleDeployment):
            seen = observed.slot(action.slot).deployment
            revision, before, applied, _ = self.deployments.get(action.slot, (
                observed.slot(action.slot).revision, observed.slot(action.slot).replicas,
                seen is not None and seen.replicas_applied, 0.0))
            # A merge patch that changes the count takes the field from the apply (an entry of its own).
            self.deployments[action.slot] = (revision, action.replicas, applied and before == action.replicas, now)
        elif isinstance(action, SwitchTraffic):
            self.selector = (dict(action.selector), now)
        elif isinstance(action, ApplyRoute):
            applied = summarise_route(action.body)
            self.route = (RouteSummary(config=applied.config, weights=applied.weights, mirror=applied.mirror), now)
        elif isinstance(action, DeleteRoute):
            self.route = (None, now)
        elif isinstance(action, CreateService):
            name = action.body["metadata"]["name"]
            self.grpc_ports[name] = (service_grpc_port(action.body["spec"]), now)
            if name == endpoint:
                self.selector = (dict(action.body["spec"]["selector"]), now)
            else:
                self.services[name.rsplit("-", 1)[-1]] = now

    def overlay(self, observed: Observed) -> Observed:
        """The observed world with writes the watches have not delivered yet laid over it."""
        now = self.clock()
        slots = dict(observed.slots)
        for slot, (revision, replicas, applied, at) in list(self.deployments.items()):
            seen = observed.slot(slot).deployment
            if now - at > EXPIRY_SECONDS or (seen and (seen.revision, seen.replicas) == (revision, replicas)):
                del self.deployments[slot]
                continue
            slots[slot] = dataclasses.replace(observed.slot(slot),
                                              deployment=_expected(slot, seen, revision, replicas, applied))
        for slot, (autoscaler, at) in list(self.autoscalers.items()):
            seen_autoscaler = slots.get(slot, observed.slot(slot)).autoscaler
            shown = autoscaler is None and seen_autoscaler is None or autoscaler is not None and \
                seen_autoscaler is not None and seen_autoscaler.config == autoscaler.config
            if now - at > EXPIRY_SECONDS or shown:
                del self.autoscalers[slot]
                continue
            slots[slot] = dataclasses.replace(slots.get(slot, observed.slot(slot)), autoscaler=autoscaler)
        for slot, (budget, at) in list(self.disruption_budgets.items()):
            seen_budget = slots.get(slot, observed.slot(slot)).disruption_budget
            if now - at > EXPIRY_SECONDS or (seen_budget is not None and seen_budget.config == budget.config):
                del self.disruption_budgets[slot]
                continue
            slots[slot] = dataclasses.replace(slots.get(slot, observed.slot(slot)), disruption_budget=budget)

        selector = observed.endpoint_selector
        if self.selector is not None:
            wanted, at = self.selector
            if now - at > EXPIRY_SECONDS or (selector is not None and dict(selector) == wanted):
                self.selector = None
            else:
                selector = wanted

        services = set(observed.slot_services)
        for slot, at in list(self.services.items()):
            if now - at > EXPIRY_SECONDS or slot in services:
                del self.services[slot]
            else:
                services.add(slot)
        expected = observed.expecting(slots, selector, frozenset(services))
        grpc_ports = dict(observed.service_grpc_ports)
        for name, (port, at) in list(self.grpc_ports.items()):
            if now - at > EXPIRY_SECONDS or (name in grpc_ports and grpc_ports[name] == port):
                del self.grpc_ports[name]
            else:
                grpc_ports[name] = port
        expected = dataclasses.replace(expected, service_grpc_ports=grpc_ports)
        if self.route is not None:
            route, at = self.route
            seen = observed.route
            if now - at > EXPIRY_SECONDS or (seen is None if route is None else
                                             seen is not None and seen.config == route.config):
                self.route = None
            else:
                expected = expected.expecting_route(route)
        return expected


def _expected(slot: str, seen: DeploymentSummary | None, revision: str | None, replicas: int,
              applied: bool) -> DeploymentSummary:
    if seen is None or seen.revision != revision:  # new pods: none ready yet
        return DeploymentSummary(slot=slot, revision=revision, replicas=replicas, replicas_applied=applied)
    return dataclasses.replace(seen, replicas=replicas, replicas_applied=applied)
