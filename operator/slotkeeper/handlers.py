"""kopf wiring: the endpoints' watch, and one reconcile loop per endpoint (what they own: owned.py).

Why a loop per endpoint and not create/update handlers plus timers: a rollout waits on many things
(pods becoming ready, analysis windows, scale-down delays). The loop sleeps until the next deadline
the decision names, and is woken at once by a change of the endpoint or of what the watches of its
children show. With nothing under way it makes no API call at all: observation comes from the
indexes, which the watches keep current, so an idle endpoint costs neither reads nor writes.

The loops are plain asyncio tasks started from ``on.event`` (loops.py), not kopf daemons, so no
finalizer is put on an endpoint and deleting one never waits for the operator. Trade-off: no
per-object kopf state (there is none to keep; the durable state is ``status``), and an endpoint
deleted while a watch was down is noticed by its loop's next status write answering 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from typing import Any, Mapping

import aiohttp
import kopf

from .api import GROUP, PLURAL, VERSION
from .checks.access import make_slot_access
from .checks.runner import CheckRunner
from .client_config import as_connection, load_connection
from .cluster import Cluster
from .gc_freezing import keep_frozen
from .kopf_tuning import NoDiffBase, decode_watch_lines_with_orjson
from .kube_api import ApiError, KubeApi
from .loops import EndpointLoop, EndpointLoops, Key
from .metrics import OperatorMetrics, parse_bind_address, serve_metrics
from .owned import OwnedWatches
from .reconciler import EndpointGone, EndpointReconciler, ObservedSources

# Put on every endpoint by slotkeeper 0.1.0 (a kopf daemon's finalizer); removed where still found.
LEGACY_FINALIZER = f"{GROUP}/finalizer"
MAX_BACKOFF_SECONDS = 60.0
DEFAULT_BACKOFF_SECONDS = 0.5

log = logging.getLogger("slotkeeper")


@kopf.on.login()
def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo | None:
    """kopf's watches connect where slotkeeper's own writes go. kopf's fallback login knows neither
    ``--kubeconfig`` nor ``--context``: with it, ``slotkeeper run --context staging`` would watch one
    cluster and write to another (or fail to start)."""
    if getattr(memo, "kube_config", None) is not None:
        return None  # a test or benchmark connects kopf to its API double itself
    return load_connection(getattr(memo, "kubeconfig", None), getattr(memo, "context", None))


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.peering.standalone = True
    # kopf's per-event costs slotkeeper has no use for (kopf_tuning.py says why each is safe).
    settings.persistence.diffbase_storage = NoDiffBase()
    decode_watch_lines_with_orjson()
    if getattr(memo, "namespaced", False):  # a Role cannot list namespaces or watch CRDs: do not try
        settings.scanning.disabled = True
    # The operator writes its own Events; kopf's per-handler log lines would only add noise and writes.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 10 * 60
    # Memory follows kopf's concurrency: an idle per-object worker holds its slot for idle_timeout.
    # 20 workers released after 0.1 s: 1,000 endpoints at 53/s in 151 MiB (benchmarks/operator).
    # No worker limit by default: while kopf indexed the owned objects, a limit below their count
    # deadlocked a restart (benchmarks/operator/restart.py: 7 endpoints hung with 20); kopf now
    # watches endpoints only (owned.py), and unlimited costs no RSS.
    limit = os.environ.get("SLOTKEEPER_WORKER_LIMIT")
    settings.queueing.worker_limit = int(limit) if limit else None
    settings.queueing.idle_timeout = float(os.environ.get("SLOTKEEPER_IDLE_TIMEOUT", "0.1"))
    # "Handler succeeded" at INFO for every endpoint watch event is no news; warnings still show.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if getattr(memo, "cluster", None) is None:
        # Tests hand in a client configuration for their API double; a real install loads its own.
        config = getattr(memo, "kube_config", None)
        if config is not None:
            memo.cluster = Cluster(as_connection(config))
        else:
            def relogin() -> kopf.ConnectionInfo:  # a rotated token, on a 401
                return load_connection(getattr(memo, "kubeconfig", None), getattr(memo, "context", None))
            memo.cluster = Cluster(KubeApi(relogin(), relogin=relogin))
    if getattr(memo, "slot_access", None) is None:  # how checks reach slot Services and pods
        memo.slot_access = make_slot_access(getattr(memo, "slot_access_mode", "direct"),
                                            getattr(memo, "kube_config", None) or memo.cluster.api,
                                            slot_url=getattr(memo, "slot_url", None))
        log.info("checks reach slots and pods: %s", memo.slot_access.mode)
    if getattr(memo, "loops", None) is None:
        memo.loops = EndpointLoops()
    if getattr(memo, "http", None) is None:  # for checks: scrapes, Prometheus, validation requests
        memo.http = aiohttp.ClientSession()
    await _start_metrics(memo)
    # The objects endpoints own, listed and watched here rather than by kopf (owned.py says why), in
    # the namespaces kopf serves (memo.namespaces; none: all).
    if getattr(memo, "owned", None) is None:  # a test may hand in its own
        memo.owned = OwnedWatches(memo.cluster.api.for_streams(), memo.loops.wake,
                                  getattr(memo, "namespaces", ()) or (), report_listed=memo.metrics.set_watch_listed)
    memo.owned.start()
    if getattr(memo, "gc_freeze", False):
        # Everything imported so far lives as long as the process: out of the collector's sight, a
        # full collection (a pause of the whole event loop) no longer walks it. slotkeeper run sets it.
        gc.collect()
        gc.freeze()
        log.info("start-up objects frozen out of the garbage collector's sight: %d", gc.get_freeze_count())
        # And again after each burst of new (or deleted) endpoints has settled (gc_freezing.py).
        loops = memo.loops
        memo.refreezing = asyncio.get_running_loop().create_task(keep_frozen(lambda: len(loops)))


async def _start_metrics(memo: kopf.Memo) -> None:
    """The metrics are kept whether or not they are served; --metrics-bind-address serves them."""
    if getattr(memo, "metrics", None) is None:
        memo.metrics = OperatorMetrics()
        memo.metrics.set_leader(True)  # standalone: this instance acts from the start
    address = parse_bind_address(getattr(memo, "metrics_bind_address", None))
    if address is not None and getattr(memo, "metrics_server", None) is None:
        memo.metrics_server = await serve_metrics(memo.metrics, *address)
        log.info("metrics on http://%s:%s/metrics", *memo.metrics_server.addresses[0][:2])


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    refreezing = getattr(memo, "refreezing", None)
    if refreezing is not None:
        refreezing.cancel()
    loops = getattr(memo, "loops", None)
    if loops is not None:
        await loops.stop_all()
    owned, memo.owned = getattr(memo, "owned", None), None  # a restart lists afresh
    if owned is not None:
        await owned.stop()
    cluster = getattr(memo, "cluster", None)
    if cluster is not None:
        await cluster.aclose()
    http = getattr(memo, "http", None)
    if http is not None:
        await http.close()
    server = getattr(memo, "metrics_server", None)
    if server is not None:
        memo.metrics_server = None
        await server.cleanup()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def endpoint_changed(
    type: str | None, name: str, namespace: str, body: kopf.Body, meta: kopf.Meta, memo: kopf.Memo, **_: Any,
) -> None:
    key = (namespace, name)
    finalizers = list(meta.get("finalizers") or [])
    if LEGACY_FINALIZER in finalizers:
        await memo.cluster.remove_finalizer(namespace, name, finalizers, LEGACY_FINALIZER)
    if type == "DELETED" or meta.get("deletionTimestamp"):
        await memo.loops.stop(key)  # what it owns goes with it (owner references)
        return

    async def run(key: Key, loop: EndpointLoop) -> None:
        await reconcile_endpoint(key, loop, memo)

    if not memo.loops.seen(key, body, run) and getattr(memo, "metrics", None) is not None:
        # The loop is not woken for the echo of its own status write; the metrics still show the
        # status as the watch does, as that pass would have.
        memo.metrics.observe_body(key, body)


# ------------------------------------------------------------------------- the reconcile loop


async def reconcile_endpoint(key: Key, loop: EndpointLoop, memo: kopf.Memo) -> None:
    namespace, name = key
    reconciler = EndpointReconciler(
        namespace=namespace, name=name, cluster=memo.cluster,
        post_event=lambda **event: kopf.event(loop.body, **event),
        checks=CheckRunner(memo.http, access=memo.slot_access, keys=memo.cluster.read_keys),
        **({"clock": memo.clock} if getattr(memo, "clock", None) is not None else {}),  # tests: a fake clock
        metrics=getattr(memo, "metrics", None),
    )
    backoff = RetryBackoff(base=getattr(memo, "retry_backoff", DEFAULT_BACKOFF_SECONDS))
    owned: OwnedWatches = memo.owned
    try:
        # Deciding from half-listed indexes (a restart) would re-create what exists.
        if not owned.listed and not await _listed_unless_stopped(owned, loop):
            return
        while not loop.stopped.is_set():
            loop.wakeup.clear()
            services = list(owned["endpoint_services"].get(key))
            sources = ObservedSources(
                deployments=list(owned["slot_deployments"].get(key)),
                pods=list(owned["slot_pods"].get(key)),
                services={service: selector for service, selector, _ in services},
                service_grpc_ports={service: grpc_port for service, _, grpc_port in services},
                autoscalers=list(owned["slot_autoscalers"].get(key)),
                disruption_budgets=list(owned["slot_disruption_budgets"].get(key)),
                routes=list(owned["endpoint_routes"].get(key)),
                jobs=list(owned["monitor_jobs"].get(key)),
            )
            delay = await _reconcile_pass(reconciler, loop.body, sources, backoff)
            if delay is None:
                return  # the endpoint is gone
            if reconciler.written_status is not None:  # passes read their own last write, not the watch's copy
                loop.body.pop("status", None)
                loop.remember_written(reconciler.written_status)
            await _sleep(loop, delay)
    finally:
        if reconciler.metrics is not None:  # deleted, or this instance stops: its series go
            reconciler.metrics.forget(key)


async def _listed_unless_stopped(owned: OwnedWatches, loop: EndpointLoop) -> bool:
    """Until the owned kinds are listed (True), or the loop is told to stop first (False): a stop
    must not wait for a listing that may never come (an apiserver refusing it)."""
    listing, stopping = asyncio.ensure_future(owned.wait_listed()), asyncio.ensure_future(loop.stopped.wait())
    try:
        await asyncio.wait({listing, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        listing.cancel()
        stopping.cancel()
    return listing.done() and not listing.cancelled()


async def _reconcile_pass(
    reconciler: EndpointReconciler, body: Mapping[str, Any], sources: ObservedSources, backoff: RetryBackoff,
) -> float | None:
    """One pass; the seconds until the next (None: the endpoint no longer exists). A failed pass
    backs off, from the start again when it still got further than the one before (it wrote something)."""
    writes_before = reconciler.writes_done
    metrics = reconciler.metrics
    try:
        delay = await reconciler.reconcile(body, sources)
    except EndpointGone:
        log.info("%s/%s: the endpoint is gone; its loop ends", reconciler.namespace, reconciler.name)
        return None
    except ApiError as error:
        # The status code and reason only: a response body may echo what we sent.
        problem, failure = f"API error {error.status} {error.reason}", error
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:  # timeouts, refused connections
        problem, failure = f"API unreachable ({type(error).__name__})", error
    except Exception as error:  # a bug must not stop the endpoint for good; the next pass decides afresh
        log.exception("%s/%s: reconcile failed", reconciler.namespace, reconciler.name)
        problem, failure = "unexpected error", error
    else:
        backoff.reset()
        if metrics is not None:
            metrics.pass_finished()
        return delay
    if metrics is not None:
        metrics.pass_finished(failure)
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


async def _sleep(loop: EndpointLoop, delay: float) -> None:
    """Until the loop is woken (an event; a stop sets ``wakeup`` too) or ``delay`` has passed.
    No task of its own: every idle endpoint sleeps here (two tasks each cost ~2 KiB per endpoint)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await loop.wakeup.wait()
