"""The benchmark's Kubernetes API double: the integration harness's ClusterEmulator
(tests/integration/kmock_cluster.py: the apiserver semantics it pins -- defaulting, validation,
managedFields and server-side apply, label and field selectors on lists and watches, watch
replays from a resourceVersion), with

* speed-ups that change nothing that is answered: KMock's request routing filters the whole
  request history for each request (quadratic: ~10 requests/s after a few thousand requests),
  so it sees only the request at hand; KMock's list of served resources, which the harness asks
  for on every request, iterates over every stored object (2.6 ms per request with 10,000
  objects), so the store counts its keys by resource; copy.deepcopy in the harness (merge
  patches, strategic-merge lists, Kube.peek) becomes an orjson round trip; KMock renders JSON
  answers and watch lines with orjson instead of the standard library (the same documents; only
  insignificant whitespace differs); a request to a resource goes straight to the reaction that
  the first request of its shape (method, action, resource, subresource, namespaced or not, named
  or not) matched, instead of checking every reaction in priority order again (the harness's
  reactions for resources match on method and action; check_double.py compares the answers with
  the harness's);
* more of them since 2026-12-02 (with the harness's own compare_fields shortcut, about 30 % of the
  double's CPU per endpoint; RESULTS.md "Session 7"):
  stored objects and watch events share what was written instead of copying it three times
  (BenchEmulator._snapshot); request bodies parsed by orjson (the standard library's parser for
  what orjson refuses); KMock's inspect.signature of its callables, the harness's kmock.resource of
  each URL, its timestamps (formatted once a second) and managedFields' fieldsV1 of a set of paths
  cached; managedFields' list-item keys written by orjson where its text is json.dumps's
  (check_double.py compares these helpers too);
* counts of the operator's requests by verb and resource, of the TCP connections it opened, of
  the objects listed and watch events sent to it, and the label selectors its lists and watches
  asked for (the benchmark's own requests carry KMock's User-Agent and are not counted);
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
import functools
import inspect
import json
import sys
import time
import types
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import kmock._internal.apps as _kmock_apps  # private (kmock): the routing and the rendering
import kmock._internal.rendering as _kmock_rendering
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


# The harness module's uses of `copy` (merge patches, strategic-merge lists, Kube.peek) all copy JSON documents.
kmock_cluster.copy = types.SimpleNamespace(deepcopy=json_copy)


def _orjson_dumps(value: Any, **_: Any) -> str:
    return orjson.dumps(value).decode()


# KMock's rendering: JSON answers through aiohttp.web.json_response, watch lines through json.dumps.
_kmock_rendering.json = types.SimpleNamespace(dumps=_orjson_dumps)
_kmock_rendering.aiohttp = types.SimpleNamespace(web=types.SimpleNamespace(
    **{name: getattr(aiohttp.web, name) for name in dir(aiohttp.web) if not name.startswith("__")},
))
_kmock_rendering.aiohttp.web.json_response = functools.partial(aiohttp.web.json_response, dumps=_orjson_dumps)


@functools.lru_cache(maxsize=1024)
def _signature(payload: Callable) -> inspect.Signature:
    return inspect.signature(payload)


def _cached_signature(payload: Callable) -> inspect.Signature:
    try:
        return _signature(payload)
    except TypeError:  # unhashable
        return inspect.signature(payload)


# KMock's rendering asks inspect.signature of the same few callables on every request (3 % of the
# double's CPU); their signatures never change.
_kmock_rendering.inspect = types.SimpleNamespace(
    **{name: getattr(inspect, name) for name in dir(inspect) if not name.startswith("__")},
)
_kmock_rendering.inspect.signature = _cached_signature


async def _request_json(self: aiohttp.web.BaseRequest, *, loads: Callable = json.loads) -> Any:
    """aiohttp's BaseRequest.json through orjson; what orjson refuses (NaN, huge integers, lone
    surrogates) goes to the standard library's parser, so every body decodes as it did, or fails as
    it did."""
    body = await self.read()
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return loads(await self.text())


aiohttp.web.BaseRequest.json = _request_json  # the double's process only: the server's request bodies


class _Clock:
    """The harness's _now (its timestamps, whole seconds): formatted once per second, not per call."""

    def __init__(self) -> None:
        self.second, self.text = -1, ""

    def __call__(self) -> str:
        second = int(time.time())
        if second != self.second:
            self.second = second
            self.text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
        return self.text


kmock_cluster._now = _Clock()


@functools.lru_cache(maxsize=256)
def _resource(*, group: str, version: str, plural: str) -> kmock.resource:
    return kmock.resource(group=group, version=version, plural=plural)


