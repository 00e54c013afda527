"""The operator's Prometheus metrics, derived from what the cluster shows.

Per-endpoint figures (phase, traffic, a rollout under way, quality) are read from the endpoint's
status as the watch delivered it, never from what a pass is about to write, and are kept in a table
that is read at scrape time: an endpoint whose loop ends (deleted, or this instance stops leading)
leaves the table, and its series leave ``/metrics`` with it (label sets stay bounded by the
endpoints that exist). Counters count changes seen in observed status (a new history entry, a new
quality episode, a Job that finished); the first look at an endpoint only sets the baseline, so a
restart does not count old history again. The revert latency is measured at the one write that puts
traffic back on stable, from the failing verdict's time in status (whole seconds, as status keeps
time). Every metric is documented in the README ("Metrics").

The pure functions (``snapshot``, ``new_history``, ``revert_latency``, ``api_error_kind``,
``parse_bind_address``) decide; :class:`OperatorMetrics` only holds the values, and
:func:`serve_metrics` is the HTTP endpoint.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Iterable, Mapping

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from .actions import Action, ApplyRoute, SwitchTraffic
from .api import ModelEndpointStatus
from .clock import parse_time
from .kube_api import ApiError
from .monitor import CONDITION as QUALITY_CONDITION
from .observe import summarise_route
from .render import LABEL_SLOT

PHASES = ("Pending", "Progressing", "Healthy", "Degraded", "RolledBack", "Paused")
# Seconds from a failing verdict to traffic back on stable: one pass is sub-second, a revert that
# waits for the stable slot to scale up takes tens of seconds.
REVERT_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
FINISHED_JOB_OUTCOMES = ("Succeeded", "Failed", "Missing")
# API errors by kind: the Kubernetes reason of the status code (a bounded set), or Unreachable.
ERROR_KINDS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
               410: "Expired", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
               503: "ServiceUnavailable", 504: "Timeout"}

Key = tuple[str, str]  # (namespace, name)


# ------------------------------------------------------------------------------- pure functions


@dataclass(frozen=True)
class EndpointSnapshot:
    """The gauges of one endpoint, as its observed status shows them."""
    phase: str
    traffic: Mapping[str, int] = field(default_factory=dict)  # slot -> percent
    rollout_started: float | None = None  # epoch seconds of status.rollout.startedAt
    quality_degraded: bool | None = None  # None: no spec.monitor


@dataclass(frozen=True)
class Seen:
    """What the counters have counted of one endpoint already."""
    history: frozenset[tuple[str, str, str]]  # (revision, outcome, time)
    episode: str | None  # the quality episode's start
    finished_jobs: frozenset[str]
    measured_revert: tuple[str, str] | None = None  # (revision, time) of the revert timed last


def parse_status(raw: Mapping[str, Any] | None) -> ModelEndpointStatus:
    try:
        return ModelEndpointStatus.model_validate(dict(raw or {}))
    except ValidationError:  # a status someone else wrote badly: report it as fresh
        return ModelEndpointStatus()


def snapshot(status: ModelEndpointStatus, monitored: bool) -> EndpointSnapshot:
    quality = None
    if monitored:
        quality = any(c.type == QUALITY_CONDITION and c.status == "True" for c in status.conditions)
    started = parse_time(status.rollout.started_at).timestamp() if status.rollout else None
    return EndpointSnapshot(phase=status.phase, traffic=dict(status.traffic), rollout_started=started,
                            quality_degraded=quality)


def seen_of(status: ModelEndpointStatus) -> Seen:
    monitor = status.monitor
    finished = frozenset({monitor.job.name} if monitor and monitor.job
                         and monitor.job.outcome in FINISHED_JOB_OUTCOMES else ())
    return Seen(history=frozenset((h.revision, h.outcome, h.time) for h in status.history),
                episode=monitor.episode.started_at if monitor and monitor.episode else None,
                finished_jobs=finished)


def new_history(before: Seen, status: ModelEndpointStatus) -> list[tuple[str, str]]:
    """(outcome, reason) of each history entry not seen before."""
    return [(h.outcome, h.reason) for h in status.history
            if (h.revision, h.outcome, h.time) not in before.history]


def new_episode(before: Seen, after: Seen) -> bool:
    return after.episode is not None and after.episode != before.episode


def revert_latency(before: ModelEndpointStatus, action: Action, now: datetime) -> tuple[str, str, str, float] | None:
    """(revision, time, reason, seconds) when ``action`` puts traffic back on the stable slot after a
    revert: the failing verdict is the revert's history entry (for a quality revert, the episode's
    start), the write that was just accepted is the end. None for every other write."""
    last = before.history[-1] if before.history else None
    if last is None or last.outcome != "RolledBack" or before.phase != "RolledBack" or before.active_slot is None:
        return None
    if isinstance(action, SwitchTraffic):
        if action.selector.get(LABEL_SLOT) != before.active_slot:
            return None
    elif isinstance(action, ApplyRoute):
        if summarise_route(action.body).weights.get(before.active_slot) != 100:
            return None
    else:
        return None
    verdict = last.time
    episode = before.monitor.episode if before.monitor else None
    if last.reason == QUALITY_CONDITION and episode is not None and episode.revision == last.revision:
        verdict = episode.started_at
    return last.revision, last.time, last.reason, max(0.0, (now - parse_time(verdict)).total_seconds())


def api_error_kind(error: BaseException) -> str:
    """A bounded name for an error of the API: the status code's Kubernetes reason, or Unreachable."""
    if isinstance(error, ApiError):
        status = error.status or 0
        return ERROR_KINDS.get(status, "ServerError" if status >= 500 else "Other")
    if isinstance(error, (aiohttp.ClientError, asyncio.TimeoutError, OSError)):
        return "Unreachable"
    return "Other"


