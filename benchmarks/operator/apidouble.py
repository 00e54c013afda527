"""The benchmark's Kubernetes API double: the integration harness's KMock-based ClusterEmulator
(tests/integration/kmock_cluster.py: its store, watch, patch and status-subresource semantics), with

* three changes for speed, none to what is answered: KMock's request routing filters the whole
  request history for each request, and its object lookups scan every stored object (both quadratic:
  ~10 requests/s after a few thousand requests or objects); the emulator's copy.deepcopy of every
  stored object and event becomes an orjson round trip;
* counts of the operator's requests by verb and resource, and of the TCP connections it opened
  (the benchmark's own requests carry KMock's User-Agent and are not counted);
* the Deployment controller: each Deployment is marked fully ready (patching /status through the
  API) as soon as it is created or scaled;
* what the timings need: each endpoint Service's selector and each endpoint's phase as stored, with
  a callback on every selector change (called while the PATCH is being served).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import sys
import time
import types
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import kmock
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "integration"))
import kmock_cluster
from kmock_cluster import DEPLOYMENTS, MODELENDPOINTS, SERVICES, ClusterEmulator, Kube

LABEL_ENDPOINT = "slotkeeper.io/endpoint"
LABEL_SLOT = "slotkeeper.io/slot"
OURS = "kmock/"  # the User-Agent prefix of the benchmark's own requests (KMock's client session)


def verb(request: kmock.Request) -> str:
    if request.action == kmock.action.WATCH:
        return "WATCH"
    if request.action == kmock.action.LIST:
        return "LIST"
    return request.method.value if request.method else "?"


class CurrentRequestOnly(list):
    """KMock's request history as its routing sees it: only the request of the current task.

    Each request is served in a task of its own, so a context variable holds it; KMock's routing
    then checks each reaction against one request instead of every request ever served.
    """
    current: contextvars.ContextVar = contextvars.ContextVar("kmock_request", default=None)

    def append(self, request: kmock.Request) -> None:
        self.current.set(request)

    def __iter__(self):
        request = self.current.get()
        return iter(() if request is None else (request,))


def json_copy(value: Any, memo: Any = None) -> Any:
    """copy.deepcopy for JSON documents, several times faster."""
    return orjson.loads(orjson.dumps(value))


kmock_cluster.copy = types.SimpleNamespace(deepcopy=json_copy)  # the harness module's only use of `copy`


@attrs.define(kw_only=True)
class BenchEmulator(ClusterEmulator):
    counts: collections.Counter = attrs.field(factory=collections.Counter, init=False)
    by_resource: collections.Counter = attrs.field(factory=collections.Counter, init=False)
    event_reasons: collections.Counter = attrs.field(factory=collections.Counter, init=False)  # Events posted
    connections: int = attrs.field(default=0, init=False)
    last_request: float = attrs.field(default=0.0, init=False)  # monotonic time of the operator's last
    selectors: dict = attrs.field(factory=dict, init=False)  # endpoint -> the slot its Service selects
    blue_at: dict = attrs.field(factory=dict, init=False)  # endpoint -> when it first selected blue
    phases: dict = attrs.field(factory=dict, init=False)  # endpoint -> status.phase
    healthy: set = attrs.field(factory=set, init=False)  # endpoints that have been Healthy
    on_selector: Callable[[str, str | None, float], None] | None = attrs.field(default=None, init=False)
    _transports: weakref.WeakSet = attrs.field(factory=weakref.WeakSet, init=False)
    _unready: asyncio.Queue = attrs.field(factory=asyncio.Queue, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._requests = CurrentRequestOnly()

    def reset_counts(self) -> None:
        self.counts.clear()
        self.by_resource.clear()
        self.event_reasons.clear()
        self.connections = 0

    async def _handle(self, request: kmock.Request):
        if not request.headers.get("User-Agent", "").startswith(OURS):
            self.last_request = time.monotonic()
            what = verb(request)
            plural = (request.resource.plural if request.resource else None) or "(discovery)"
            self.counts[what] += 1
            self.by_resource[what, plural + (f"/{request.subresource}" if request.subresource else "")] += 1
            if plural == "events" and isinstance(request.data, dict):
                self.event_reasons[request.data.get("reason")] += 1
            transport = request._raw_request.transport  # private (kmock): the aiohttp request
            if transport is not None and transport not in self._transports:
                self._transports.add(transport)
                self.connections += 1
        return await super()._handle(request)

    # KMock's own readers of single objects, by key instead of a scan (same objects, same answers).
    def _stored(self, request: kmock.Request, namespace: str | None = None, name: str | None = None):
        key = (request.resource, namespace or request.namespace, name or request.name)
        return self._objects._objects.get(key)  # private (kmock): ObjectsArray's dict

    async def _serve_fetch(self, request: kmock.Request):
        obj = self._stored(request)
        if obj is None or obj.deleted:
            raise kmock.KubernetesObjectNotFoundError()
        return obj.raw

    async def _serve_create(self, request: kmock.Request):
        meta = request.data.get("metadata", {})
        return self._stored(request, meta.get("namespace"), meta.get("name")).raw

    async def _serve_update(self, request: kmock.Request):
        return self._stored(request).last.raw

    _serve_delete = _serve_update

    async def _emit(self, resource: kmock.resource, type_: str, raw: Mapping[str, Any]) -> None:
        await super()._emit(resource, type_, raw)
        if type_ == "DELETED":
            return
        meta = raw.get("metadata", {})
        if resource == DEPLOYMENTS:
            status, spec = raw.get("status") or {}, raw.get("spec") or {}
            if (status.get("observedGeneration") != meta.get("generation")
                    or status.get("readyReplicas", 0) != spec.get("replicas", 1)):
                self._unready.put_nowait((meta["namespace"], meta["name"]))
        elif resource == SERVICES:
            endpoint = (meta.get("labels") or {}).get(LABEL_ENDPOINT)
            slot = ((raw.get("spec") or {}).get("selector") or {}).get(LABEL_SLOT)
            if endpoint == meta["name"] and self.selectors.get(endpoint) != slot:
                now = time.monotonic()
                self.selectors[endpoint] = slot
                if slot == "blue":
                    self.blue_at.setdefault(endpoint, now)
                if self.on_selector is not None:
                    self.on_selector(endpoint, slot, now)
        elif resource == MODELENDPOINTS:
            phase = (raw.get("status") or {}).get("phase")
            self.phases[meta["name"]] = phase
            if phase == "Healthy":
                self.healthy.add(meta["name"])

    async def deployment_controller(self, workers: int = 4) -> None:
        """Mark each Deployment ready (all replicas ready, available, updated) once created or scaled."""
        kube = Kube(self)

        async def work() -> None:
            while True:
                namespace, name = await self._unready.get()
                with contextlib.suppress(LookupError):  # deleted meanwhile
                    await kube.set_deployment_status(name, namespace=namespace)

        await asyncio.gather(*(work() for _ in range(workers)))


async def start() -> tuple[BenchEmulator, kmock.Server, contextlib.AsyncExitStack]:
    """The emulator serving HTTP on 127.0.0.1:<random port>; close the stack to stop it."""
    stack = contextlib.AsyncExitStack()
    emulator = await stack.enter_async_context(BenchEmulator())
    server = await stack.enter_async_context(kmock.Server(emulator))
    kmock_cluster.declare_resources(emulator)
    return emulator, server, stack
