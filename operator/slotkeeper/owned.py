"""What the endpoints own, as the cluster shows it: list + watch per kind, outside kopf.

The endpoint loops decide from summaries of the objects they own (observe.py): Deployments, Pods,
Services, autoscalers, disruption budgets, HTTPRoutes and Jobs. Each kind is listed and then watched
with the owned-objects label selector, one stream per kind (per namespace when the operator serves
named namespaces), into an :class:`OwnedIndex`: endpoint key -> the summaries of its objects.

Why not kopf's ``@kopf.index`` + ``@kopf.on.event`` (what slotkeeper used before): kopf hands every
event of every watched object to a per-object worker, builds its causes, loggers and kwargs and runs
both handlers; creating 1,000 endpoints that was a quarter of the operator's CPU for work whose only
result is a summary and a wake-up (benchmarks/operator/RESULTS.md, session 6). Here an event is one
decode, one summary and a dict update; and the loop is woken only when a summary changed, since a
decision reads nothing else of those objects (an update of a Pod's timestamps wakes nobody).

What kopf gave and this keeps:

* **No decision before the indexes are complete.** A loop's first pass waits for every kind's first
  listing (:meth:`OwnedWatches.wait_listed`): deciding from a half-listed index after a restart
  would re-create objects that exist.
* **Resumption.** A watch continues from the last resourceVersion it saw (events and bookmarks;
  also after a broken connection); an expired one (410 Gone, as a status code or a watch
  ``ERROR``) lists again, replacing that stream's part of the index, and wakes every endpoint whose
  summaries changed meanwhile. A watch quiet for WATCH_IDLE_SECONDS (bookmarks come about once a
  minute, so the connection went half-open) is opened again; the apiserver ends each after 5-10 min
  (spread, as client-go does).
* **Kinds the cluster may not serve.** HTTPRoutes exist only with the Gateway API CRDs: a 404 is
  logged, counts as listed (empty) and is tried again every MISSING_KIND_RETRY_SECONDS, so CRDs
  installed later are picked up. Routes already indexed leave only when a second 404 comes
  NOT_SERVED_CONFIRM_SECONDS later (the CRDs removed): an apiserver that has just restarted answers
  404 for custom resources until it has read their CRDs, and emptying the index then would have every
  routed endpoint see its route gone. A 404 for any other kind is an error like the rest.
* **Errors** (the apiserver unreachable, 5xx, 403, a watch that ends at once with nothing, 410
  again right after a listing) back off exponentially up to MAX_BACKOFF_SECONDS, logged at the
  first and every 10th in a row; the index keeps what it had meanwhile (the loops' decisions stay on
  the last known state, as with kopf). A first listing that keeps failing holds every endpoint's
  first pass (deciding without it would re-create what exists), and the warnings say so. An object
  its summary cannot be made of is logged and left out; it does not stop its kind's watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import aiohttp

from .kube_api import ApiError, KubeApi, api_path
from .observe import (service_grpc_port, summarise_autoscaler, summarise_deployment, summarise_disruption_budget,
                      summarise_job, summarise_pod, summarise_route)
from .render import LABEL_ENDPOINT, LABEL_MANAGED_BY, MANAGED_BY

log = logging.getLogger("slotkeeper.owned")

# Sent to the apiserver, so the watches carry only slotkeeper's objects: memory and CPU follow the
# endpoints, not the cluster.
OWNED_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_ENDPOINT}"
WATCH_TIMEOUT_SECONDS = 10 * 60  # the apiserver ends each watch after 5-10 min of this; opened again at once
WATCH_IDLE_SECONDS = 90.0  # no byte for this long (bookmarks come about every minute): reopen
MISSING_KIND_RETRY_SECONDS = 60.0
NOT_SERVED_CONFIRM_SECONDS = 10.0
MAX_BACKOFF_SECONDS = 30.0

Key = tuple[str, str]  # (namespace, endpoint name)
_pause = asyncio.sleep  # the streams' waits (back-off, a kind not served): tests replace this one only


def summarise_service(body: Mapping[str, Any]) -> tuple[str, dict, int | None]:
    spec = body.get("spec") or {}
    return ((body.get("metadata") or {}).get("name", ""), dict(spec.get("selector") or {}), service_grpc_port(spec))


@dataclass(frozen=True)
class OwnedKind:
    """A kind the endpoints own: where it is served and what a loop keeps of each object."""
    index: str  # the name ObservedSources knows it by
    group: str
    version: str
    plural: str
    summarise: Callable[[Mapping[str, Any]], Any]
    optional: bool = False  # served only with a CRD that may be missing: a 404 means "none", not an error


OWNED_KINDS = (
    OwnedKind("slot_deployments", "apps", "v1", "deployments", summarise_deployment),
    OwnedKind("slot_pods", "", "v1", "pods", summarise_pod),
    OwnedKind("endpoint_services", "", "v1", "services", summarise_service),
    OwnedKind("slot_autoscalers", "autoscaling", "v2", "horizontalpodautoscalers", summarise_autoscaler),
    OwnedKind("slot_disruption_budgets", "policy", "v1", "poddisruptionbudgets", summarise_disruption_budget),
    OwnedKind("endpoint_routes", "gateway.networking.k8s.io", "v1", "httproutes", summarise_route, optional=True),
    # The quality monitor's Jobs (spec.monitor.onFailure.job) and batch runs: status shows their outcome.
    OwnedKind("monitor_jobs", "batch", "v1", "jobs", summarise_job),
)


def owner_key(body: Mapping[str, Any]) -> Key | None:
    """The endpoint an object belongs to, by its labels (None: not slotkeeper's)."""
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    endpoint = labels.get(LABEL_ENDPOINT)
    if labels.get(LABEL_MANAGED_BY) != MANAGED_BY or not endpoint:
        return None
    return (meta.get("namespace") or "", endpoint)


class OwnedIndex:
    """Endpoint key -> {uid: summary} of one kind. ``get`` is what a loop reads: the summaries."""

    def __init__(self) -> None:
        self._by_key: dict[Key, dict[str, Any]] = {}
        self._key_of: dict[str, Key] = {}

    def get(self, key: Key, default: Iterable[Any] = ()) -> Iterable[Any]:
        entries = self._by_key.get(key)
        return entries.values() if entries else default

    def __len__(self) -> int:
        """Objects indexed."""
        return len(self._key_of)

    def put(self, uid: str, key: Key, summary: Any) -> list[Key]:
        """Index an object; the endpoints whose summaries changed (both, when its label moved)."""
        changed = []
        before = self._key_of.get(uid)
        if before is not None and before != key:
            changed += self.discard(uid)
        entries = self._by_key.setdefault(key, {})
        if uid not in entries or entries[uid] != summary:
            entries[uid] = summary
            changed.append(key)
        self._key_of[uid] = key
        return changed

    def discard(self, uid: str) -> list[Key]:
        key = self._key_of.pop(uid, None)
        if key is None:
            return []
        entries = self._by_key[key]
        del entries[uid]
        if not entries:
            del self._by_key[key]
        return [key]


@dataclass(eq=False)
class _Stream:
    """One kind in one namespace (None: all): where its watch stands."""
    kind: OwnedKind
    namespace: str | None
    path: str
    listed: asyncio.Event = field(default_factory=asyncio.Event)
    uids: set[str] = field(default_factory=set)  # its objects (another namespace's stream has its own)
    version: str | None = None  # the last resourceVersion seen; None: list (again) first
    failures: int = 0  # in a row, for the back-off
    unserved: bool = False  # a 404 came while it had objects: they leave if the next attempt gets one too

    @property
    def where(self) -> str:
        return f"{self.kind.plural} in {self.namespace or 'all namespaces'}"


class OwnedWatches:
    """The list+watch streams of every owned kind, feeding one index per kind and waking loops.

    ``namespaces``: the namespaces served (empty: cluster-wide, one stream per kind);
    ``wake(namespace, name)``: an endpoint's objects changed."""

    selector = OWNED_SELECTOR  # "": none sent (a benchmark's contrast); objects are still kept by their labels

    def __init__(self, api: KubeApi, wake: Callable[[str, str], None], namespaces: Iterable[str] = (),
                 kinds: Iterable[OwnedKind] = OWNED_KINDS,
                 report_listed: Callable[[str, bool], None] | None = None) -> None:
        self.api, self.wake = api, wake
        self.report_listed = report_listed  # (plural, all its streams listed): OperatorMetrics.set_watch_listed
        self.kinds = tuple(kinds)
        self.indexes = {kind.index: OwnedIndex() for kind in self.kinds}
        self._streams = [_Stream(kind, namespace, api_path(kind.group, kind.version, kind.plural, namespace))
                         for kind in self.kinds for namespace in (tuple(namespaces) or (None,))]
        self._tasks: list[asyncio.Task[None]] = []

    def __getitem__(self, index: str) -> OwnedIndex:
        return self.indexes[index]

    def start(self) -> None:
        if self._tasks:  # kopf retries a start-up handler that failed after this: start once
            return
        loop = asyncio.get_running_loop()
        for kind in self.kinds:
            self._report(kind)
        self._tasks = [loop.create_task(self._follow(stream), name=f"slotkeeper:watch {stream.where}")
                       for stream in self._streams]

    @property
    def listed(self) -> bool:
        """Every stream has listed its kind once (or found an optional kind not served)."""
        return all(stream.listed.is_set() for stream in self._streams)

    async def wait_listed(self) -> None:
        """Until :attr:`listed`."""
        for stream in self._streams:
            await stream.listed.wait()

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):  # _follow logged what ended it
                await task
        await self.api.close()

    # ------------------------------------------------------------------------ one stream

    async def _follow(self, stream: _Stream) -> None:
        """List, then watch from the last resourceVersion seen, for as long as the operator runs."""
        while True:
            try:
                if stream.version is None:
                    await self._list(stream)
                    stream.unserved = False
                    self._set_listed(stream)
                if await self._watch(stream):
                    stream.failures = 0
                else:  # ended at once, with nothing: as client-go, a failure (no hot loop)
                    await self._back_off(stream, "the watch ended at once")
            except ApiError as error:
                if error.status == 410:  # the resourceVersion expired: list afresh (after a pause if
                    stream.version = None  # it keeps happening at once)
                    if stream.failures:
                        await self._back_off(stream, "resourceVersion expired again")
                    else:
                        stream.failures = 1
                elif error.status == 404 and stream.kind.optional:
                    await self._not_served(stream)
                else:
                    await self._back_off(stream, f"API error {error.status} {error.reason}")
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as error:
                await self._back_off(stream, f"watch interrupted ({type(error).__name__})")
            except Exception:  # noqa: BLE001 -- a bug must not end the watch of a kind for good
                log.exception("%s: unexpected error; retrying with back-off", stream.where)
                await self._back_off(stream, None)

    async def _back_off(self, stream: _Stream, problem: str | None) -> None:
        """Exponential, up to MAX_BACKOFF_SECONDS; said at the first failure and every 10th after it
        (a first listing that keeps failing holds every endpoint's first pass: that must be seen)."""
        if problem is not None and stream.failures % 10 == 0:
            waiting = "" if stream.listed.is_set() else "; endpoints wait for its first listing"
            log.warning("%s: %s (%d in a row); retrying with back-off%s", stream.where, problem,
                        stream.failures + 1, waiting)
        await _pause(min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** stream.failures))
        stream.failures += 1

    async def _not_served(self, stream: _Stream) -> None:
        """An optional kind the cluster does not serve (its CRD missing, or deleted): empty until it
        is served again; listed, so no endpoint waits for it. Objects it had stay until a second 404
        confirms it (an apiserver just restarted serves no custom resource until it has read the CRDs)."""
        stream.version = None
        if stream.uids and not stream.unserved:
            stream.unserved = True
            log.info("%s: 404 (its CRD removed, or an apiserver still starting); the %d indexed stay "
                     "unless it persists in %.0f s", stream.where, len(stream.uids), NOT_SERVED_CONFIRM_SECONDS)
            await _pause(NOT_SERVED_CONFIRM_SECONDS)
            return
        stream.unserved = False
        if not stream.listed.is_set() or stream.uids:
            log.info("%s: not served by this cluster; looking again every %.0f s", stream.where,
                     MISSING_KIND_RETRY_SECONDS)
        self._drop(stream, set(stream.uids))
        self._set_listed(stream)
        await _pause(MISSING_KIND_RETRY_SECONDS)

    async def _list(self, stream: _Stream) -> None:
        """This stream's part of the index replaced by a full listing; the watch goes on from its version."""
        # Whole, as kopf listed: no ``limit`` pages (nothing here would gain from them, and a paged
        # list whose continue token expires midway must start over anyway).
        page = await self.api.request("GET", stream.path, params=self._selecting({})) or {}
        version = (page.get("metadata") or {}).get("resourceVersion")
        if not version:
            raise ValueError("a list without a resourceVersion")  # a watch from "" would miss deletions
        found, changed = set(), set()
        for body in page.get("items") or []:
            uid = (body.get("metadata") or {}).get("uid")
            if uid:
                found.add(uid)
                changed.update(self._put(stream, uid, body))
        self._drop(stream, stream.uids - found, changed)  # deleted while no watch was open
        stream.uids = found
        stream.version = version

    async def _watch(self, stream: _Stream) -> bool:
        """Apply one watch's events until the apiserver ends it (or it goes quiet for longer than
        bookmarks allow); False if it ended at once without a single event."""
        # Spread over 5-10 min, as client-go does: streams opened together do not all reopen together.
        seconds = int(WATCH_TIMEOUT_SECONDS * (1 + random.random()) / 2)
        params = self._selecting({"watch": "true", "allowWatchBookmarks": "true", "resourceVersion": stream.version,
                                  "timeoutSeconds": str(seconds)})
        opened, events = time.monotonic(), 0
        try:
            async with contextlib.aclosing(self.api.stream(stream.path, params=params, timeout=seconds + 60,
                                                           idle_timeout=WATCH_IDLE_SECONDS)) as lines:
                async for event in lines:
                    self._apply(stream, event)
                    events += 1
                    stream.failures = 0  # it works again: a later break backs off from the start
        except TimeoutError:  # quiet beyond the bookmarks' rhythm (half-open?), or past its time: reopen
            log.debug("%s: the watch went quiet; opening it again", stream.where)
            return True
        return events > 0 or time.monotonic() - opened >= 1.0

    def _apply(self, stream: _Stream, event: Mapping[str, Any]) -> None:
        kind_of_event, body = event.get("type"), event.get("object") or {}
        if kind_of_event == "ERROR":
            code = body.get("code")
            raise ApiError(status=code if isinstance(code, int) else 500, reason=body.get("reason"),
                           body=str(body.get("message", ""))[:200])
        meta = body.get("metadata") or {}
        stream.version = meta.get("resourceVersion") or stream.version
        uid = meta.get("uid")
        if kind_of_event == "BOOKMARK" or not uid:
            return
        if kind_of_event == "DELETED":
            self._drop(stream, {uid})
        elif kind_of_event in ("ADDED", "MODIFIED"):
            stream.uids.add(uid)
            self._wake(self._put(stream, uid, body))
        else:
            log.warning("%s: a watch event of unknown type %r ignored", stream.where, kind_of_event)

    def _set_listed(self, stream: _Stream) -> None:
        if not stream.listed.is_set():
            stream.listed.set()
            self._report(stream.kind)

    def _report(self, kind: OwnedKind) -> None:
        if self.report_listed is not None:
            self.report_listed(kind.plural, all(s.listed.is_set() for s in self._streams if s.kind is kind))

    def _selecting(self, params: dict[str, str]) -> dict[str, str]:
        return {**params, "labelSelector": self.selector} if self.selector else params

    def _put(self, stream: _Stream, uid: str, body: Mapping[str, Any]) -> list[Key]:
        index = self.indexes[stream.kind.index]
        key = owner_key(body)
        if key is None:  # its labels no longer make it slotkeeper's
            return index.discard(uid)
        try:
            summary = stream.kind.summarise(body)
        except Exception:  # noqa: BLE001 -- one odd object must not stop the kind's watch (it would replay)
            log.exception("%s: %s/%s could not be read; left out", stream.where, key[0],
                          (body.get("metadata") or {}).get("name"))
            return index.discard(uid)
        return index.put(uid, key, summary)

    def _drop(self, stream: _Stream, uids: set[str], changed: set[Key] | None = None) -> None:
        """Objects gone: out of the index; their endpoints (and ``changed``'s) woken."""
        keys = set(changed or ())
        index = self.indexes[stream.kind.index]
        for uid in uids:
            stream.uids.discard(uid)
            keys.update(index.discard(uid))
        self._wake(keys)

    def _wake(self, keys: Iterable[Key]) -> None:
        for namespace, name in keys:
            self.wake(namespace, name)
