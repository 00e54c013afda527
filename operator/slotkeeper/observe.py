"""The observed world of one endpoint, summarised from raw API objects by pure functions.

The cluster layer keeps small summaries (not whole objects) of the Deployments, Services, Pods,
HorizontalPodAutoscalers and PodDisruptionBudgets the operator owns, fed by watches; :func:`observe_endpoint` folds them into what the decision needs.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .render import ANNOTATION_CONFIG, LABEL_REVISION, LABEL_SLOT

LABEL_BATCH = "slotkeeper.io/batch"  # on batch Jobs and pods (batch.py)
JOB_NAME_LABEL = "job-name"  # on a Job's pods, set by the Job controller
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"  # on an Indexed Job's pods, likewise

# The field manager of slotkeeper's server-side applies (cluster.py sends it).
APPLY_MANAGER = "slotkeeper"
# What the apiserver gives a Deployment created without spec.replicas.
DEFAULT_REPLICAS = 1

# Container states that will not heal by waiting: a rollout fails at once instead of at its deadline.
FAIL_FAST_REASONS = frozenset({
    "CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError",
    "InvalidImageName", "CreateContainerError", "RunContainerError",
})


@dataclass(frozen=True)
class DeploymentSummary:
    slot: str
    revision: str | None
    replicas: int
    ready_replicas: int = 0
    updated_replicas: int = 0
    available_replicas: int = 0
    status_replicas: int = 0
    # False while the Deployment controller has not yet seen the latest spec.
    generation_observed: bool = True
    # slotkeeper's server-side apply owns spec.replicas (as every apply before 0.2 made it): an apply
    # without them would reset them to 1, so they are handed over first (actions.HandOverReplicas).
    replicas_applied: bool = False


@dataclass(frozen=True)
class AutoscalerSummary:
    """A slot's HorizontalPodAutoscaler: what slotkeeper applied (its config hash) and what it does."""
    slot: str
    config: str | None
    min_replicas: int = 1
    max_replicas: int = 1
    current_replicas: int | None = None
    desired_replicas: int | None = None


@dataclass(frozen=True)
class DisruptionBudgetSummary:
    slot: str
    config: str | None


@dataclass(frozen=True)
class PodSummary:
    name: str
    slot: str
    revision: str | None
    ready: bool
    ip: str | None = None
    failure: str | None = None  # "<reason>: <message>" of a container stuck in a FAIL_FAST_REASONS state
    job: str | None = None  # a batch pod's Job
    shard: int | None = None  # a batch pod's completion index (an Indexed Job's: parallelism > 1)
    batch_result: BatchResult | None = None  # a batch pod's summary, once it has terminated


@dataclass(frozen=True)
class SlotObservation:
    deployment: DeploymentSummary | None
    pods: tuple[PodSummary, ...] = ()
    autoscaler: AutoscalerSummary | None = None
    disruption_budget: DisruptionBudgetSummary | None = None

    @property
    def revision(self) -> str | None:
        return self.deployment.revision if self.deployment else None

    @property
    def replicas(self) -> int:
        return self.deployment.replicas if self.deployment else 0

    @property
    def ready_replicas(self) -> int:
        return self.deployment.ready_replicas if self.deployment else 0

    @property
    def current_replicas(self) -> int:
        return self.deployment.status_replicas if self.deployment else 0

    def fully_ready(self, revision: str) -> bool:
        """All desired replicas of ``revision`` are updated, available and ready (Argo Rollouts' rule)."""
        d = self.deployment
        return (
            d is not None and d.revision == revision and d.replicas > 0 and d.generation_observed
            and d.updated_replicas >= d.replicas and d.available_replicas >= d.replicas
            and d.ready_replicas >= d.replicas and d.status_replicas <= d.replicas
        )

    def pod_failure(self, revision: str) -> str | None:
        for pod in self.pods:
            if pod.revision == revision and pod.failure:
                return f"pod {pod.name}: {pod.failure}"
        return None


