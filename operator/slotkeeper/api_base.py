"""What the ModelEndpoint API's models share: their base class, CEL rules, the phase and slot types.

The spec's models are in api.py (a slot's capacity in api_capacity.py), the status's in api_status.py;
api.py offers the status's models and those of capacity it uses.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

Phase = Literal["Pending", "Progressing", "Healthy", "Degraded", "RolledBack", "Paused"]
Slot = Literal["blue", "green"]


def cel(*rules: tuple[str, str]) -> dict[str, Any]:
    """JSON-schema extra carrying CEL rules as (rule, message) pairs."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": message} for rule, message in rules]}


FREE_FORM = {"x-kubernetes-preserve-unknown-fields": True}


class ApiModel(BaseModel):
    # strict: "yes" is not a boolean and "2" not a number, exactly as the CRD schema says.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True,
                              strict=True)

    def to_api(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
