"""
Run the real kopf operator in-process against KMock over real HTTP.

The pieces (all used by ``conftest.py``; importable by tests as ``kmock_cluster``):

* :class:`ClusterEmulator` -- ``kmock.KubernetesEmulator`` plus the API-server
  behaviour that kopf and the operator depend on (see conftest.py for why).
* :func:`running_operator` / :class:`OperatorHandle` -- kopf in a task of the
  test's event loop; stops via ``stop_flag``; reports operator crashes.
* :class:`Kube` -- small async helpers for tests (create/patch/read objects,
  simulate the Deployment controller, crash-looping pods).
* :func:`eventually` -- poll a condition until it holds (no fixed sleeps).
* :func:`make_kube_config` / :func:`make_api_client` -- the official
  ``kubernetes`` client pointed at KMock without touching KUBECONFIG.

Written against kmock 0.8 and kopf 1.45 (pinned in pyproject.toml); it uses
a few of their private names (marked with "private:" below).
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import copy
import dataclasses
import datetime
import inspect
import itertools
import logging
import random
import re
import signal
import string
import threading
import uuid
import warnings
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Iterator, Mapping
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
import kopf
import kubernetes.client
from kmock._internal import apps as _kmock_apps  # private: RawHandler._handle (skip the parent's store logic)
from kopf._cogs.structs import references as _kopf_references  # private: Insights (readiness detection)
from kopf._core.engines import indexing as _kopf_indexing  # private: OperatorIndexers (to expose indices)
from kopf._core.intents import stoppers as _kopf_stoppers  # private: stopping late-spawned daemons
from kopf._core.reactor import inventory as _kopf_inventory  # private: ResourceMemories (running daemons)

logger = logging.getLogger(__name__)

# Resource objects, usable everywhere: kmock[..., PODS], kmock.objects[PODS, ns, name], k8s.peek(PODS, ...).
# (A bare string like 'v1/pods' in kmock[...] is NOT a resource filter: kmock matches it as text.)
MODELENDPOINTS = kmock.resource('slotkeeper.io/v1alpha1/modelendpoints')
DEPLOYMENTS = kmock.resource('apps/v1/deployments')
SERVICES = kmock.resource('v1/services')
PODS = kmock.resource('v1/pods')
EVENTS = kmock.resource('v1/events')
EVENTS_K8S = kmock.resource('events.k8s.io/v1/events')
CRDS = kmock.resource('apiextensions.k8s.io/v1/customresourcedefinitions')

ALL_VERBS = {'create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'}

MERGE_PATCH = 'application/merge-patch+json'
JSON_PATCH = 'application/json-patch+json'

_REASONS = {400: 'BadRequest', 401: 'Unauthorized', 403: 'Forbidden', 404: 'NotFound',
            409: 'Conflict', 410: 'Gone', 415: 'UnsupportedMediaType', 422: 'Invalid',
            429: 'TooManyRequests', 500: 'InternalError', 503: 'ServiceUnavailable',
            504: 'Timeout'}


def _res(resource: str | kmock.resource) -> kmock.resource:
    return resource if isinstance(resource, kmock.resource) else kmock.resource(resource)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge-patch: dicts merge recursively, ``None`` deletes, lists are replaced."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# ----------------------------------------------------------------------------------------------
# Label/field selectors (the subset that kubectl & client libraries normally send).
# ----------------------------------------------------------------------------------------------

_SELECTOR_SPLIT = re.compile(r',(?![^()]*\))')
_SET_REQ = re.compile(r'^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$')
_CMP_REQ = re.compile(r'^\s*([^\s!=]+)\s*(==|=|!=)\s*([^\s]*)\s*$')


def parse_selector(selector: str | None) -> list[tuple[str, str, set[str]]]:
    """Parse a label selector into ``(key, op, values)`` requirements; raises ValueError."""
    reqs: list[tuple[str, str, set[str]]] = []
    for part in _SELECTOR_SPLIT.split(selector or ''):
        part = part.strip()
        if not part:
            continue
        if m := _SET_REQ.match(part):
            reqs.append((m.group(1), m.group(2), {v.strip() for v in m.group(3).split(',') if v.strip()}))
        elif m := _CMP_REQ.match(part):
            reqs.append((m.group(1), '!=' if m.group(2) == '!=' else '=', {m.group(3)}))
        elif part.startswith('!') and re.fullmatch(r'![^\s!=(),]+', part):
            reqs.append((part[1:], '!', set()))
        elif re.fullmatch(r'[^\s!=(),]+', part):
            reqs.append((part, 'exists', set()))
        else:
            raise ValueError(f"Unparsable selector requirement: {part!r}")
    return reqs


def match_selector(values: Mapping[str, str], reqs: Iterable[tuple[str, str, set[str]]]) -> bool:
    for key, op, options in reqs:
        present = key in values
        value = values.get(key)
        ok = (
            present and value in options if op in ('=', 'in') else
            not present or value not in options if op in ('!=', 'notin') else
            present if op == 'exists' else
            not present  # op == '!'
        )
        if not ok:
            return False
    return True


def _field_values(obj: Mapping[str, Any]) -> dict[str, str]:
    meta = obj.get('metadata', {})
    fields = {'metadata.name': meta.get('name', ''), 'metadata.namespace': meta.get('namespace') or ''}
    if isinstance(obj.get('status'), Mapping) and 'phase' in obj['status']:
        fields['status.phase'] = obj['status']['phase']
    if isinstance(obj.get('spec'), Mapping) and 'nodeName' in obj['spec']:
        fields['spec.nodeName'] = obj['spec']['nodeName']
    return fields


# ----------------------------------------------------------------------------------------------
# Faults: error responses that do NOT touch the store (unlike `kmock[...] << 409`).
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(eq=False)
class Fault:
    """An injected API error; see :meth:`ClusterEmulator.fail`. ``hits`` are the failed requests."""
    view: kmock.View
    status: int
    reason: str
    message: str
    remaining: int | None  # None = forever
    delay: float = 0.0  # seconds to hold the answer: longer than the client's timeout = a timeout
    after_write: bool = False  # carry the write out, then hold the normal answer for ``delay``
    hits: list[kmock.Request] = dataclasses.field(default_factory=list)
    owner: ClusterEmulator | None = None

    @property
    def active(self) -> bool:
        return self.remaining is None or self.remaining > 0

    def cancel(self) -> None:
        if self.owner is not None and self in self.owner.faults:
            self.owner.faults.remove(self)


# ----------------------------------------------------------------------------------------------
# The emulator.
# ----------------------------------------------------------------------------------------------

@attrs.define(kw_only=True)
class ClusterEmulator(kmock.KubernetesEmulator):
    """
    ``kmock.KubernetesEmulator`` with the API-server semantics kopf relies on.

    Changes vs. plain KMock (all other KMock features -- ``kmock[...] << ...``
    reactions, ``kmock.objects``, request history -- work as documented):

    * ``metadata.uid``, ``creationTimestamp``, ``resourceVersion`` (a global
      counter bumped on every write), ``generation`` (1 on create, +1 when
      anything outside ``metadata``/``status`` changes); ``generateName``;
      ``namespace``/``apiVersion``/``kind`` filled in from the URL if absent.
    * PATCH by Content-Type: merge-patch (RFC 7386) and strategic-merge-patch
      (treated as a merge-patch: lists replaced, no ``$patch`` directives);
      JSON-patch (a failed ``test`` op -> 422, as kopf expects);
      apply-patch (server-side apply) -> 415 (unsupported).
      A ``metadata.resourceVersion`` in a merge-patch/PUT body that differs
      from the stored one -> 409 (optimistic concurrency).
    * PUT on a named object replaces it (not served by plain KMock).
    * Status subresource (when ``status_subresource=True``, the default) for
      resources declared with ``subresources={'status'}``: create drops
      ``.status``; writes to the main resource keep the stored status; writes
      to ``/status`` change only ``.status``.
    * Lists report the current resourceVersion; a watch with
      ``?resourceVersion=N`` replays only the events after N (from an event
      log) instead of re-sending every object as ADDED; a watch without it
      sends the current objects as ADDED first (as the real API does).
      The watch subscribes before it snapshots (no lost events).
    * ``labelSelector`` (=, ==, !=, in, notin, exists, !key) and
      ``fieldSelector`` (metadata.name, metadata.namespace, status.phase,
      spec.nodeName; =, ==, !=) on list & watch; ``timeoutSeconds`` on watch.
      A watched object that stops matching the selector gets no DELETED event.
    * Garbage collection (``garbage_collection=True``): deleting an object
      deletes its dependents (``ownerReferences[].uid``) immediately
      (finalizers are respected) -- the real GC does it asynchronously.
    * :meth:`fail` injects API errors that are answered *before* the store is
      touched; native ``kmock[...] << 409`` reactions still answer *after*
      the store has been changed (that is how KMock works).
    """
    status_subresource: bool = True
    garbage_collection: bool = True

    _rv_counter: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _last_rv: int = attrs.field(default=0, init=False)
    _event_log: dict[kmock.resource, list[tuple[int, dict[str, Any]]]] = attrs.field(
        factory=lambda: collections.defaultdict(list), init=False)
    _watchers: collections.Counter[tuple[kmock.resource, str | None]] = attrs.field(
        factory=collections.Counter, init=False)
    faults: list[Fault] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.fallback[kmock.method.PUT] << self._serve_replace

    # ---- public API ------------------------------------------------------------------------

    def fail(self, *criteria: Any, status: int = 409, times: int | None = 1,
             reason: str | None = None, message: str | None = None,
             delay: float = 0.0, after_write: bool = False) -> Fault:
        """
        Answer the matching requests with a K8s ``Status`` error, store untouched.

        The criteria are anything ``kmock[...]`` accepts, e.g.
        ``kmock.fail('patch', DEPLOYMENTS, kmock.name('x'), status=409, times=2)``,
        ``kmock.fail('create v1/services')`` or ``kmock.fail('patch', kmock.resource('v1/pods'))``
        (a bare ``'v1/pods'`` string is a text filter in kmock, not a resource).
        ``times=None`` fails forever. ``delay`` holds the answer that long (a client timeout when it
        is longer than the client waits); with ``after_write=True`` the write is carried out and
        only its answer is held: the client cannot know whether its write happened.
        """
        view: kmock.View = self
        for criterion in criteria:
            view = view[criterion]
        fault = Fault(view=view, status=status, reason=reason or _REASONS.get(status, 'Failure'),
                      message=message or f"Injected fault: HTTP {status}",
                      remaining=times, delay=delay, after_write=after_write, owner=self)
        self.faults.append(fault)
        return fault

    def watch_count(self, resource: str | kmock.resource, namespace: str | None = None) -> int:
        """How many watch-streams are currently subscribed (``None`` = cluster-wide)."""
        return self._watchers[_res(resource), namespace]

    @property
    def resource_version(self) -> int:
        return self._last_rv

    # ---- request handling ------------------------------------------------------------------

    def _info(self, resource: kmock.resource) -> kmock.ResourceInfo | None:
        return self.resources._resources.get(resource)  # private: avoid auto-creating entries

    def _has_status(self, resource: kmock.resource) -> bool:
        info = self._info(resource)
        return bool(self.status_subresource and info is not None and 'status' in info.subresources)

    def _next_rv(self) -> str:
        self._last_rv = next(self._rv_counter)
        return str(self._last_rv)

    async def _emit(self, resource: kmock.resource, type_: str, raw: Mapping[str, Any]) -> None:
        # Must be called under self._lock -- for the watch-streams' snapshot consistency.
        event = {'type': type_, 'object': copy.deepcopy(dict(raw))}
        rv = int(event['object'].get('metadata', {}).get('resourceVersion') or 0)
        self._event_log[resource].append((rv, event))
        await self._buses[resource].put(event)  # private (kmock): the per-resource watch bus

    @staticmethod
    def _error(status: int, message: str, reason: str | None = None) -> kmock.KubernetesError:
        return kmock.KubernetesError(status=status, reason=reason or _REASONS.get(status), message=message)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.resource is None:  # discovery & other non-resource URLs
            return await super()._handle(request)

        held = 0.0
        for fault in list(self.faults):
            if fault.active and request in fault.view:
                fault.hits.append(request)
                if fault.remaining is not None:
                    fault.remaining -= 1
                if fault.after_write:
                    held = fault.delay
                    break
                await asyncio.sleep(fault.delay)
                return aiohttp.web.json_response({
                    'apiVersion': 'v1', 'kind': 'Status', 'metadata': {}, 'status': 'Failure',
                    'code': fault.status, 'reason': fault.reason, 'message': fault.message,
                    'details': {'name': request.name or '', 'kind': (request.resource.plural or '')},
                }, status=fault.status)

        gc_key: tuple[kmock.resource, str | None, str] | None = None
        async with self._lock:
            if request.action == kmock.action.CREATE:
                await self._do_create(request)
            elif request.action == kmock.action.UPDATE and request.name is not None:
                gc_key = await self._do_update(request)
            elif request.method == kmock.method.PUT and request.name is not None:
                gc_key = await self._do_update(request, replace=True)
            elif request.action == kmock.action.DELETE and request.name is not None:
                gc_key = await self._do_delete(request)
        try:
            if held:
                await asyncio.sleep(held)
            # Skip KubernetesEmulator._handle (its store logic is replaced above); go to the reactions.
            return await _kmock_apps.RawHandler._handle(self, request)
        finally:
            if gc_key is not None:  # finalizers are gone: really delete after the response is made
                async with self._lock:
                    await self._hard_delete(gc_key)

    async def _do_create(self, request: kmock.Request) -> None:
        resource = request.resource
        assert resource is not None
        data = request.data
        if not isinstance(data, dict):
            raise self._error(400, "The request body must be a JSON object.")
        meta = data.setdefault('metadata', {})
        if not meta.get('name'):
            if not meta.get('generateName'):
                raise self._error(422, "metadata.name or metadata.generateName is required.")
            suffix = ''.join(random.choices(string.ascii_lowercase + string.digits, k=5))
            meta['name'] = f"{meta['generateName']}{suffix}"
        if request.namespace and meta.get('namespace') and meta['namespace'] != request.namespace:
            raise self._error(400, "The namespace of the object does not match the URL.")
        if request.namespace:
            meta['namespace'] = request.namespace
        key = (resource, meta.get('namespace'), meta['name'])
        if key in self._objects and not self._objects[key].deleted:
            raise self._error(409, f"{resource.plural} {meta['name']!r} already exists", 'AlreadyExists')
        info = self._info(resource)
        data.setdefault('apiVersion', f"{resource.group}/{resource.version}" if resource.group else resource.version)
        if info is not None and info.kind:
            data.setdefault('kind', info.kind)
        for field in ('deletionTimestamp', 'deletionGracePeriodSeconds'):
            meta.pop(field, None)
        meta['uid'] = str(uuid.uuid4())
        meta['creationTimestamp'] = _now()
        meta['generation'] = 1
        meta['resourceVersion'] = self._next_rv()
        if self._has_status(resource):
            data.pop('status', None)
        if key in self._objects:
            self._objects[key].create(copy.deepcopy(data))
        else:
            self._objects[key] = copy.deepcopy(data)
        await self._emit(resource, 'ADDED', data)

    async def _do_update(self, request: kmock.Request, *, replace: bool = False):
        resource = request.resource
        assert resource is not None and request.name is not None
        key = (resource, request.namespace, request.name)
        if key not in self._objects or self._objects[key].deleted:
            raise kmock.KubernetesObjectNotFoundError()
        old: dict[str, Any] = copy.deepcopy(self._objects[key].raw)
        old_meta = old.get('metadata', {})
        data = request.data
        headers = {name.lower(): value for name, value in request.headers.items()}
        content_type = headers.get('content-type', '').split(';')[0].strip().lower()

        if replace:
            if not isinstance(data, dict):
                raise self._error(400, "The request body must be a JSON object.")
            new = copy.deepcopy(data)
        elif content_type == 'application/apply-patch+yaml':
            raise self._error(415, "Server-side apply is not supported by the emulator.")
        elif isinstance(data, list):  # JSON-patch (RFC 6902)
            try:
                new = jsonpatch.apply_patch(old, data, in_place=False)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                raise self._error(422, f"JSON-patch failed: {e}")
        elif isinstance(data, dict):  # merge-patch or strategic-merge-patch (treated the same)
            new = merge_patch(old, data)
        else:
            raise self._error(400, "The patch body must be a JSON object or a JSON-patch list.")

        sent_rv = (data.get('metadata') or {}).get('resourceVersion') if isinstance(data, dict) else None
        if sent_rv is not None and str(sent_rv) != str(old_meta.get('resourceVersion')):
            raise self._error(409, "the object has been modified; please apply your changes "
                                   "to the latest version and try again", 'Conflict')

        # Subresource semantics: /status changes only the status, the main resource never the status.
        if self._has_status(resource):
            if request.subresource == 'status':
                new = dict(old, status=new.get('status')) if 'status' in new else {
                    k: v for k, v in old.items() if k != 'status'}
            elif 'status' in old:
                new['status'] = old['status']
            else:
                new.pop('status', None)

        meta = new.setdefault('metadata', {})
        for field in ('name', 'namespace', 'uid', 'creationTimestamp', 'deletionTimestamp', 'generation'):
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        if 'generation' in old_meta:
            def payload(obj: Mapping[str, Any]) -> dict[str, Any]:
                return {k: v for k, v in obj.items() if k not in ('metadata', 'status')}
            if payload(new) != payload(old) or (not self._has_status(resource) and new.get('status') != old.get('status')):
                meta['generation'] = int(old_meta['generation']) + 1
        meta['resourceVersion'] = self._next_rv()

        self._objects[key].history.append(copy.deepcopy(new))
        await self._emit(resource, 'MODIFIED', new)
        if meta.get('deletionTimestamp') and not meta.get('finalizers'):
            return key
        return None

    async def _do_delete(self, request: kmock.Request):
        resource = request.resource
        assert resource is not None and request.name is not None
        key = (resource, request.namespace, request.name)
        if key not in self._objects or self._objects[key].deleted:
            raise kmock.KubernetesObjectNotFoundError()
        return await self._soft_delete(key)

    async def _soft_delete(self, key):
        obj = self._objects[key]
        meta = obj.raw.get('metadata', {})
        if meta.get('deletionTimestamp'):
            return None  # already being deleted
        if meta.get('finalizers'):
            new = copy.deepcopy(obj.raw)
            new['metadata']['deletionTimestamp'] = _now()
            new['metadata']['deletionGracePeriodSeconds'] = 0
            new['metadata']['resourceVersion'] = self._next_rv()
            obj.history.append(new)
            await self._emit(key[0], 'MODIFIED', new)
            return None
        return key  # no finalizers: delete after the response (the response shows the last state)

    async def _hard_delete(self, key) -> None:
        obj = self._objects[key]
        if obj.deleted:
            return
        last = copy.deepcopy(obj.raw)
        last.setdefault('metadata', {})['resourceVersion'] = self._next_rv()
        obj.delete()
        await self._emit(key[0], 'DELETED', last)
        uid = last['metadata'].get('uid')
        if self.garbage_collection and uid:
            for dep_key, dep in list(self._objects.items()):
                if dep.deleted:
                    continue
                owners = dep.raw.get('metadata', {}).get('ownerReferences') or []
                if any(ref.get('uid') == uid for ref in owners):
                    gc_key = await self._soft_delete(dep_key)
                    if gc_key is not None:
                        await self._hard_delete(gc_key)

    async def _serve_replace(self, request: kmock.Request) -> dict[str, Any]:
        key = (request.resource, request.namespace, request.name)
        return self._objects[key].last.raw

    # ---- reading ---------------------------------------------------------------------------

    def _known(self, resource: kmock.resource | None) -> bool:
        return resource is not None and any(r == resource for r in self._get_resources())

    @staticmethod
    def _selectors(request: kmock.Request) -> Callable[[Mapping[str, Any]], bool]:
        try:
            labels = parse_selector(request.params.get('labelSelector'))
            fields = parse_selector(request.params.get('fieldSelector'))
        except ValueError as e:
            raise kmock.KubernetesError(status=400, reason='BadRequest', message=str(e))

        def check(obj: Mapping[str, Any]) -> bool:
            meta = obj.get('metadata', {})
            if request.namespace is not None and meta.get('namespace') != request.namespace:
                return False
            if request.name is not None and meta.get('name') != request.name:
                return False
            return (match_selector(meta.get('labels') or {}, labels) and
                    match_selector(_field_values(obj), fields))
        return check

    def _current(self, resource: kmock.resource) -> list[dict[str, Any]]:
        return [copy.deepcopy(obj.raw) for (res, _, _), obj in self._objects.items()
                if res == resource and not obj.deleted]

    async def _serve_list(self, request: kmock.Request) -> dict[str, Any]:
        if not self._known(request.resource):
            raise kmock.KubernetesResourceNotFoundError()
        check = self._selectors(request)
        async with self._lock:
            items = [obj for obj in self._current(request.resource) if check(obj)]
            rv = self._last_rv
        info = self._info(request.resource)
        return {
            'apiVersion': 'v1', 'kind': f"{info.kind}List" if info and info.kind else 'List',
            'metadata': {'resourceVersion': str(rv)},
            'items': items,
        }

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        resource = request.resource
        if not self._known(resource):
            raise kmock.KubernetesResourceNotFoundError()
        check = self._selectors(request)
        since_raw = request.params.get('resourceVersion')
        since = int(since_raw) if since_raw and since_raw.isdigit() else None
        timeout = request.params.get('timeoutSeconds')

        yield b''  # send the headers now: the stream is open even if nothing happens.

        bus = self._buses[resource]
        async with self._lock:
            mark = await bus.mark()  # subscribe before the snapshot: no events are lost in between
            if since is None or since == 0:  # "most recent": synthetic ADDED for all current objects
                initial = [{'type': 'ADDED', 'object': obj} for obj in self._current(resource)]
            else:
                initial = [copy.deepcopy(event) for rv, event in self._event_log[resource] if rv > since]
            self._watchers[resource, request.namespace] += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(timeout) if timeout else None
        stream = aiter(bus.stream(since=mark))
        try:
            for event in initial:
                if check(event['object']):
                    yield event
            while True:
                if deadline is None:
                    event = await anext(stream)
                else:  # timeoutSeconds: end the stream normally (clients reconnect)
                    try:
                        event = await asyncio.wait_for(anext(stream), max(0.0, deadline - loop.time()))
                    except TimeoutError:
                        break
                if check(event['object']):
                    yield copy.deepcopy(event)
        finally:
            self._watchers[resource, request.namespace] -= 1
            with contextlib.suppress(Exception):
                await stream.aclose()
            await bus.unmark(mark)


def declare_resources(emulator: kmock.KubernetesScaffold, extra: Mapping[str, kmock.ResourceInfo] = ()) -> None:
    """Make the builtins (a K3s snapshot bundled with kmock) and the ModelEndpoint CRD discoverable."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)  # kmock uses importlib.resources.read_binary
        emulator.resources.load_bundled()
    emulator.resources[MODELENDPOINTS] = kmock.ResourceInfo(
        namespaced=True, kind='ModelEndpoint', singular='modelendpoint',
        verbs=ALL_VERBS, shortnames={'me'}, categories={'slotkeeper'}, subresources={'status'})
    for key, info in dict(extra).items():
        emulator.resources[key] = info