@dataclass(frozen=True)
class RouteSummary:
    """The endpoint's HTTPRoute as watched: what slotkeeper applied (its config hash), the weights and
    mirror it holds, and which of its parents have not accepted this generation of it."""
    config: str | None
    weights: Mapping[str, int] = field(default_factory=dict)  # slot -> weight
    mirror: tuple[str, int] | None = None  # (slot, percent)
    generation: int | None = None
    # Parents (by name) without Accepted=True and ResolvedRefs=True at this generation; None: not
    # known yet (a route just applied, not shown by the watch).
    not_accepted: tuple[str, ...] | None = None

    @property
    def accepted(self) -> bool:
        return self.not_accepted == ()


@dataclass(frozen=True)
class JobSummary:
    """A Job the endpoint owns (a quality-monitor Job, or a batch run: ``batch`` is then its
    ``slotkeeper.io/batch`` label, "" for an ad hoc run): the revision it was made for, how it went."""
    name: str
    revision: str | None
    outcome: str  # Running | Succeeded | Failed
    batch: str | None = None
    created: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    reason: str | None = None  # the Failed condition's reason (BackoffLimitExceeded, PodFailurePolicy, ...)


def summarise_job(body: Mapping[str, Any]) -> JobSummary:
    meta, status = body.get("metadata", {}), body.get("status") or {}
    labels = meta.get("labels") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    state = {kind: (condition or {}).get("status") for kind, condition in conditions.items()}
    # Every completion must have succeeded: an Indexed Job (a sharded batch run) has one per index.
    completions = (body.get("spec") or {}).get("completions") or 1
    if state.get("Complete") == "True" or (status.get("succeeded") or 0) >= completions and state.get("Failed") != "True":
        outcome = "Succeeded"
    elif state.get("Failed") == "True":
        outcome = "Failed"
    else:
        outcome = "Running"
    return JobSummary(name=meta.get("name", ""), revision=labels.get(LABEL_REVISION), outcome=outcome,
                      batch=labels.get(LABEL_BATCH), created=meta.get("creationTimestamp"),
                      start_time=status.get("startTime"), completion_time=status.get("completionTime"),
                      reason=(conditions.get("Failed") or {}).get("reason") if outcome == "Failed" else None)


@dataclass(frozen=True)
class BatchResult:
    """The summary a batch pod wrote as its termination message (only these fields are kept: the
    message is the container's to write, and status must never carry what else it may hold)."""
    rows: int | None
    failed_rows: int | None
    revision: str | None
    outcome: str | None
    reason: str | None


REASON_LENGTH = 300
# userinfo and query strings of URLs (a presigned URL's signature) never reach status or Events.
_URL_SECRETS = re.compile(r"(\w+://)[^/\s@]*@|\?[^\s\"']*")


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def batch_result(statuses: Iterable[Mapping[str, Any]]) -> BatchResult | None:
    """The batch mode's summary from the terminated container's message; None without one."""
    for status in statuses:
        message = ((status.get("state") or {}).get("terminated") or {}).get("message")
        try:
            summary = json.loads(message) if message else None
        except ValueError:
            summary = None
        if not isinstance(summary, dict):
            continue
        reason = summary.get("reason")
        reason = _URL_SECRETS.sub(lambda m: m.group(1) or "?…", reason)[:REASON_LENGTH] \
            if isinstance(reason, str) and reason else None
        revision, outcome = summary.get("revision"), summary.get("outcome")
        return BatchResult(rows=_count(summary.get("rows")), failed_rows=_count(summary.get("failedRows")),
                           revision=revision if isinstance(revision, str) else None,
                           outcome=outcome if outcome in ("Succeeded", "Failed") else None, reason=reason)
    return None


