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

from .actions import Action, ApplyDeployment, CreateService, ScaleDeployment, SwitchTraffic
from .observe import DeploymentSummary, Observed, SlotObservation, summarise_deployment

EXPIRY_SECONDS = 30.0


@dataclass
class RecentWrites:
    clock: Callable[[], float] = time.monotonic
    deployments: dict[str, tuple[str | None, int, float]] = field(default_factory=dict)  # slot -> revision, replicas
    selector: tuple[dict[str, str], float] | None = None
    services: dict[str, float] = field(default_factory=dict)  # slot Services created, by slot ("" = endpoint)

    def remember(self, endpoint: str, action: Action, observed: Observed) -> None:
        now = self.clock()
        if isinstance(action, ApplyDeployment):
            summary = summarise_deployment(action.body)
            self.deployments[action.slot] = (summary.revision, summary.replicas, now)
        elif isinstance(action, ScaleDeployment):
            revision = self.deployments.get(action.slot, (observed.slot(action.slot).revision,))[0]
            self.deployments[action.slot] = (revision, action.replicas, now)
        elif isinstance(action, SwitchTraffic):
            self.selector = (dict(action.selector), now)
        elif isinstance(action, CreateService):
            name = action.body["metadata"]["name"]
            if name == endpoint:
                self.selector = (dict(action.body["spec"]["selector"]), now)
            else:
                self.services[name.rsplit("-", 1)[-1]] = now

    def overlay(self, observed: Observed) -> Observed:
        """The observed world with writes the watches have not delivered yet laid over it."""
        now = self.clock()
        slots = dict(observed.slots)
        for slot, (revision, replicas, at) in list(self.deployments.items()):
            seen = observed.slot(slot).deployment
            if now - at > EXPIRY_SECONDS or (seen and (seen.revision, seen.replicas) == (revision, replicas)):
                del self.deployments[slot]
                continue
            slots[slot] = SlotObservation(deployment=_expected(slot, seen, revision, replicas),
                                          pods=observed.slot(slot).pods)

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
        return observed.expecting(slots, selector, frozenset(services))


def _expected(slot: str, seen: DeploymentSummary | None, revision: str | None, replicas: int) -> DeploymentSummary:
    if seen is None or seen.revision != revision:
        return DeploymentSummary(slot=slot, revision=revision, replicas=replicas)  # new pods: none ready yet
    return dataclasses.replace(seen, replicas=replicas)
