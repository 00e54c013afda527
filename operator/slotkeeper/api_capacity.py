"""A slot's capacity in the ModelEndpoint API: quantities and container resources, the autoscaler
(a HorizontalPodAutoscaler per slot, in the autoscaling/v2 shape) and the disruption budget.

Part of the spec's models (api.py imports those its Serving uses); what api.py says about the CRD,
CEL rules and the validators that mirror them holds here.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, PlainValidator, WithJsonSchema, model_validator

from .api_base import ApiModel, cel

# A resource.Quantity as controller-gen writes it into generated CRDs (e.g. a container's
# resources.limits), with the sign left out: requests and limits must not be negative, which the
# apiserver checks only when it gets the Deployment. `$` is the end of the text in RE2 and in Rust's
# regex (pydantic); `pattern` and `maxLength` apply to strings only, `minimum` to integers only.
QUANTITY_PATTERN = (r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
                    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
QUANTITY_MAX_LENGTH = 64
MAX_RESOURCES = 16
QUANTITY_SCHEMA: dict[str, Any] = {
    # The one union a structural schema allows: no `type` here, exactly these two under anyOf.
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "x-kubernetes-int-or-string": True,
    "pattern": QUANTITY_PATTERN,
    "maxLength": QUANTITY_MAX_LENGTH,
    "minimum": 0,
}


def _quantity(value: Any) -> int | str:
    """What the CRD accepts for a quantity, kept as written (an int stays an int: the revision hash
    and the rendered Deployment see the user's value)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"a quantity is an integer or a string such as 500m, 2 or 1Gi, not {type(value).__name__}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a quantity must not be negative: {value}")
        return value
    if len(value) > QUANTITY_MAX_LENGTH:
        raise ValueError(f"a quantity has at most {QUANTITY_MAX_LENGTH} characters")
    if not re.fullmatch(QUANTITY_PATTERN, value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (such as 500m, 2, 1.5 or 1Gi)")
    return value


Quantity = Annotated[int | str, PlainValidator(_quantity), WithJsonSchema(QUANTITY_SCHEMA)]
ResourceList = Annotated[dict[str, Quantity], Field(max_length=MAX_RESOURCES)]


class Resources(ApiModel):
    """A container's resources, as core/v1 ResourceRequirements without ``claims`` (a claim names an
    entry of the pod's ``resourceClaims``, which slotkeeper does not render)."""

    requests: ResourceList | None = Field(
        None, description="Resource name (cpu, memory, nvidia.com/gpu, ...) to the minimum amount required.",
    )
    limits: ResourceList | None = Field(
        None, description="Resource name to the maximum amount allowed.",
    )


# ------------------------------------------------------------------------------- autoscaling

# An int-or-string "n" or "n%", as a PodDisruptionBudget's maxUnavailable: at least 1 pod or 1 %
# (0 would block every node drain for good).
INT_OR_PERCENT_PATTERN = r"^([1-9][0-9]?|100)%$"
INT_OR_PERCENT_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "x-kubernetes-int-or-string": True,
    "pattern": INT_OR_PERCENT_PATTERN,
    "maxLength": 4,
    "minimum": 1,
}


def _int_or_percent(value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"a number of pods (1 or more) or a percentage such as 25%, not {type(value).__name__}")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"at least 1 pod: {value} would block every node drain")
        return value
    if not re.fullmatch(INT_OR_PERCENT_PATTERN, value):
        raise ValueError(f"{value!r} is not a percentage from 1% to 100%")
    return value


IntOrPercent = Annotated[int | str, PlainValidator(_int_or_percent), WithJsonSchema(INT_OR_PERCENT_SCHEMA)]


class MetricTarget(ApiModel):
    """An autoscaling/v2 MetricTarget: a Utilization percent (of the pods' requests) or an AverageValue."""

    model_config = ConfigDict(json_schema_extra=cel(
        ("self.type == 'Utilization' ? (has(self.averageUtilization) && !has(self.averageValue)) "
         ": (has(self.averageValue) && !has(self.averageUtilization))",
         "a Utilization target sets averageUtilization, an AverageValue target sets averageValue"),
    ))
    type: Literal["Utilization", "AverageValue"]
    average_utilization: int | None = Field(
        None, ge=1, le=1000, description="Percent of the pods' resource requests (type Utilization).",
    )
    average_value: Quantity | None = Field(None, description="The per-pod average (type AverageValue), a quantity.")

    @model_validator(mode="after")
    def _one_value(self) -> MetricTarget:
        utilization = self.type == "Utilization"
        if utilization != (self.average_utilization is not None) or utilization == (self.average_value is not None):
            raise ValueError("a Utilization target sets averageUtilization, an AverageValue target sets averageValue")
        return self