def combine_results(results: Iterable[tuple[int | None, BatchResult]]) -> BatchResult | None:
    """One run's result from its pods' (completion index, summary): rows and failed rows summed over
    the shards that reported (one summary per index), Failed if
    any shard failed, the failed shards' reasons. None when no pod has reported."""
    by_shard = dict(results)
    if not by_shard:
        return None
    if len(by_shard) == 1 and None in by_shard:
        return by_shard[None]
    shards = sorted(by_shard.items(), key=lambda item: item[0] or 0)
    counts = {field: [getattr(result, field) for _, result in shards] for field in ("rows", "failed_rows")}
    failed = [(index, result) for index, result in shards if result.outcome == "Failed"]
    reasons = "; ".join(f"shard {index}: {result.reason}" for index, result in failed if result.reason)
    return BatchResult(
        rows=None if None in counts["rows"] else sum(counts["rows"]),
        failed_rows=None if None in counts["failed_rows"] else sum(counts["failed_rows"]),
        revision=next((result.revision for _, result in shards if result.revision), None),
        outcome="Failed" if failed else shards[0][1].outcome,
        reason=reasons[:REASON_LENGTH] or None)


_SAME = object()  # shown_selector's default: the watches showed what endpoint_selector says


@dataclass(frozen=True)
class Observed:
    slots: Mapping[str, SlotObservation]
    endpoint_selector: Mapping[str, str] | None  # None: the endpoint Service does not exist
    slot_services: frozenset[str] = field(default_factory=frozenset)
    # The selector as the watches last showed it. It differs from endpoint_selector while our own
    # switch is written but not yet seen (recent_writes.py): decisions use endpoint_selector so they
    # never switch twice, status.traffic reports this one, what the cluster really routes by.
    shown_selector: Any = _SAME
    # The endpoint's HTTPRoute (Gateway API), as decisions see it (with our own writes laid over it),
    # and as the watches last showed it (what status.traffic reports).
    route: RouteSummary | None = None
    shown_route: Any = _SAME
    gateway_api_missing: bool = False  # the cluster does not serve HTTPRoutes
    jobs: tuple[JobSummary, ...] = ()  # the quality monitor's Jobs and batch runs (batch/v1)
    batch_results: Mapping[str, BatchResult] = field(default_factory=dict)  # Job name -> its pod's summary
    # Service name -> the number of its port named "grpc" (None: it has none), for every existing Service.
    service_grpc_ports: Mapping[str, int | None] = field(default_factory=dict)

    def slot(self, name: str) -> SlotObservation:
        return self.slots.get(name) or SlotObservation(deployment=None)

    @property
    def cluster_route(self) -> RouteSummary | None:
        return self.route if self.shown_route is _SAME else self.shown_route

    @property
    def cluster_selector(self) -> Mapping[str, str] | None:
        return self.endpoint_selector if self.shown_selector is _SAME else self.shown_selector

    def expecting(self, slots: Mapping[str, SlotObservation], selector: Mapping[str, str] | None,
                  slot_services: frozenset[str]) -> Observed:
        """This world with writes laid over it that the watches have not shown yet; what they did
        show of the selector is kept for reporting."""
        shown = self.cluster_selector
        same = (None if selector is None else dict(selector)) == (None if shown is None else dict(shown))
        return Observed(slots=slots, endpoint_selector=selector, slot_services=slot_services,
                        shown_selector=_SAME if same else shown, route=self.route, shown_route=self.shown_route,
                        gateway_api_missing=self.gateway_api_missing, jobs=self.jobs,
                        batch_results=self.batch_results,
                        service_grpc_ports=self.service_grpc_ports)

    def expecting_route(self, route: RouteSummary | None) -> Observed:
        """This world with a route write (None: a delete) the watches have not shown yet."""
        return dataclasses.replace(self, route=route, shown_route=self.cluster_route)