# The harness makes the kmock.resource of each request's URL (about 30 us each: isinstance checks
# against typing Protocols); resources are immutable, so one per URL's group, version and plural.
kmock_cluster._kmock_references = types.SimpleNamespace(resource=_resource)

# structured-merge-diff's keys of list items in managedFields (the harness's _smd_json: json.dumps,
# sorted keys, no spaces, no ASCII escapes). A key of strings, integers, booleans and nulls is written
# by orjson in the same text (checked for every code point); anything else (floats, nesting) by one
# encoder with json.dumps's arguments (json.dumps with arguments builds a new encoder on every call).
_SMD_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_SMD_PLAIN = frozenset((str, int, bool, type(None)))


def _smd_json(value: Any) -> str:
    if _SMD_PLAIN.issuperset(map(type, value.values())) if type(value) is dict else type(value) in _SMD_PLAIN:
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        except TypeError:  # integers beyond 64 bits
            pass
    return _SMD_ENCODER.encode(value)


kmock_cluster._smd_json = _smd_json

_to_fields_v1 = functools.lru_cache(maxsize=4096)(kmock_cluster.to_fields_v1)


def _fields_v1(paths: Any) -> dict[str, Any]:
    """managedFields' fieldsV1 of a set of field paths, remembered by the set: many entries own the
    same paths (paths name keys, not values: every endpoint's status writes, every Deployment status
    the benchmark's controller writes); an object's own entry, with its ownerReferences keyed by the
    owner's uid, is new each time. One dict shared by many objects, as everything the double stores
    is (BenchEmulator._snapshot)."""
    return _to_fields_v1(frozenset(paths))


kmock_cluster.to_fields_v1 = _fields_v1


async def _routed(self: Any, request: kmock.Request) -> Any:
    """kmock's RawHandler._handle (which the harness calls for every resource request after its
    store logic) for a BenchEmulator: the reaction that matched the first request of this shape."""
    if not isinstance(self, BenchEmulator):
        return await _RawHandler._handle(self, request)
    shape = (request.method, request.action, request.resource, request.subresource,
             request.namespace is None, request.name is None)
    payload = self._routes.get(shape)
    if payload is None:
        # kmock's own order: priorities reversed, padded with zeroes to one length; the first that matches
        priorities = [tuple(-p for p in reaction.priorities) for reaction in self._payloads]
        width = max(len(priority) for priority in priorities)
        order = sorted(range(len(priorities)), key=lambda i: priorities[i] + (0,) * (width - len(priorities[i])))
        payload = next(self._payloads[i] for i in order if request in self._payloads[i]._source)
        self._routes[shape] = payload
    return await payload(request)


_RawHandler = _kmock_apps.RawHandler
kmock_cluster._kmock_apps = types.SimpleNamespace(
    **{name: getattr(_kmock_apps, name) for name in dir(_kmock_apps) if not name.startswith("__")},
)
kmock_cluster._kmock_apps.RawHandler = types.SimpleNamespace(_handle=_routed)