# ----------------------------------------------------------------------------------------------
# The official `kubernetes` client, pointed at KMock explicitly.
# ----------------------------------------------------------------------------------------------

def make_kube_config(url: str) -> kubernetes.client.Configuration:
    """A client configuration for the given server; KUBECONFIG & ~/.kube are never read."""
    config = kubernetes.client.Configuration(host=str(url).rstrip('/'))
    config.verify_ssl = False  # plain http anyway
    return config


def make_api_client(url_or_config: str | kubernetes.client.Configuration) -> kubernetes.client.ApiClient:
    """
    An ``ApiClient`` for KMock. It is SYNCHRONOUS (urllib3): call it from sync kopf handlers
    (kopf runs them in a thread) or via ``asyncio.to_thread``. Calling it directly on the event
    loop that also serves KMock deadlocks until urllib3's timeout. Close it when done.
    """
    config = url_or_config if isinstance(url_or_config, kubernetes.client.Configuration) else make_kube_config(url_or_config)
    return kubernetes.client.ApiClient(configuration=config)


# ----------------------------------------------------------------------------------------------
# Polling.
# ----------------------------------------------------------------------------------------------

async def eventually(
        predicate: Callable[[], Any | Awaitable[Any]],
        *,
        timeout: float = 5.0,
        interval: float = 0.02,
        message: str | None = None,
) -> Any:
    """
    Poll ``predicate`` (sync or async) until it returns a truthy value; return that value.

    AssertionError/LookupError (KeyError, IndexError) raised by the predicate mean "not yet";
    other exceptions propagate at once. Times out with an AssertionError (loop time, so it also
    works under looptime).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_value: Any = None
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
        except (AssertionError, LookupError) as e:
            last_error, last_value = e, None
        else:
            if value:
                return value
            last_error, last_value = None, value
        if loop.time() >= deadline:
            what = message or getattr(predicate, '__name__', repr(predicate))
            raise AssertionError(f"Not satisfied within {timeout}s: {what}; last value: {last_value!r}"
                                 + (f"; last error: {last_error!r}" if last_error else "")) from last_error
        await asyncio.sleep(interval)


# ----------------------------------------------------------------------------------------------
# Test-side API helpers (HTTP through KMock's own client session, plus direct store reads).
# ----------------------------------------------------------------------------------------------

class KubeAPIError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body!r}")
        self.status = status
        self.body = body


def url_for(resource: str | kmock.resource, namespace: str | None = None, name: str | None = None,
            subresource: str | None = None) -> str:
    res = _res(resource)
    url = f"/api/{res.version}" if not res.group else f"/apis/{res.group}/{res.version}"
    if namespace is not None:
        url += f"/namespaces/{namespace}"
    url += f"/{res.plural}"
    if name is not None:
        url += f"/{name}"
    if subresource is not None:
        url += f"/{subresource}"
    return url


@dataclasses.dataclass
class Kube:
    """Async helpers over the emulator; every write goes through the HTTP API (watch events!)."""
    kmock: ClusterEmulator
    namespace: str = 'default'

    # -- generic --

    async def request(self, method: str, url: str, body: Any = None, *, content_type: str | None = None) -> Any:
        headers = {'Content-Type': content_type} if content_type else {}
        kwargs: dict[str, Any] = {'json': body} if body is not None else {}
        async with self.kmock.request(method, url, headers=headers, **kwargs) as resp:
            try:
                data = await resp.json(content_type=None)
            except ValueError:
                data = await resp.text()
            if resp.status >= 400:
                raise KubeAPIError(resp.status, data)
            return data

    async def create(self, resource: str | kmock.resource, body: Mapping[str, Any], *, namespace: str | None = None) -> dict[str, Any]:
        ns = namespace or body.get('metadata', {}).get('namespace') or self.namespace
        return await self.request('POST', url_for(resource, ns), dict(body))

    async def get(self, resource: str | kmock.resource, name: str, *, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            return await self.request('GET', url_for(resource, namespace or self.namespace, name))
        except KubeAPIError as e:
            if e.status == 404:
                return None
            raise

    async def patch(self, resource: str | kmock.resource, name: str, patch: Any, *, namespace: str | None = None,
                    subresource: str | None = None) -> dict[str, Any]:
        content_type = JSON_PATCH if isinstance(patch, list) else MERGE_PATCH
        return await self.request('PATCH', url_for(resource, namespace or self.namespace, name, subresource),
                                  patch, content_type=content_type)

    async def delete(self, resource: str | kmock.resource, name: str, *, namespace: str | None = None) -> dict[str, Any]:
        return await self.request('DELETE', url_for(resource, namespace or self.namespace, name))

    def peek(self, resource: str | kmock.resource, name: str, *, namespace: str | None = None) -> dict[str, Any] | None:
        """The current stored state (a deep copy), straight from memory; None if absent/deleted."""
        key = (_res(resource), namespace or self.namespace, name)
        if key not in self.kmock.objects or self.kmock.objects[key].deleted:
            return None
        return copy.deepcopy(self.kmock.objects[key].raw)

    def objects(self, resource: str | kmock.resource, *, namespace: str | None = None,
                labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        res = _res(resource)
        ns = namespace or self.namespace
        result = []
        for (r, n, _), obj in self.kmock.objects.items():
            if r == res and n == ns and not obj.deleted:
                raw = obj.raw
                have = raw.get('metadata', {}).get('labels') or {}
                if all(have.get(k) == v for k, v in (labels or {}).items()):
                    result.append(copy.deepcopy(raw))
        return result

    def events_for(self, name: str, *, namespace: str | None = None) -> list[dict[str, Any]]:
        """Core v1 Events (as posted by kopf) about an object with this name."""
        return [e for e in self.objects(EVENTS, namespace=namespace)
                if e.get('involvedObject', {}).get('name') == name]

    # -- ModelEndpoints --

    async def create_endpoint(self, name: str, spec: Mapping[str, Any], *, namespace: str | None = None,
                              labels: Mapping[str, str] | None = None,
                              annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {'name': name}
        if labels:
            meta['labels'] = dict(labels)
        if annotations:
            meta['annotations'] = dict(annotations)
        body = {'apiVersion': 'slotkeeper.io/v1alpha1', 'kind': 'ModelEndpoint',
                'metadata': meta, 'spec': dict(spec)}
        return await self.create(MODELENDPOINTS, body, namespace=namespace)

    async def patch_endpoint(self, name: str, spec: Mapping[str, Any], *,
                             namespace: str | None = None) -> dict[str, Any]:
        """Merge-patch the spec (``None`` values delete keys; lists are replaced)."""
        return await self.patch(MODELENDPOINTS, name, {'spec': dict(spec)}, namespace=namespace)

    def endpoint(self, name: str, *, namespace: str | None = None) -> dict[str, Any] | None:
        return self.peek(MODELENDPOINTS, name, namespace=namespace)

    # -- the Deployment controller & kubelet, simulated --

    async def create_deployment(self, name: str, *, labels: Mapping[str, str] | None = None,
                                replicas: int = 1, namespace: str | None = None,
                                image: str = 'example/serving:test') -> dict[str, Any]:
        labels = dict(labels or {'app': name})
        body = {
            'apiVersion': 'apps/v1', 'kind': 'Deployment',
            'metadata': {'name': name, 'labels': labels},
            'spec': {
                'replicas': replicas,
                'selector': {'matchLabels': labels},
                'template': {'metadata': {'labels': labels},
                             'spec': {'containers': [{'name': 'server', 'image': image}]}},
            },
        }
        return await self.create(DEPLOYMENTS, body, namespace=namespace)

    async def set_deployment_status(
            self, name: str, *, namespace: str | None = None,
            replicas: int | None = None, ready: int | None = None, updated: int | None = None,
            available: int | None = None, observed_generation: int | None = None,
            conditions: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """
        Patch ``/status`` as the Deployment controller would. Defaults: everything equals
        ``spec.replicas`` (a finished rollout) and ``observedGeneration = metadata.generation``.
        Zero counters are written as 0 (the real controller omits them: treat absent as 0).
        """
        dep = self.peek(DEPLOYMENTS, name, namespace=namespace)
        if dep is None:
            raise LookupError(f"Deployment {name!r} does not exist")
        spec_replicas = dep.get('spec', {}).get('replicas', 1)
        replicas = spec_replicas if replicas is None else replicas
        ready = replicas if ready is None else ready
        updated = replicas if updated is None else updated
        available = ready if available is None else available
        status: dict[str, Any] = {
            'replicas': replicas, 'readyReplicas': ready, 'updatedReplicas': updated,
            'availableReplicas': available, 'unavailableReplicas': max(0, replicas - available) or None,
            'observedGeneration': (dep['metadata'].get('generation', 1)
                                   if observed_generation is None else observed_generation),
        }
        if conditions is not None:
            status['conditions'] = conditions
        return await self.patch(DEPLOYMENTS, name, {'status': status}, namespace=namespace, subresource='status')

    async def create_pod(
            self, name: str, *, labels: Mapping[str, str], namespace: str | None = None,
            waiting_reason: str | None = 'CrashLoopBackOff', container: str = 'server',
            restart_count: int = 3, phase: str = 'Running',
    ) -> dict[str, Any]:
        """Create a Pod, then set its status as a kubelet would (create drops the status)."""
        body = {'apiVersion': 'v1', 'kind': 'Pod', 'metadata': {'name': name, 'labels': dict(labels)},
                'spec': {'containers': [{'name': container, 'image': 'example/serving:test'}]}}
        await self.create(PODS, body, namespace=namespace)
        ready = waiting_reason is None
        state = ({'waiting': {'reason': waiting_reason, 'message': f'simulated {waiting_reason}'}}
                 if waiting_reason else {'running': {'startedAt': _now()}})
        status = {
            'phase': phase,
            'conditions': [{'type': 'Ready', 'status': 'True' if ready else 'False'}],
            'containerStatuses': [{'name': container, 'ready': ready, 'started': ready,
                                   'restartCount': restart_count, 'image': 'example/serving:test',
                                   'imageID': '', 'state': state}],
        }
        return await self.patch(PODS, name, {'status': status}, namespace=namespace, subresource='status')


# ----------------------------------------------------------------------------------------------
# Running the operator.
# ----------------------------------------------------------------------------------------------

_SERVER_URL: contextvars.ContextVar[str | None] = contextvars.ContextVar('kmock_server_url', default=None)
_OPERATOR_OWNER: contextvars.ContextVar[object | None] = contextvars.ContextVar('kmock_operator_owner', default=None)
_LOGIN_REGISTRIES: weakref.WeakSet[kopf.OperatorRegistry] = weakref.WeakSet()


async def _kmock_login(**_: Any) -> kopf.ConnectionInfo | None:
    """The login handler: connect to the KMock of the operator that runs this handler."""
    url = _SERVER_URL.get()
    if url is None:
        return None
    return kopf.ConnectionInfo(server=url, default_namespace='default', priority=100)


def ensure_login_handler(registry: kopf.OperatorRegistry) -> None:
    """Add the KMock login handler once per registry (it reads the URL from a contextvar)."""
    if registry not in _LOGIN_REGISTRIES:
        kopf.on.login(registry=registry, id='kmock_login')(_kmock_login)
        _LOGIN_REGISTRIES.add(registry)


def make_test_settings() -> kopf.OperatorSettings:
    """kopf settings for tests; everything else stays at kopf's defaults."""
    settings = kopf.OperatorSettings()
    # KMock cannot list /api/v1/namespaces (its URL parser takes "namespaces" for a namespace and
    # answers 500), so kopf must not list/watch namespaces or CRDs: serve the exact namespaces given.
    settings.scanning.disabled = True
    settings.peering.standalone = True  # no peering objects, no pausing
    settings.process.ultimate_exiting_timeout = None  # never SIGKILL the pytest process
    settings.networking.error_backoffs = (0.05, 0.1, 0.2, 0.5, 1)  # fast API retries (prod: 1..21s)
    settings.execution.default_backoff = 0.5  # retry of failed handlers (prod default: 60s)
    settings.queueing.error_delays = (0.1, 0.2, 0.5, 1, 2)  # throttling after framework errors (prod: 1..610s)
    return settings


