"""kopf wiring: watch-fed indexes for what endpoints own, and one reconcile loop per endpoint.

Why a daemon and not create/update handlers plus timers: a rollout waits on many things (pods
becoming ready, analysis windows, scale-down delays). The daemon sleeps until the next deadline the
decision names, and is woken at once by any watch event about the endpoint or its children. With
nothing under way it makes no API call at all: observation comes from the indexes, which the
watches keep current, so an idle endpoint costs neither reads nor writes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import aiohttp
import kopf
import kubernetes
import urllib3
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from .api import GROUP, PLURAL, VERSION
from .checks.runner import CheckRunner
from .cluster import Cluster
from .observe import summarise_deployment, summarise_pod
from .reconciler import EndpointReconciler, ObservedSources
from .render import LABEL_ENDPOINT, LABEL_MANAGED_BY, MANAGED_BY

OWNED = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_ENDPOINT: kopf.PRESENT}
MAX_BACKOFF_SECONDS = 60.0
DEFAULT_BACKOFF_SECONDS = 0.5

log = logging.getLogger("slotkeeper")


class Wakeups:
    """One asyncio.Event per endpoint: watch handlers set it, the endpoint's loop waits on it."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], asyncio.Event] = {}

    def register(self, namespace: str, name: str) -> asyncio.Event:
        return self._events.setdefault((namespace, name), asyncio.Event())

    def unregister(self, namespace: str, name: str) -> None:
        self._events.pop((namespace, name), None)

    def wake(self, namespace: str | None, name: str | None) -> None:
        event = self._events.get((namespace or "", name or ""))
        if event is not None:
            event.set()


def build_api_client() -> ApiClient:
    """In a pod: the service account; elsewhere: the current kubeconfig context."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return ApiClient()


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.peering.standalone = True
    if getattr(memo, "namespaced", False):  # a Role cannot list namespaces or watch CRDs: do not try
        settings.scanning.disabled = True
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # The operator writes its own Events; kopf's per-handler log lines would only add noise and writes.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 10 * 60
    # Memory follows kopf's concurrency: an idle per-object worker holds its slot for idle_timeout.
    # 20 workers released after 0.1 s: 1,000 endpoints at 53/s in 151 MiB (benchmarks/operator).
    settings.queueing.worker_limit = int(os.environ.get("SLOTKEEPER_WORKER_LIMIT", "20"))
    settings.queueing.idle_timeout = float(os.environ.get("SLOTKEEPER_IDLE_TIMEOUT", "0.1"))
    # "Handler succeeded" at INFO for every watch event of the indexes is no news; warnings still show.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if getattr(memo, "cluster", None) is None:
        # Tests hand in a client configuration for their API double; a real install loads its own.
        config = getattr(memo, "kube_config", None)
        memo.cluster = Cluster(ApiClient(config) if config is not None else build_api_client())
    if getattr(memo, "wakeups", None) is None:
        memo.wakeups = Wakeups()
    if getattr(memo, "http", None) is None:  # for checks: scrapes, Prometheus, validation requests
        memo.http = aiohttp.ClientSession()


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    cluster = getattr(memo, "cluster", None)
    if cluster is not None:
        cluster.close()
    http = getattr(memo, "http", None)
    if http is not None:
        await http.close()


# -------------------------------------------------------------------- indexes of owned objects


@kopf.index("apps", "v1", "deployments", labels=OWNED)
async def slot_deployments(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict:
    return {(namespace, labels[LABEL_ENDPOINT]): summarise_deployment(body)}


@kopf.index("", "v1", "pods", labels=OWNED)
async def slot_pods(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict:
    return {(namespace, labels[LABEL_ENDPOINT]): summarise_pod(body)}


@kopf.index("", "v1", "services", labels=OWNED)
async def endpoint_services(namespace: str, name: str, labels: kopf.Labels, spec: kopf.Spec, **_: Any) -> dict:
    return {(namespace, labels[LABEL_ENDPOINT]): (name, dict(spec.get("selector") or {}))}


@kopf.on.event("apps", "v1", "deployments", labels=OWNED)
@kopf.on.event("", "v1", "pods", labels=OWNED)
@kopf.on.event("", "v1", "services", labels=OWNED)
async def owned_object_changed(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    memo.wakeups.wake(namespace, labels.get(LABEL_ENDPOINT))


@kopf.on.event(GROUP, VERSION, PLURAL)
async def endpoint_changed(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    memo.wakeups.wake(namespace, name)


# ------------------------------------------------------------------------- the reconcile loop


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=5.0)
async def reconcile_endpoint(
    name: str, namespace: str, body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped,
    slot_deployments: kopf.Index, slot_pods: kopf.Index, endpoint_services: kopf.Index, **_: Any,
) -> None:
    wakeup = memo.wakeups.register(namespace, name)
    reconciler = EndpointReconciler(
        namespace=namespace, name=name, cluster=memo.cluster,
        post_event=lambda **event: kopf.event(body, **event),
        checks=CheckRunner(memo.http, **({"slot_url": memo.slot_url} if getattr(memo, "slot_url", None) else {})),
    )
    backoff = RetryBackoff(base=getattr(memo, "retry_backoff", DEFAULT_BACKOFF_SECONDS))
    try:
        while not stopped:
            wakeup.clear()
            key = (namespace, name)
            sources = ObservedSources(
                deployments=list(slot_deployments.get(key, [])),
                pods=list(slot_pods.get(key, [])),
                services=dict(endpoint_services.get(key, [])),
            )
            delay = await _reconcile_pass(reconciler, body, sources, backoff)
            await _sleep(wakeup, stopped, delay)
    finally:
        memo.wakeups.unregister(namespace, name)


async def _reconcile_pass(
    reconciler: EndpointReconciler, body: kopf.Body, sources: ObservedSources, backoff: RetryBackoff,
) -> float:
    """One pass; the seconds until the next. A failed pass backs off, from the start again when it
    still got further than the one before (it wrote something)."""
    writes_before = reconciler.writes_done
    try:
        delay = await reconciler.reconcile(body, sources)
    except ApiException as error:
        # The status code and reason only: a response body may echo what we sent.
        problem = f"API error {error.status} {error.reason}"
    except (urllib3.exceptions.HTTPError, OSError) as error:  # timeouts, refused connections
        problem = f"API unreachable ({type(error).__name__})"
    except Exception:  # a bug must not stop the endpoint for good; the next pass decides afresh
        log.exception("%s/%s: reconcile failed", reconciler.namespace, reconciler.name)
        problem = "unexpected error"
    else:
        backoff.reset()
        return delay
    if reconciler.writes_done > writes_before:
        backoff.reset()
    delay = backoff.next()
    log.warning("%s/%s: %s; retrying in %.1fs", reconciler.namespace, reconciler.name, problem, delay)
    return delay


class RetryBackoff:
    """Exponential back-off for failed passes: base, 2 base, 4 base, ... up to MAX_BACKOFF_SECONDS."""

    def __init__(self, base: float) -> None:
        self.base, self.failures = base, 0

    def next(self) -> float:
        self.failures += 1
        return min(MAX_BACKOFF_SECONDS, self.base * 2 ** (self.failures - 1))

    def reset(self) -> None:
        self.failures = 0


async def _sleep(wakeup: asyncio.Event, stopped: kopf.DaemonStopped, delay: float) -> None:
    waiters = [asyncio.ensure_future(wakeup.wait()), asyncio.ensure_future(stopped.wait())]
    try:
        await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