def summarise_deployment(body: Mapping[str, Any]) -> DeploymentSummary:
    meta, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status") or {}
    labels = meta.get("labels") or {}
    template_labels = (spec.get("template", {}).get("metadata") or {}).get("labels") or {}
    generation = meta.get("generation")
    observed_generation = status.get("observedGeneration")
    return DeploymentSummary(
        slot=labels.get(LABEL_SLOT, ""),
        revision=template_labels.get(LABEL_REVISION) or labels.get(LABEL_REVISION),
        replicas=int(spec.get("replicas", DEFAULT_REPLICAS)),
        ready_replicas=int(status.get("readyReplicas") or 0),
        updated_replicas=int(status.get("updatedReplicas") or 0),
        available_replicas=int(status.get("availableReplicas") or 0),
        status_replicas=int(status.get("replicas") or 0),
        # Test API doubles set no generation; a real apiserver always does.
        generation_observed=generation is None or (observed_generation or 0) >= generation,
        replicas_applied=_applies_replicas(meta.get("managedFields") or []),
    )


def _applies_replicas(managed_fields: Iterable[Mapping[str, Any]]) -> bool:
    for entry in managed_fields:
        if entry.get("manager") == APPLY_MANAGER and entry.get("operation") == "Apply" and \
                not entry.get("subresource") and "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {}):
            return True
    return False


def summarise_autoscaler(body: Mapping[str, Any]) -> AutoscalerSummary:
    meta, spec, status = body.get("metadata", {}), body.get("spec") or {}, body.get("status") or {}
    labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    return AutoscalerSummary(
        slot=labels.get(LABEL_SLOT, ""), config=annotations.get(ANNOTATION_CONFIG),
        min_replicas=int(spec.get("minReplicas") or 1), max_replicas=int(spec.get("maxReplicas") or 1),
        current_replicas=status.get("currentReplicas"), desired_replicas=status.get("desiredReplicas"),
    )


def summarise_disruption_budget(body: Mapping[str, Any]) -> DisruptionBudgetSummary:
    meta = body.get("metadata", {})
    return DisruptionBudgetSummary(slot=(meta.get("labels") or {}).get(LABEL_SLOT, ""),
                                   config=(meta.get("annotations") or {}).get(ANNOTATION_CONFIG))


