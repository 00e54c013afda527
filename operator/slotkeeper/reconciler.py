"""One endpoint's reconcile pass: observe -> decide -> act -> remember, and nothing else.

The kopf daemon (handlers.py) calls :meth:`EndpointReconciler.reconcile` whenever something about
the endpoint may have changed, and again after the delay it returns.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping

from pydantic import ValidationError

from .actions import ApplyAutoscaler, ApplyDeployment, DeleteAutoscaler, ScaleDeployment
from .api import ModelEndpointSpec, ModelEndpointStatus
from .cluster import Cluster, GatewayAPIMissing, merge_patch
from .kube_api import ApiError
from .conditions import set_condition
from .clock import format_time
from .checks.runner import CheckRunner
from .decide import Endpoint, Gates, decide_next_step
from .metrics import OperatorMetrics
from .observe import (AutoscalerSummary, DeploymentSummary, DisruptionBudgetSummary, JobSummary, Observed,
                      PodSummary, RouteSummary, observe_endpoint)
from .recent_writes import RecentWrites
from .status_report import slot_report

# With nothing under way, look again this rarely (level-triggered safety net; it costs no API call).
IDLE_RESYNC_SECONDS = 600.0
# An endpoint that wants an HTTPRoute on a cluster without the Gateway API looks again this often.
GATEWAY_API_RETRY_SECONDS = 60.0
# Writes that change what status.slots reports of a slot (its revision, replicas or autoscaler).
# Not HandOverReplicas: it writes the count the slot has already, and recent_writes does not keep it.
SLOT_WRITES = (ApplyDeployment, ScaleDeployment, ApplyAutoscaler, DeleteAutoscaler)
STATUS_KEYS = frozenset(field.alias or name for name, field in ModelEndpointStatus.model_fields.items())

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ObservedSources:
    """The watch-fed views of what the endpoint owns (owned.py's indexes in production)."""
    deployments: Iterable[DeploymentSummary]
    pods: Iterable[PodSummary]
    services: Mapping[str, Mapping[str, str]]  # Service name -> selector
    autoscalers: Iterable[AutoscalerSummary] = ()
    disruption_budgets: Iterable[DisruptionBudgetSummary] = ()
    routes: Iterable[RouteSummary] = ()  # the endpoint's HTTPRoute (Gateway API), when the cluster has one
    jobs: Iterable[JobSummary] = ()  # the quality monitor's Jobs
    service_grpc_ports: Mapping[str, int | None] = field(default_factory=dict)  # Service name -> its grpc port


def spec_error(error: ValidationError) -> str:
    """'spec.checks.metrics.0.max: Input should be a valid number' for the first few problems."""
    parts = []
    for problem in error.errors()[:3]:
        location = ".".join(str(item) for item in ("spec", *problem["loc"]))
        parts.append(f"{location}: {problem['msg']}")
    return "; ".join(parts)


# Answers meaning "no object can be built from this spec": 400 when the body cannot even be decoded
# (an invalid quantity on create), 422 when it decodes but does not validate (the same on a patch),
# and the 500 a server-side apply answers when the body does not fit the object's schema.
SPEC_ERRORS = frozenset({400, 422})
APPLY_SHAPE_ERROR = "failed to create typed patch object"
# A quoted value this long is an object the apiserver echoes whole (a patch it could not apply).
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
LONG_QUOTE = 120


def is_spec_error(error: ApiError) -> bool:
    if error.status in SPEC_ERRORS:
        return True
    return error.status == 500 and api_message(error).startswith(APPLY_SHAPE_ERROR)


class EndpointGone(Exception):
    """The endpoint's status cannot be written because the endpoint no longer exists."""


def api_message(error: ApiError) -> str:
    """The apiserver's own words from a Status body (they name the field and the cause), whole, with
    any echoed object elided: it is long, and may hold values (env) that do not belong in status."""
    try:
        message = json.loads(error.body or "{}").get("message") or error.reason
    except (ValueError, AttributeError):
        message = error.reason
    elided = _QUOTED.sub(lambda quote: quote.group(0) if len(quote.group(0)) <= LONG_QUOTE else '"<object>"',
                         str(message))
    return elided.strip()


@dataclass
class EndpointReconciler:
    namespace: str
    name: str
    cluster: Cluster
    post_event: Callable[..., None]
    checks: CheckRunner | None = None
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
    # The status as last written: the watch may lag behind our own patch.
    written_status: dict[str, Any] | None = None
    recent_writes: RecentWrites = field(default_factory=RecentWrites)
    writes_done: int = 0  # successful writes so far: a failed pass that wrote something made progress
    metrics: OperatorMetrics | None = None
    _validated_spec: tuple[Any, ModelEndpointSpec] | None = field(default=None, repr=False)

    async def reconcile(self, body: Mapping[str, Any], sources: ObservedSources) -> float:
        """One pass. Returns the seconds until the next pass is due without any event."""
        meta = body.get("metadata", {})
        current_status = self.written_status if self.written_status is not None else dict(body.get("status") or {})
        # What the watch shows, not what this instance last wrote. A body without "status" is one whose
        # watched status the loop already dropped after its own write (handlers.reconcile_endpoint, to
        # save memory): no news, and not an empty status to count the history against again. A new
        # endpoint has no status yet either: that one is news (Pending).
        key = (self.namespace, self.name)
        if self.metrics is not None and ("status" in body or not self.metrics.knows(key)):
            self.metrics.observe_body(key, body)
        try:
            spec = self._spec(meta.get("generation"), body.get("spec") or {})
        except ValidationError as error:
            await self._report_invalid_spec(meta, current_status, spec_error(error))
            return IDLE_RESYNC_SECONDS

        endpoint = Endpoint(
            name=self.name, namespace=self.namespace, uid=meta.get("uid", ""), generation=meta.get("generation"),
            spec=spec, status=ModelEndpointStatus.model_validate(current_status),
            annotations=meta.get("annotations") or {},
        )
        watched = self._observe(sources)
        observed = self.recent_writes.overlay(watched)
        now = self.clock()
        gates = await self.checks.run(endpoint, observed, now) if self.checks else Gates()
        decision = decide_next_step(endpoint, observed, now, gates)
        for action in decision.actions:
            try:
                await self.cluster.apply(self.namespace, self.name, action, self.post_event)
            except ApiError as error:
                if not is_spec_error(error):  # only the spec can fix these, retrying cannot
                    raise
                if self.metrics is not None:
                    self.metrics.api_error(error)
                await self._report_invalid_spec(meta, current_status, f"the API refused an object rendered from "
                                                                      f"the spec: {api_message(error)}")
                return IDLE_RESYNC_SECONDS
            except GatewayAPIMissing as error:
                await self._report_gateway_api_missing(meta, current_status, str(error))
                return GATEWAY_API_RETRY_SECONDS
            self.recent_writes.remember(self.name, action, observed)
            if self.metrics is not None:
                self.metrics.action_applied((self.namespace, self.name), endpoint.status, action, self.clock())
            self.writes_done += 1
        status = decision.status
        if any(isinstance(action, SLOT_WRITES) for action in decision.actions):
            # status.slots as the next pass would report it, with this pass's accepted writes laid over
            # what the watches show (a Deployment just applied: its revision and replicas, none ready
            # yet): written now, not by one more status write in the next pass.
            status = status.model_copy(update={"slots": slot_report(self.recent_writes.overlay(watched))})
        await self._write_status(current_status, status.to_api())
        return decision.requeue_after if decision.requeue_after is not None else IDLE_RESYNC_SECONDS

    def _spec(self, generation: Any, raw: Mapping[str, Any]) -> ModelEndpointSpec:
        """The validated spec, validated again only when its generation changed: the apiserver
        raises metadata.generation on every change of spec (status is a subresource), and most
        passes see the spec of the pass before."""
        cached = self._validated_spec
        if cached is not None and generation is not None and cached[0] == generation:
            return cached[1]
        spec = ModelEndpointSpec.model_validate(raw)
        self._validated_spec = (generation, spec)
        return spec

    def _observe(self, sources: ObservedSources) -> Observed:
        services = sources.services
        return observe_endpoint(
            deployments=sources.deployments,
            pods=sources.pods,
            endpoint_selector=services.get(self.name),
            slot_services=[name[len(self.name) + 1:] for name in services if name != self.name],
            autoscalers=sources.autoscalers,
            disruption_budgets=sources.disruption_budgets,
            route=next(iter(sources.routes), None),
            jobs=sources.jobs,
            service_grpc_ports=sources.service_grpc_ports,
        )

    async def _write_status(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        # Keys the operator does not own (e.g. a kopf bookkeeping key) are left alone.
        owned_old = {key: value for key, value in old.items() if key in STATUS_KEYS}
        patch = merge_patch(owned_old, new)
        if patch:
            try:
                await self.cluster.patch_status(self.namespace, self.name, patch)
            except ApiError as error:
                if error.status == 404:
                    raise EndpointGone(f"{self.namespace}/{self.name}") from error
                raise
            self.writes_done += 1
        self.written_status = {**old, **new}
        for key in owned_old.keys() - new.keys():
            self.written_status.pop(key, None)

    async def _report_gateway_api_missing(self, meta: Mapping[str, Any], old: dict[str, Any], cause: str) -> None:
        """spec.traffic.gatewayAPI on a cluster without the Gateway API CRDs: say so and keep what runs."""
        status = ModelEndpointStatus.model_validate(old)
        now = format_time(self.clock())
        generation = meta.get("generation")
        message = (f"spec.traffic.gatewayAPI needs the Gateway API CRDs (HTTPRoute, gateway.networking.k8s.io/v1): "
                   f"{cause}; install them, or remove spec.traffic.gatewayAPI")
        conditions = list(status.conditions)
        for type_, value in (("Degraded", True), ("Progressing", False), ("RouteAccepted", False)):
            conditions = set_condition(conditions, type_, value, "GatewayAPIMissing", message, now, generation)
        new_status = status.model_copy(update={"phase": "Degraded", "observed_generation": generation,
                                               "conditions": conditions})
        if new_status != status:
            self.post_event(type="Warning", reason="GatewayAPIMissing", message=message)
        await self._write_status(old, new_status.to_api())

    async def _report_invalid_spec(self, meta: Mapping[str, Any], old: dict[str, Any], message: str) -> None:
        """Only the operator can tell: keep whatever runs, say which field is wrong, create nothing."""
        status = ModelEndpointStatus.model_validate(old)
        now = format_time(self.clock())
        generation = meta.get("generation")
        conditions = set_condition(list(status.conditions), "Degraded", True, "InvalidSpec", message, now, generation)
        new_status = status.model_copy(update={"phase": "Degraded", "observed_generation": generation,
                                               "conditions": conditions})
        if new_status != status:
            self.post_event(type="Warning", reason="InvalidSpec", message=message)
        await self._write_status(old, new_status.to_api())