class _NotOwned(Collection[asyncio.Task[Any]]):
    """For kopf.run_tasks(ignored=...): every task that the operator did not create is "ignored"."""

    def __init__(self, owned: weakref.WeakSet[asyncio.Task[Any]]) -> None:
        self._owned = owned

    def __contains__(self, task: object) -> bool:
        return task not in self._owned

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(())

    def __len__(self) -> int:
        return 0


@contextlib.contextmanager
def _tracking_tasks(owner: object, owned: weakref.WeakSet[asyncio.Task[Any]]) -> Iterator[None]:
    """Mark every task created from the operator's context (transitively) as operator-owned."""
    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        task = previous(loop, coro, **kwargs) if previous is not None else asyncio.Task(coro, loop=loop, **kwargs)
        if _OPERATOR_OWNER.get() is owner:
            owned.add(task)
        return task

    loop.set_task_factory(factory)
    try:
        yield
    finally:
        if loop.get_task_factory() is factory:
            loop.set_task_factory(previous)


@dataclasses.dataclass(eq=False)
class OperatorHandle:
    kmock: ClusterEmulator
    registry: kopf.OperatorRegistry
    settings: kopf.OperatorSettings
    memo: kopf.Memo
    namespaces: tuple[str, ...]
    clusterwide: bool
    task: asyncio.Task[None]
    stop_flag: asyncio.Event
    ready_flag: asyncio.Event
    insights: Any  # kopf's Insights: watched resources & namespaces
    indexers: Any  # kopf's OperatorIndexers
    owned_tasks: weakref.WeakSet[asyncio.Task[Any]]
    root_tasks: list[asyncio.Task[Any]]  # filled once kopf has spawned them
    memories: Any  # kopf's ResourceMemories: per-object state incl. the running daemons

    @property
    def indices(self) -> Mapping[str, kopf.Index[Any, Any]]:
        """The operator's in-memory indices, by index name (= handler id), e.g. ``indices['by_slot']``."""
        return self.indexers.indices

    def check(self) -> None:
        """Raise if the operator has exited (crashed or stopped) -- call it inside polls if useful."""
        if self.task.done():
            exc = None if self.task.cancelled() else self.task.exception()
            raise AssertionError(f"The operator has exited: {exc!r}") from exc

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Until startup handlers ran AND every watch-stream kopf wants is subscribed in KMock."""
        def ready() -> bool:
            self.check()
            if not (self.ready_flag.is_set() and self.insights.ready_resources.is_set()
                    and self.insights.ready_namespaces.is_set()):
                return False
            for res in self.insights.watched_resources:
                namespaces = [None] if not res.namespaced else list(self.insights.namespaces)
                for ns in namespaces:
                    if not self.kmock.watch_count(kmock.resource(res.group, res.version, res.plural), ns):
                        return False
            return True
        await eventually(ready, timeout=timeout, interval=0.01, message="operator readiness")

    async def stop(self, timeout: float = 10.0) -> None:
        """
        Graceful stop via the stop-flag (cleanup handlers run, daemons are stopped); cancel on timeout.

        A kopf race: an event processed during the shutdown can spawn a daemon/timer AFTER kopf's
        daemon killer has finished; kopf then waits 5 s (hard-coded) for it and cancels it. Here,
        such late daemons get their ``stopped`` flag set, exactly as the daemon killer does.
        """
        self.stop_flag.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.task.done() and loop.time() < deadline:
            roots_done = self.root_tasks and all(task.done() for task in self.root_tasks)
            if roots_done:
                for memory in list(self.memories.iter_all_daemon_memories()):
                    for daemon in list(memory.running_daemons.values()):
                        if not daemon.stopper.is_set():
                            logger.debug("Stopping a daemon spawned during the shutdown: %r", daemon.handler)
                            daemon.stopper.set(reason=_kopf_stoppers.DaemonStoppingReason.OPERATOR_EXITING)
            await asyncio.wait({self.task}, timeout=0.01)
        done, _ = await asyncio.wait({self.task}, timeout=max(0.0, deadline - loop.time()))
        if not done:
            logger.warning("The operator did not stop in %ss; cancelling it.", timeout)
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if not self.task.cancelled() and self.task.exception() is not None:
            raise self.task.exception()  # type: ignore[misc]


@contextlib.asynccontextmanager
async def running_operator(
        emulator: ClusterEmulator,
        registry: kopf.OperatorRegistry,
        *,
        namespaces: Iterable[str] = ('default',),
        clusterwide: bool = False,
        settings: kopf.OperatorSettings | None = None,
        memo: kopf.Memo | None = None,
        wait_ready: bool = True,
        stop_timeout: float = 10.0,
) -> AsyncIterator[OperatorHandle]:
    """
    Run ``kopf.spawn_tasks`` + ``kopf.run_tasks`` (what ``kopf.operator()`` does) in a task of the
    current loop, connected to ``emulator`` by a login handler; stop it gracefully on exit.
    """
    url = str(emulator.url).rstrip('/')
    settings = settings if settings is not None else make_test_settings()
    memo = memo if memo is not None else kopf.Memo()
    memo.setdefault('kube_url', url)
    memo.setdefault('kube_config', make_kube_config(url))
    namespaces = tuple(namespaces) if not clusterwide else ()
    ensure_login_handler(registry)

    stop_flag = asyncio.Event()
    ready_flag = asyncio.Event()
    insights = _kopf_references.Insights()
    indexers = _kopf_indexing.OperatorIndexers()
    memories = _kopf_inventory.ResourceMemories()
    owner = object()
    owned: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
    root_tasks: list[asyncio.Task[Any]] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        in_main_thread = threading.current_thread() is threading.main_thread()
        signals = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if in_main_thread else {}
        tasks = await kopf.spawn_tasks(
            registry=registry, settings=settings, memo=memo, insights=insights, indexers=indexers,
            memories=memories, standalone=True, clusterwide=clusterwide, namespaces=namespaces,
            stop_flag=stop_flag, ready_flag=ready_flag,
        )
        root_tasks.extend(tasks)
        # kopf grabs SIGINT/SIGTERM when in the main thread; give Ctrl+C back to pytest/asyncio.
        for sig, previous in signals.items():
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        # kopf.operator() would treat every task created after its start as its own "hung" task
        # at exit (wait 5s, then cancel): KMock's server connections, the test's own task. Not here.
        await kopf.run_tasks(tasks, ignored=_NotOwned(owned))

    with _tracking_tasks(owner, owned):
        url_token = _SERVER_URL.set(url)
        owner_token = _OPERATOR_OWNER.set(owner)
        try:
            task = asyncio.create_task(run(), name='kopf-operator')
        finally:
            _OPERATOR_OWNER.reset(owner_token)
            _SERVER_URL.reset(url_token)

        handle = OperatorHandle(
            kmock=emulator, registry=registry, settings=settings, memo=memo,
            namespaces=namespaces, clusterwide=clusterwide, task=task,
            stop_flag=stop_flag, ready_flag=ready_flag, insights=insights, indexers=indexers,
            owned_tasks=owned, root_tasks=root_tasks, memories=memories,
        )
        try:
            if wait_ready:
                await handle.wait_ready()
            yield handle
        finally:
            await handle.stop(timeout=stop_timeout)