def _container_failure(statuses: Iterable[Mapping[str, Any]]) -> str | None:
    for status in statuses:
        waiting = (status.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in FAIL_FAST_REASONS:
            message = waiting.get("message") or ""
            return f"{reason}: {message}".rstrip(": ")
    return None


def completion_index(annotations: Mapping[str, str]) -> int | None:
    value = annotations.get(COMPLETION_INDEX_ANNOTATION, "")
    return int(value) if value.isdigit() else None


def summarise_pod(body: Mapping[str, Any]) -> PodSummary:
    meta, status = body.get("metadata", {}), body.get("status") or {}
    labels = meta.get("labels") or {}
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    failure = _container_failure(status.get("initContainerStatuses") or []) or \
        _container_failure(status.get("containerStatuses") or [])
    batch = LABEL_BATCH in labels
    return PodSummary(
        name=meta.get("name", ""), slot=labels.get(LABEL_SLOT, ""), revision=labels.get(LABEL_REVISION),
        ready=ready, ip=status.get("podIP"), failure=failure,
        job=labels.get(JOB_NAME_LABEL) if batch else None,
        shard=completion_index(meta.get("annotations") or {}) if batch else None,
        batch_result=batch_result(status.get("containerStatuses") or []) if batch else None,
    )


def observe_endpoint(
    deployments: Iterable[DeploymentSummary],
    pods: Iterable[PodSummary],
    endpoint_selector: Mapping[str, str] | None,
    slot_services: Iterable[str],
    autoscalers: Iterable[AutoscalerSummary] = (),
    disruption_budgets: Iterable[DisruptionBudgetSummary] = (),
    route: RouteSummary | None = None,
    jobs: Iterable[JobSummary] = (),
    service_grpc_ports: Mapping[str, int | None] | None = None,
) -> Observed:
    by_slot = {d.slot: d for d in deployments}
    hpas = {a.slot: a for a in autoscalers}
    pdbs = {b.slot: b for b in disruption_budgets}
    pods = tuple(pods)
    slots = {
        slot: SlotObservation(deployment=by_slot.get(slot), pods=tuple(p for p in pods if p.slot == slot),
                              autoscaler=hpas.get(slot), disruption_budget=pdbs.get(slot))
        for slot in {*by_slot, *hpas, *pdbs}
    }
    reported: dict[str, list[tuple[int | None, BatchResult]]] = {}
    for pod in pods:
        if pod.job and pod.batch_result is not None:
            reported.setdefault(pod.job, []).append((pod.shard, pod.batch_result))
    results = {job: combine_results(shards) for job, shards in reported.items()}
    return Observed(slots=slots, endpoint_selector=endpoint_selector, slot_services=frozenset(slot_services),
                    route=route, jobs=tuple(jobs), batch_results=results,
                    service_grpc_ports=dict(service_grpc_ports or {}))


def service_grpc_port(spec: Mapping[str, Any]) -> int | None:
    """The number of a Service's port named ``grpc`` (render.py names it so), None without one."""
    for port in spec.get("ports") or []:
        if isinstance(port, Mapping) and port.get("name") == "grpc" and isinstance(port.get("port"), int):
            return port["port"]
    return None


def _parent_key(ref: Mapping[str, Any], namespace: str | None) -> tuple:
    return (ref.get("group", "gateway.networking.k8s.io"), ref.get("kind", "Gateway"), ref.get("name"),
            ref.get("namespace") or namespace, ref.get("sectionName"), ref.get("port"))


def summarise_route(body: Mapping[str, Any]) -> RouteSummary:
    """The route's weights and mirror by slot, and its parents' verdict on this generation: a parent
    has accepted it when its entry in status.parents has Accepted and ResolvedRefs True, both observed
    at the route's metadata.generation (a gateway that has not caught up with a patch has not accepted it)."""
    meta, spec, status = body.get("metadata", {}), body.get("spec") or {}, body.get("status") or {}
    namespace = meta.get("namespace")
    rules = spec.get("rules") or [{}]
    weights: dict[str, int] = {}
    mirror = None
    for ref in rules[0].get("backendRefs") or []:
        weights[str(ref.get("name", "")).rsplit("-", 1)[-1]] = int(ref.get("weight", 1))
    for rule_filter in rules[0].get("filters") or []:
        if rule_filter.get("type") == "RequestMirror":
            requested = rule_filter.get("requestMirror") or {}
            percent = requested.get("percent")
            if percent is None and requested.get("fraction"):
                fraction = requested["fraction"]
                percent = 100 * int(fraction.get("numerator", 0)) // int(fraction.get("denominator", 100))
            mirror = (str((requested.get("backendRef") or {}).get("name", "")).rsplit("-", 1)[-1],
                      100 if percent is None else int(percent))
    generation = meta.get("generation")
    verdicts = {}
    for parent in status.get("parents") or []:
        conditions = {c.get("type"): c for c in parent.get("conditions") or []}
        verdicts[_parent_key(parent.get("parentRef") or {}, namespace)] = all(
            (conditions.get(kind) or {}).get("status") == "True"
            and (generation is None or (conditions.get(kind) or {}).get("observedGeneration") == generation)
            for kind in ("Accepted", "ResolvedRefs"))
    not_accepted = tuple(str(ref.get("name")) for ref in spec.get("parentRefs") or []
                         if not verdicts.get(_parent_key(ref, namespace)))
    return RouteSummary(config=(meta.get("annotations") or {}).get(ANNOTATION_CONFIG), weights=weights,
                        mirror=mirror, generation=generation, not_accepted=not_accepted)
