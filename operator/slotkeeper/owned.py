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
* **Resumption.** A watch continues from the last resourceVersion it saw (bookmarks asked for);
  an expired one (410 Gone, as a status code or a watch ``ERROR``) lists again, replacing that
  stream's part of the index, and wakes every endpoint whose summaries changed meanwhile.
* **Kinds the cluster does not serve.** HTTPRoutes exist only with the Gateway API CRDs: a 404 is
  logged once, counts as listed (empty) and is tried again every MISSING_KIND_RETRY_SECONDS, so
  CRDs installed later are picked up.
* Errors (the apiserver unreachable, 5xx, 403) back off exponentially up to MAX_BACKOFF_SECONDS and
  log once per streak; the index keeps what it had meanwhile (the loops' decisions stay on the last
  known state, as with kopf).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
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
WATCH_TIMEOUT_SECONDS = 10 * 60  # the apiserver ends each watch after this; it is opened again at once
MISSING_KIND_RETRY_SECONDS = 60.0
MAX_BACKOFF_SECONDS = 30.0

Key = tuple[str, str]  # (namespace, endpoint name)


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


OWNED_KINDS = (
    OwnedKind("slot_deployments", "apps", "v1", "deployments", summarise_deployment),
    OwnedKind("slot_pods", "", "v1", "pods", summarise_pod),
    OwnedKind("endpoint_services", "", "v1", "services", summarise_service),
    OwnedKind("slot_autoscalers", "autoscaling", "v2", "horizontalpodautoscalers", summarise_autoscaler),
    OwnedKind("slot_disruption_budgets", "policy", "v1", "poddisruptionbudgets", summarise_disruption_budget),
    OwnedKind("endpoint_routes", "gateway.networking.k8s.io", "v1", "httproutes", summarise_route),
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


class OwnedWatches:
    """The list+watch streams of every owned kind, feeding one index per kind and waking loops.

    ``namespaces``: the namespaces served (empty: cluster-wide, one stream per kind);
    ``wake(namespace, name)``: an endpoint's objects changed."""

    selector = OWNED_SELECTOR  # "": none sent (a benchmark's contrast); objects are still kept by their labels

    def __init__(self, api: KubeApi, wake: Callable[[str, str], None], namespaces: Iterable[str] = (),
                 kinds: Iterable[OwnedKind] = OWNED_KINDS) -> None:
        self.api, self.wake = api, wake
        self.kinds = tuple(kinds)
        self.indexes = {kind.index: OwnedIndex() for kind in self.kinds}
        self._streams = [(kind, namespace) for kind in self.kinds for namespace in (tuple(namespaces) or (None,))]
        self._listed = {stream: asyncio.Event() for stream in self._streams}
        self._tasks: list[asyncio.Task[None]] = []

    def __getitem__(self, index: str) -> OwnedIndex:
        return self.indexes[index]

    def start(self) -> None:
        for kind, namespace in self._streams:
            where = namespace or "all namespaces"
            self._tasks.append(asyncio.get_running_loop().create_task(
                self._follow(kind, namespace), name=f"slotkeeper:watch {kind.plural} in {where}"))

    async def wait_listed(self) -> None:
        """Until every stream has listed its kind once (or found it not served)."""
        for event in self._listed.values():
            await event.wait()

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.api.close()

    # ------------------------------------------------------------------------ one stream

    async def _follow(self, kind: OwnedKind, namespace: str | None) -> None:
        """List, then watch from the list's resourceVersion, for as long as the operator runs."""
        path = api_path(kind.group, kind.version, kind.plural, namespace)
        listed, index = self._listed[(kind, namespace)], self.indexes[kind.index]
        uids: set[str] = set()  # this stream's objects (another namespace's stream has its own)
        version: str | None = None
        failures = 0
        while True:
            try:
                if version is None:
                    version = await self._list(path, kind, index, uids)
                    listed.set()
                version = await self._watch(path, kind, index, uids, version)
                failures = 0
            except ApiError as error:
                if error.status == 410:  # the resourceVersion expired: list afresh
                    version = None
                    continue
                if error.status == 404:
                    if not listed.is_set():
                        log.info("%s are not served by this cluster; looking again every %.0f s",
                                 kind.plural, MISSING_KIND_RETRY_SECONDS)
                    listed.set()
                    await asyncio.sleep(MISSING_KIND_RETRY_SECONDS)
                    continue
                failures = await self._back_off(kind, f"API error {error.status} {error.reason}", failures)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as error:
                failures = await self._back_off(kind, f"watch interrupted ({type(error).__name__})", failures)

    async def _back_off(self, kind: OwnedKind, problem: str, failures: int) -> int:
        if failures == 0:
            log.warning("%s: %s; retrying with back-off", kind.plural, problem)
        await asyncio.sleep(min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** failures))
        return failures + 1

    async def _list(self, path: str, kind: OwnedKind, index: OwnedIndex, uids: set[str]) -> str:
        """This stream's part of the index replaced by a full listing; its resourceVersion."""
        # Whole, as kopf listed: no ``limit`` pages (nothing here would gain from them, and a paged
        # list whose continue token expires midway must start over anyway).
        page = await self.api.request("GET", path, params=self._selecting({})) or {}
        found, changed = set(), set()
        for body in page.get("items") or []:
            uid = (body.get("metadata") or {}).get("uid")
            if uid:
                found.add(uid)
                changed.update(self._put(kind, index, uid, body))
        for uid in uids - found:  # deleted while no watch was open
            changed.update(index.discard(uid))
        uids.clear()
        uids.update(found)
        self._wake(changed)
        return (page.get("metadata") or {}).get("resourceVersion") or ""

    async def _watch(self, path: str, kind: OwnedKind, index: OwnedIndex, uids: set[str], version: str) -> str:
        """Apply one watch's events; the last resourceVersion seen when the apiserver ends it."""
        params = self._selecting({"watch": "true", "allowWatchBookmarks": "true", "resourceVersion": version,
                                  "timeoutSeconds": str(WATCH_TIMEOUT_SECONDS)})
        async for event in self.api.stream(path, params=params, timeout=WATCH_TIMEOUT_SECONDS + 60):
            kind_of_event, body = event.get("type"), event.get("object") or {}
            if kind_of_event == "ERROR":
                code = body.get("code")
                raise ApiError(status=code if isinstance(code, int) else 500, reason=body.get("reason"))
            meta = body.get("metadata") or {}
            version = meta.get("resourceVersion") or version
            uid = meta.get("uid")
            if kind_of_event == "BOOKMARK" or not uid:
                continue
            if kind_of_event == "DELETED":
                uids.discard(uid)
                self._wake(index.discard(uid))
            else:
                uids.add(uid)
                self._wake(self._put(kind, index, uid, body))
        return version

    def _selecting(self, params: dict[str, str]) -> dict[str, str]:
        return {**params, "labelSelector": self.selector} if self.selector else params

    @staticmethod
    def _put(kind: OwnedKind, index: OwnedIndex, uid: str, body: Mapping[str, Any]) -> list[Key]:
        key = owner_key(body)
        if key is None:  # its labels no longer make it slotkeeper's
            return index.discard(uid)
        return index.put(uid, key, kind.summarise(body))

    def _wake(self, keys: Iterable[Key]) -> None:
        for namespace, name in keys:
            self.wake(namespace, name)
