"""What the decision asks the cluster layer to do. Plain data: tests compare them directly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class ApplyDeployment:
    """Create the slot's Deployment, or bring it to this body (a new revision). The body has no
    replicas: a new Deployment starts at 1, an existing one keeps its count."""
    slot: str
    body: dict[str, Any]


@dataclass(frozen=True)
class ScaleDeployment:
    """Set the slot's replicas (a merge patch): only for a slot no autoscaler drives."""
    slot: str
    replicas: int


@dataclass(frozen=True)
class HandOverReplicas:
    """Give ``spec.replicas`` a second owner before an apply that no longer names it.

    A Deployment applied by slotkeeper before 0.2 has its replicas owned by slotkeeper's apply; an
    apply without them would make the apiserver remove the field (replicas back to 1). This applies
    ``spec.replicas`` alone, at the count the slot has, as another field manager (Kubernetes'
    "transferring ownership" of server-side apply), so the apply after it drops only its own claim.
    """
    slot: str
    replicas: int


@dataclass(frozen=True)
class ApplyAutoscaler:
    """Create or update the slot's HorizontalPodAutoscaler (server-side apply)."""
    slot: str
    body: dict[str, Any]


@dataclass(frozen=True)
class DeleteAutoscaler:
    """The slot stops being autoscaled (it is scaled down, or autoscaling is off): no autoscaler may
    scale it back up. Deleting one that is gone already is fine."""
    slot: str


@dataclass(frozen=True)
class ApplyDisruptionBudget:
    """Create or update the slot's PodDisruptionBudget (server-side apply)."""
    slot: str
    body: dict[str, Any]


@dataclass(frozen=True)
class CreateService:
    """Create a Service that does not exist yet (slot Services, the endpoint Service)."""
    body: dict[str, Any]


@dataclass(frozen=True)
class SwitchTraffic:
    """Point the endpoint Service's selector elsewhere: the one write that moves traffic."""
    selector: dict[str, str]


@dataclass(frozen=True)
class ApplyRoute:
    """Create or update the endpoint's HTTPRoute (server-side apply): with Gateway API traffic, the
    write that moves traffic (its weights) and mirrors it."""
    body: dict[str, Any]


@dataclass(frozen=True)
class DeleteRoute:
    """Delete the endpoint's HTTPRoute (``spec.traffic.gatewayAPI`` was removed): the endpoint
    Service alone carries traffic again. Deleting one that is gone already is fine."""
    name: str


@dataclass(frozen=True)
class EmitEvent:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class CreateKeysSecret:
    """Create the endpoint's keys Secret with fresh random keys, unless it exists (a 409 is the
    expected answer then, and the Secret is left as it is). The keys are made by the cluster layer, at
    the moment of the create: they are never part of a decision, a status or a log line."""
    name: str
    owner_uid: str  # the ModelEndpoint's: the Secret goes with it


@dataclass(frozen=True)
class CreateJob:
    """Create the quality monitor's Job (batch/v1) with its deterministic name; a 409 means it was
    made already (a pass that crashed before its status write) and is the expected answer then."""
    body: dict[str, Any]


@dataclass(frozen=True)
class ApplyCronJob:
    """Create or update a scheduled batch job's CronJob (server-side apply)."""
    body: dict[str, Any]


@dataclass(frozen=True)
class DeleteCronJob:
    """Delete a CronJob whose schedule left the spec (its Jobs go with it); gone already is fine."""
    name: str


Action = (ApplyDeployment | ScaleDeployment | HandOverReplicas | ApplyAutoscaler | DeleteAutoscaler
          | ApplyDisruptionBudget | CreateService | SwitchTraffic | ApplyRoute | DeleteRoute | EmitEvent
          | CreateKeysSecret | CreateJob | ApplyCronJob | DeleteCronJob)