def parse_bind_address(text: str | None) -> tuple[str, int] | None:
    """controller-runtime's --metrics-bind-address: ":8081", "0.0.0.0:8081", "127.0.0.1:0" (any
    free port); "0" or empty: off."""
    if not text or text == "0":
        return None
    host, separator, port = text.rpartition(":")
    if not separator or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--metrics-bind-address: {text!r} is not [host]:port or 0")
    return host.strip("[]") or "0.0.0.0", int(port)


# ------------------------------------------------------------------------------------- the values


class OperatorMetrics:
    """One operator instance's metrics, in a registry of its own (tests run several in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()  # the scrape reads the table from aiohttp's task; cheap anyway
        self._endpoints: dict[Key, EndpointSnapshot] = {}
        self._seen: dict[Key, Seen] = {}
        self.rollouts = Counter(
            "slotkeeper_rollouts", "Revisions recorded in status.history, by outcome (Promoted; RolledBack: a "
            "revert, also a quality revert; Superseded) and reason.", ["outcome", "reason"], registry=self.registry)
        self.revert_seconds = Histogram(
            "slotkeeper_revert_duration_seconds", "Seconds from the failing verdict to the write that puts "
            "traffic back on the stable slot.", ["reason"], buckets=REVERT_BUCKETS, registry=self.registry)
        self.passes = Counter(
            "slotkeeper_reconcile_passes", "Reconcile passes, by result (success, error).", ["result"],
            registry=self.registry)
        for result in ("success", "error"):  # both series from the start: rate() needs no first error
            self.passes.labels(result=result)
        self.api_errors = Counter(
            "slotkeeper_api_errors", "Kubernetes API errors met by reconcile passes, by kind (the status "
            "code's reason, or Unreachable).", ["kind"], registry=self.registry)
        self.episodes = Counter(
            "slotkeeper_quality_episodes", "Quality monitor degradation episodes started.", registry=self.registry)
        self.jobs = Counter(
            "slotkeeper_retraining_jobs", "Retraining Jobs of the quality monitor that finished, by outcome "
            "(Succeeded, Failed, Missing: deleted before it finished).", ["outcome"], registry=self.registry)
        self.leader = Gauge(
            "slotkeeper_leader", "1 while this instance is the leader (acts on endpoints), else 0.",
            registry=self.registry)
        self.watch_listed = Gauge(
            "slotkeeper_watch_listed", "1 once every watch of an owned kind has listed it (or found it not "
            "served), else 0: endpoints make no first pass until all are 1.", ["resource"], registry=self.registry)
        self.registry.register(_EndpointCollector(self))

    # Leader election sets this; standalone, the operator leads from the start.
    def set_leader(self, is_leader: bool) -> None:
        self.leader.set(1 if is_leader else 0)

    def set_watch_listed(self, resource: str, listed: bool) -> None:
        self.watch_listed.labels(resource=resource).set(1 if listed else 0)

    def knows(self, key: Key) -> bool:
        """Whether this endpoint's status was observed already (its series exist)."""
        with self._lock:
            return key in self._seen

    def observe_body(self, key: Key, body: Mapping[str, Any]) -> None:
        """observe_endpoint for an endpoint body as the watch delivered it."""
        self.observe_endpoint(key, body.get("status"), monitored=bool((body.get("spec") or {}).get("monitor")))

    def observe_endpoint(self, key: Key, raw_status: Mapping[str, Any] | None, monitored: bool) -> None:
        """The endpoint's status as the watch shows it now: gauges, and counters of what is new."""
        status = parse_status(raw_status)
        after = seen_of(status)
        with self._lock:
            self._endpoints[key] = snapshot(status, monitored)
            before = self._seen.get(key)
            self._seen[key] = after if before is None else replace(after, measured_revert=before.measured_revert)
        if before is None:
            return  # the baseline: what happened before this instance looked is not counted
        for outcome, reason in new_history(before, status):
            self.rollouts.labels(outcome=outcome, reason=reason).inc()
        if new_episode(before, after):
            self.episodes.inc()
        for _ in after.finished_jobs - before.finished_jobs:  # at most one: the episode's Job
            self.jobs.labels(outcome=status.monitor.job.outcome).inc()

    def action_applied(self, key: Key, before: ModelEndpointStatus, action: Action, now: datetime) -> None:
        """A write the apiserver accepted: a revert's traffic switch ends its latency (once)."""
        latency = revert_latency(before, action, now)
        if latency is None:
            return
        revision, time, reason, seconds = latency
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and seen.measured_revert == (revision, time):
                return
            if seen is not None:
                self._seen[key] = replace(seen, measured_revert=(revision, time))
        self.revert_seconds.labels(reason=reason).observe(seconds)

    def pass_finished(self, error: BaseException | None = None) -> None:
        self.passes.labels(result="success" if error is None else "error").inc()
        if error is not None:
            self.api_error(error)

    def api_error(self, error: BaseException) -> None:
        kind = api_error_kind(error)
        if kind != "Other":  # a bug is not an API error (it is logged, and counted as a failed pass)
            self.api_errors.labels(kind=kind).inc()

    def forget(self, key: Key) -> None:
        """The endpoint's loop ended: its series go."""
        with self._lock:
            self._endpoints.pop(key, None)
            self._seen.pop(key, None)

    def endpoints(self) -> dict[Key, EndpointSnapshot]:
        with self._lock:
            return dict(self._endpoints)


