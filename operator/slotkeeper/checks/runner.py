"""Runs, for one endpoint, the validation requests and metric checks that are due, and hands the
results to the decision as :class:`~slotkeeper.decide.Gates`. The only I/O of checks happens here.

What is due is read from the status the decision wrote last: validation once per candidate in the
``Validating`` step; each metric check every ``intervalSeconds`` while the candidate is checked.
``source: pods`` keeps the previous scrape in memory (per revision): after a restart, the first
evaluation only takes a new baseline and is Inconclusive.

How the slot Service and the pods are reached (directly in the cluster, or through the apiserver's
proxy from outside it) is the ``access`` object's business (:mod:`.access`); Prometheus and web checks
use their URL as written.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Awaitable, Callable

import aiohttp

from ..api import MetricCheck, keys_secret_name
from ..decide import CHECKED_STEPS, Endpoint, Gates
from ..observe import Observed
from .access import InCluster, SlotAccess, Target, outside_cluster_hint, slot_service_url
from .pod_metrics import PodMetrics, derive
from .prometheus import query_prometheus, render_query
from .scrape import scrape_targets
from .validation import infer_path, send_validation
from .verdicts import MetricUnavailable, Verdict, due, evaluate, status_for
from .web import fetch_web_value

MAX_TIMEOUT_SECONDS = 10.0
METRICS_PATH = "metrics"

__all__ = ["CheckRunner", "MAX_TIMEOUT_SECONDS", "slot_service_url"]


@dataclass
class CheckRunner:
    """``CheckRunner(session, access=...)``; without ``access``, :class:`~.access.InCluster` (on
    ``slot_url`` when given: the older spelling, kept for its callers; give one or the other)."""
    session: aiohttp.ClientSession
    slot_url: Callable[[str, str, str], str] | None = None
    clock: Callable[[], float] = time.monotonic
    access: SlotAccess | None = None  # how the slot Service and pods are reached; set in __post_init__
    # (namespace, Secret name) -> the endpoint's keys: a keyed endpoint's validation requests carry one
    keys: Callable[[str, str], Awaitable[tuple[str, ...]]] | None = None
    # (revision, slot) -> (monotonic time, scrape): the baseline of the next pods evaluation
    _baselines: dict[tuple[str, str], tuple[float, list[PodMetrics]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.access is None:
            self.access = InCluster(self.slot_url) if self.slot_url is not None else InCluster()
        elif self.slot_url is not None:
            raise TypeError("CheckRunner takes access or slot_url, not both (InCluster(slot_url) is the access)")

    async def run(self, endpoint: Endpoint, observed: Observed, now: datetime) -> Gates:
        gates = await self._run_rollout_checks(endpoint, observed, now)
        monitor = await self.run_monitor(endpoint, observed, now)
        return dataclasses.replace(gates, monitor=monitor) if monitor else gates

    async def run_monitor(self, endpoint: Endpoint, observed: Observed, now: datetime) -> dict[str, Verdict]:
        """spec.monitor checks that are due, against the stable revision in the active slot, while no
        rollout is under way ({{slot}}/{{revision}}: the stable ones)."""
        monitor, status = endpoint.spec.monitor, endpoint.status
        revision, slot = status.stable_revision, status.active_slot
        if monitor is None or revision is None or slot is None or status.rollout is not None:
            self._monitor_baseline = None
            return {}
        previous = status.monitor.checks if status.monitor is not None and status.monitor.revision == revision else []
        verdicts: dict[str, Verdict] = {}
        pods_window: tuple[dict[str, float | None], str] | None = None  # one scrape serves every pods check
        for check in monitor.checks:
            if not due(check, status_for(previous, check.name, revision), revision, now):
                continue
            if check.source == "pods":
                if pods_window is None:
                    pods_window = await self._monitor_pods_window(endpoint, observed, slot, revision, check)
                values, note = pods_window
                verdict = evaluate(check, values.get(check.metric or ""))
                verdicts[check.name] = Verdict(verdict.outcome, verdict.value,
                                               f"{verdict.message}; {note}" if note else verdict.message)
            else:
                verdicts[check.name] = await self._measure(check, endpoint, slot, revision)
        return verdicts

    _monitor_baseline: tuple[tuple[str, str], float, list[PodMetrics]] | None = None

    async def _monitor_pods_window(self, endpoint: Endpoint, observed: Observed, slot: str, revision: str,
                                   check: MetricCheck) -> tuple[dict[str, float | None], str]:
        pods = [(p.name, p.ip) for p in observed.slot(slot).pods if p.revision == revision and p.ready and p.ip]
        if not pods:
            return {}, f"no ready pod of revision {revision} in slot {slot}"
        timeout = min(float(check.interval_seconds), MAX_TIMEOUT_SECONDS)
        targets = await self.access.pod_targets(endpoint.namespace, pods, endpoint.spec.serving.port, METRICS_PATH)
        scrape = await scrape_targets(self.session, targets, timeout)
        key, now = (revision, slot), self.clock()
        baseline = self._monitor_baseline
        self._monitor_baseline = (key, now, scrape.pods)
        if baseline is None or baseline[0] != key:
            return {}, "first scrape of this revision: a baseline for the next window"
        return derive(baseline[2], scrape.pods, now - baseline[1], revision=revision), scrape.message

    async def _run_rollout_checks(self, endpoint: Endpoint, observed: Observed, now: datetime) -> Gates:
        rollout = endpoint.status.rollout
        if rollout is None or rollout.step not in CHECKED_STEPS:
            self._baselines.clear()
            return Gates()
        validation = None
        if rollout.step == "Validating" and endpoint.spec.checks.validation and not rollout.validated:
            validation = await self._validate(endpoint, rollout.slot)
        verdicts = {}
        pods_window: tuple[dict[str, float | None], str] | None = None  # one scrape serves every pods check
        for check in endpoint.spec.checks.metrics:
            if not due(check, status_for(endpoint.status.checks, check.name, rollout.revision), rollout.revision, now):
                continue
            if check.source == "pods":
                if pods_window is None:
                    pods_window = await self._pods_window(endpoint, observed, rollout.slot, rollout.revision)
                values, note = pods_window
                verdict = evaluate(check, values.get(check.metric or ""))
                verdicts[check.name] = Verdict(verdict.outcome, verdict.value,
                                               f"{verdict.message}; {note}" if note else verdict.message)
            else:
                verdicts[check.name] = await self._measure(check, endpoint, rollout.slot, rollout.revision)
        return Gates(validation=validation, verdicts=verdicts)

    async def _validate(self, endpoint: Endpoint, slot: str) -> tuple[bool, str]:
        path = infer_path(endpoint.spec.model.name)
        messages = []
        key = None
        secret = keys_secret_name(endpoint.name, endpoint.spec.auth)
        if secret is not None:
            keys = await self.keys(endpoint.namespace, secret) if self.keys is not None else ()
            if not keys:
                return False, f"the keys Secret {secret} has no key (primary, secondary) to send"
            key = keys[0]
        for request in endpoint.spec.checks.validation:
            # A target per request: through the apiserver, each carries freshly refreshed credentials.
            target = await self.access.slot_target(endpoint.namespace, endpoint.name, slot, path)
            if key is not None:
                target = with_key(target, key)
            passed, message = await send_validation(self.session, target, request)
            if not passed:
                return False, message
            messages.append(message)
        return True, "; ".join(messages)

    async def _measure(self, check: MetricCheck, endpoint: Endpoint, slot: str, revision: str) -> Verdict:
        """A prometheus or web check's verdict; a source that cannot answer is Inconclusive."""
        timeout = min(float(check.interval_seconds), MAX_TIMEOUT_SECONDS)
        url = (check.address if check.source == "prometheus" else check.url) or ""
        try:
            if check.source == "prometheus":
                query = render_query(check.query or "", endpoint.namespace, endpoint.name, slot, revision)
                return evaluate(check, await query_prometheus(self.session, url, query, timeout))
            return evaluate(check, await fetch_web_value(self.session, url, check.json_path or "", timeout))
        except MetricUnavailable as error:
            hint = outside_cluster_hint(url, self.access.mode)
            return Verdict("Inconclusive", None, f"{error}; {hint}" if hint else str(error))

    async def _pods_window(self, endpoint: Endpoint, observed: Observed, slot: str,
                           revision: str) -> tuple[dict[str, float | None], str]:
        """The derived metrics of the candidate's ready pods since the last scrape, and a note on gaps."""
        pods = [(p.name, p.ip) for p in observed.slot(slot).pods if p.revision == revision and p.ready and p.ip]
        if not pods:
            return {}, f"no ready pod of revision {revision} in slot {slot}"
        timeout = min(float(min(c.interval_seconds for c in endpoint.spec.checks.metrics)), MAX_TIMEOUT_SECONDS)
        targets = await self.access.pod_targets(endpoint.namespace, pods, endpoint.spec.serving.port, METRICS_PATH)
        scrape = await scrape_targets(self.session, targets, timeout)
        key, now = (revision, slot), self.clock()
        baseline = self._baselines.get(key)
        self._baselines = {key: (now, scrape.pods)}  # only the candidate's baseline is worth keeping
        if baseline is None:
            return {}, "first scrape of this revision: a baseline for the next window"
        return derive(baseline[1], scrape.pods, now - baseline[0], revision=revision), scrape.message


def with_key(target: Target, key: str) -> Target:
    """The target with the endpoint key in its headers (kept out of its repr and of every message).
    Directly: ``Authorization: Bearer``. Through the apiserver proxy, whose own ``Authorization`` is
    the operator's credentials (consumed by the apiserver): ``X-Endpoint-Key``, which the serving image
    accepts too."""
    header = {"X-Endpoint-Key": key} if target.through_apiserver else {"Authorization": f"Bearer {key}"}
    return dataclasses.replace(target, headers={**target.headers, **header})