class ObjectsByResource(dict):
    """KMock's store of objects (ObjectsArray's dict, key (resource, namespace, name)), also counting
    its keys by resource, so that "which resources have objects" needs no scan of every object."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.per_resource: collections.Counter = collections.Counter()
        self.update(*args, **kwargs)

    def __setitem__(self, key: tuple, value: Any) -> None:
        if key not in self:
            self.per_resource[key[0]] += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: tuple) -> None:
        super().__delitem__(key)
        self._forget(key)

    def _forget(self, key: tuple) -> None:
        self.per_resource[key[0]] -= 1
        if not self.per_resource[key[0]]:
            del self.per_resource[key[0]]

    def pop(self, key: tuple, *default: Any) -> Any:
        present = key in self
        value = super().pop(key, *default)
        if present:
            self._forget(key)
        return value

    def popitem(self) -> tuple:
        key, value = super().popitem()
        self._forget(key)
        return key, value

    def setdefault(self, key: tuple, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def clear(self) -> None:
        super().clear()
        self.per_resource.clear()


@attrs.define(kw_only=True)
class BenchEmulator(ClusterEmulator):
    counts: collections.Counter = attrs.field(factory=collections.Counter, init=False)
    by_resource: collections.Counter = attrs.field(factory=collections.Counter, init=False)
    event_reasons: collections.Counter = attrs.field(factory=collections.Counter, init=False)  # Events posted
    connections: int = attrs.field(default=0, init=False)
    # the operator's watch events, by resource plural, and the labelSelector its lists and watches sent
    watch_events: collections.Counter = attrs.field(factory=collections.Counter, init=False)
    listed: collections.Counter = attrs.field(factory=collections.Counter, init=False)  # items in its lists
    label_selectors: dict = attrs.field(factory=dict, init=False)  # (verb, plural) -> {labelSelector or None}
    last_request: float = attrs.field(default=0.0, init=False)  # monotonic time of the operator's last
    selectors: dict = attrs.field(factory=dict, init=False)  # endpoint -> the slot its Service selects
    blue_at: dict = attrs.field(factory=dict, init=False)  # endpoint -> when it first selected blue
    phases: dict = attrs.field(factory=dict, init=False)  # endpoint -> status.phase
    healthy: set = attrs.field(factory=set, init=False)  # endpoints that have been Healthy
    on_selector: Callable[[str, str | None, float], None] | None = attrs.field(default=None, init=False)
    _transports: weakref.WeakSet = attrs.field(factory=weakref.WeakSet, init=False)
    _routes: dict = attrs.field(factory=dict, init=False)  # request shape -> its reaction (_routed)
    _unready: asyncio.Queue = attrs.field(factory=asyncio.Queue, init=False)
    # Stored objects and events share what was written instead of copying it: every write in the
    # harness builds a new object from a copy of the stored one (never changing a stored object in
    # place), the answers and watch lines are only rendered, and the benchmark reads what it needs.
    _snapshot = staticmethod(lambda value: value)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._requests = CurrentRequestOnly()
        # private (kmock): ObjectsArray's dict; ObjectsArray is frozen
        object.__setattr__(self._objects, "_objects", ObjectsByResource(self._objects._objects))

    def _get_resources(self) -> list[kmock.resource]:
        """KubernetesEmulator._get_resources (the declared resources and those of stored objects)
        without iterating over every stored object: the harness asks it on every request."""
        declared = kmock.KubernetesScaffold._get_resources(self)
        return list(set(declared) | set(self._objects._objects.per_resource))

    def reset_counts(self) -> None:
        self.counts.clear()
        self.by_resource.clear()
        self.event_reasons.clear()
        self.connections = 0
        self.watch_events.clear()
        self.listed.clear()

    async def _handle(self, request: kmock.Request):
        if not request.headers.get("User-Agent", "").startswith(OURS):
            self.last_request = time.monotonic()
            what = verb(request)
            plural = (request.resource.plural if request.resource else None) or "(discovery)"
            self.counts[what] += 1
            self.by_resource[what, plural + (f"/{request.subresource}" if request.subresource else "")] += 1
            if plural == "events" and isinstance(request.data, dict):
                self.event_reasons[request.data.get("reason")] += 1
            if what in ("LIST", "WATCH"):
                self.label_selectors.setdefault((what, plural), set()).add(request.params.get("labelSelector"))
            transport = request._raw_request.transport  # private (kmock): the aiohttp request
            if transport is not None and transport not in self._transports:
                self._transports.add(transport)
                self.connections += 1
        return await super()._handle(request)

    async def _serve_list(self, request: kmock.Request) -> dict[str, Any]:
        answer = await super()._serve_list(request)
        if not request.headers.get("User-Agent", "").startswith(OURS):
            self.listed[request.resource.plural] += len(answer["items"])
        return answer

    async def _serve_watch(self, request: kmock.Request):
        """The harness's watch stream, counting the events sent to the operator."""
        theirs = not request.headers.get("User-Agent", "").startswith(OURS)
        plural = request.resource.plural if request.resource else "?"
        async with contextlib.aclosing(super()._serve_watch(request)) as stream:
            async for item in stream:
                if theirs and isinstance(item, dict):
                    self.watch_events[plural] += 1
                yield item

    async def _emit(self, resource: kmock.resource, type_: str, raw: Mapping[str, Any]) -> None:
        await super()._emit(resource, type_, raw)  # (the previous state comes via _notify)
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


async def start(namespaces: tuple[str, ...] = ()) -> tuple[BenchEmulator, kmock.Server, contextlib.AsyncExitStack]:
    """The emulator serving HTTP on 127.0.0.1:<random port>, with these namespaces created through
    its API (objects in a missing namespace are refused); close the stack to stop it."""
    stack = contextlib.AsyncExitStack()
    emulator = await stack.enter_async_context(BenchEmulator())
    server = await stack.enter_async_context(kmock.Server(emulator))
    kmock_cluster.declare_resources(emulator)
    kube = Kube(emulator)
    for namespace in namespaces:
        await kube.create_namespace(namespace)
    return emulator, server, stack
