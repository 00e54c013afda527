"""What the decision asks the cluster layer to do. Plain data: tests compare them directly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class ApplyDeployment:
    """Create the slot's Deployment, or bring it to this body (a new revision or replica count)."""
    slot: str
    body: dict[str, Any]


@dataclass(frozen=True)
class ScaleDeployment:
    slot: str
    replicas: int


@dataclass(frozen=True)
class CreateService:
    """Create a Service that does not exist yet (slot Services, the endpoint Service)."""
    body: dict[str, Any]


@dataclass(frozen=True)
class SwitchTraffic:
    """Point the endpoint Service's selector elsewhere: the one write that moves traffic."""
    selector: dict[str, str]


@dataclass(frozen=True)
class EmitEvent:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


Action = ApplyDeployment | ScaleDeployment | CreateService | SwitchTraffic | EmitEvent