class ResourceMetric(ApiModel):
    name: Literal["cpu", "memory"] = Field(description="The container resource whose use is averaged over the pods.")
    target: MetricTarget


class PodsMetricTarget(ApiModel):
    type: Literal["AverageValue"] = Field("AverageValue", description="Pods metrics are averaged over the pods.")
    average_value: Quantity = Field(description="The wanted per-pod average, a quantity (e.g. 100, 500m).")


class MetricName(ApiModel):
    name: str = Field(
        min_length=1, max_length=253, pattern=r"^[A-Za-z_:][A-Za-z0-9_:.-]*$",
        description="The metric's name as the custom metrics adapter serves it (e.g. slotkeeper_requests_per_second).",
    )


class PodsMetric(ApiModel):
    """A per-pod custom metric, e.g. the serving image's request rate; needs a custom metrics adapter
    (prometheus-adapter, KEDA) that serves it under custom.metrics.k8s.io."""

    metric: MetricName
    target: PodsMetricTarget


class AutoscalingMetric(ApiModel):
    """One target of the autoscaler, in the autoscaling/v2 MetricSpec shape (Resource or Pods)."""

    model_config = ConfigDict(json_schema_extra=cel(
        ("self.type == 'Resource' ? (has(self.resource) && !has(self.pods)) : (has(self.pods) && !has(self.resource))",
         "a Resource metric sets resource, a Pods metric sets pods"),
    ))
    type: Literal["Resource", "Pods"]
    resource: ResourceMetric | None = None
    pods: PodsMetric | None = None

    @model_validator(mode="after")
    def _one_source(self) -> AutoscalingMetric:
        resource = self.type == "Resource"
        if resource != (self.resource is not None) or resource == (self.pods is not None):
            raise ValueError("a Resource metric sets resource, a Pods metric sets pods")
        return self


class ScalingPolicy(ApiModel):
    type: Literal["Pods", "Percent"]
    value: int = Field(ge=1, le=10000, description="Pods, or percent of the current replicas, per period.")
    period_seconds: int = Field(ge=1, le=1800)


class ScalingRules(ApiModel):
    stabilization_window_seconds: int | None = Field(
        None, ge=0, le=3600, description="Past recommendations considered; the autoscaler's default: 0 up, 300 down.",
    )
    select_policy: Literal["Max", "Min", "Disabled"] | None = None
    policies: list[ScalingPolicy] | None = Field(None, min_length=1, max_length=10)


class ScalingBehavior(ApiModel):
    """As an autoscaling/v2 HorizontalPodAutoscaler's spec.behavior."""

    scale_up: ScalingRules | None = None
    scale_down: ScalingRules | None = None


class Autoscaling(ApiModel):
    """A HorizontalPodAutoscaler per serving slot. Not part of the revision: changing it changes the
    autoscalers, it does not roll out."""

    model_config = ConfigDict(json_schema_extra=cel(
        ("self.minReplicas <= self.maxReplicas", "minReplicas must not exceed maxReplicas"),
    ))
    min_replicas: int = Field(1, ge=1, le=100, description="The fewest replicas the autoscaler may choose.")
    max_replicas: int = Field(ge=1, le=100, description="The most replicas the autoscaler may choose.")
    metrics: list[AutoscalingMetric] = Field(
        min_length=1, max_length=8,
        description="What the autoscaler scales on (at least one): CPU or memory use, or a per-pod metric such as "
                    "the request rate, in the autoscaling/v2 shape; with several, the largest proposal wins.",
    )
    behavior: ScalingBehavior | None = Field(
        None, description="Scale-up and scale-down rules, as an autoscaling/v2 HPA's spec.behavior.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must not exceed maxReplicas")
        return self


class DisruptionBudget(ApiModel):
    max_unavailable: IntOrPercent = Field(
        1, description="Pods of a slot a voluntary disruption (a node drain) may take at once: a number (1 or more) "
                       "or a percentage. With one replica, 1 lets a drain move it: run two for drain safety.",
    )