class _EndpointCollector:
    """The per-endpoint gauges, built from the table at scrape time (no stale series to remove)."""

    def __init__(self, metrics: OperatorMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[GaugeMetricFamily]:
        endpoints = self.metrics.endpoints()
        phases = GaugeMetricFamily("slotkeeper_endpoints", "ModelEndpoints by status.phase.", labels=["phase"])
        for phase in PHASES:
            phases.add_metric([phase], sum(1 for e in endpoints.values() if e.phase == phase))
        traffic = GaugeMetricFamily(
            "slotkeeper_traffic_weight_ratio", "Share (0 to 1) of the endpoint's traffic each slot gets, as "
            "status.traffic reports it from the Service (or HTTPRoute) the cluster shows.",
            labels=["namespace", "name", "slot"])
        rollouts = GaugeMetricFamily(
            "slotkeeper_rollout_started_timestamp_seconds", "Start (Unix time) of the rollout under way; "
            "no series without one.", labels=["namespace", "name"])
        quality = GaugeMetricFamily(
            "slotkeeper_quality_degraded", "1 while the quality monitor's QualityDegraded condition is True "
            "(endpoints with spec.monitor only), else 0.", labels=["namespace", "name"])
        for (namespace, name), endpoint in sorted(endpoints.items()):
            for slot, percent in sorted(endpoint.traffic.items()):
                traffic.add_metric([namespace, name, slot], percent / 100)
            if endpoint.rollout_started is not None:
                rollouts.add_metric([namespace, name], endpoint.rollout_started)
            if endpoint.quality_degraded is not None:
                quality.add_metric([namespace, name], 1 if endpoint.quality_degraded else 0)
        return [phases, traffic, rollouts, quality]


# ----------------------------------------------------------------------------------- the endpoint


async def serve_metrics(metrics: OperatorMetrics, host: str, port: int) -> web.AppRunner:
    """/metrics on host:port, on the operator's own event loop (no thread); the runner stops it."""
    async def scrape(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
