"""
Integration harness: the real kopf operator, in-process, against KMock over real HTTP.

Fixtures: ``kmock`` (a ClusterEmulator on 127.0.0.1), ``k8s`` (async helpers), ``operator``
(the running operator of ``operator_registry``), ``run_operator`` (a factory for more
control: other registry/settings/memo, clusterwide, stop & restart). Helpers & docs:
``kmock_cluster.py``. Objects must be created through the API (``k8s.*``); writes straight
into ``kmock.objects`` produce no watch events. Wait with ``eventually()``, never fixed sleeps.
Discoverable: kmock's bundled K3s builtins + the ModelEndpoint CRD (installed from ``crds/``: its
schema prunes, defaults and validates ModelEndpoints, as a real apiserver does -- an invalid spec
is a 422 now; ``@pytest.mark.kmock(validate_custom_resources=False)`` plays an apiserver with an
old CRD); other CRDs: POST them to the API (they become served resources) or add
``kmock.resources[...] = kmock.ResourceInfo(...)``, before the operator starts, else kopf logs
"Unresolved resources cannot be served" and never watches it. Namespaces ``default``,
``kube-system``, ``kube-public``, ``kube-node-lease`` exist; others must be created
(``k8s.create_namespace``) before objects go into them. The emulator is checked against a real
apiserver's recorded answers by ``tests/contract`` (which also runs against a real cluster).
For synchronous code or subprocesses: ``kmock_cluster.served_double()`` (own thread + kubeconfig).
User-Agents tell the clients apart (for ``kmock.fail(..., lambda req: ...)`` or assertions):
kopf ``kopf/1.45.2``, the operator's own requests ``slotkeeper/0.1.0`` (kube_api.py), the official client
``OpenAPI-Generator/...`` (tests' own clients), ``k8s.*`` ``kmock/0.8 ...``.

Facts (kopf 1.45.2, kmock 0.8). [V] = verified by a test in test_harness.py or an experiment;
[S] = read from the source, not exercised.

Plain KMock (``kmock.KubernetesEmulator``), see ``test_raw_kmock_semantics``:
* [V] Stores bodies as sent: no uid/creationTimestamp/resourceVersion/generation, no
  metadata.namespace unless sent, ``.status`` kept on create; lists say resourceVersion "...".
* [V] Ignores labelSelector (and fieldSelector [S]); every watch re-sends all existing objects as
  ADDED whatever resourceVersion it is given; there is no event history. [S] A race: events
  between the watch's snapshot and its subscription are lost.
* [V] kopf adds/removes finalizers with a JSON-patch that starts with
  ``test /metadata/resourceVersion``; KMock answers 500 (the path is missing), kopf retries per
  ``networking.error_backoffs`` and the object's handlers never run. => Plain KMock cannot host a
  kopf operator whose objects need kopf's finalizer ([S] any non-optional ``on.delete``, any
  ``daemon`` or ``timer``) as is; merge-patches (annotations, /status) do work there.
* [V] ``GET /api/v1/namespaces`` crashes KMock's URL parser (500); kopf lists namespaces when it
  serves ``namespaces=[...]`` with scanning on. The ClusterEmulator parses those URLs itself, so
  the harness keeps scanning on, as in production: namespaced, kopf lists & watches namespaces;
  cluster-wide, it lists & watches CRDs (``test_clusterwide_mode``).
* [V] Native reactions (``kmock['patch', SERVICES][:1] << 409``) answer AFTER the store was
  changed (the patch is stored and a watch event is sent), with an empty body. Use
  ``kmock.fail(...)`` for a fault that leaves the store alone. [V] A bare ``'v1/services'`` in
  ``kmock[...]`` is a text filter, not a resource: use ``kmock.resource(...)`` / the constants.

The harness's ClusterEmulator fixes those (list in its docstring; ``test_emulator_api_semantics``;
the apiserver contract: ``tests/contract``):
* [V] uid, creationTimestamp, resourceVersion (bumped on every write that changes something: a
  no-op keeps it and sends no event), generation (workloads & custom resources: 1, +1 on spec
  changes; status & metadata writes do not bump it), generateName; status subresource (create
  resets .status, main-resource writes keep it, /status writes only it); merge, strategic-merge
  (keyed lists), JSON-patch (failed ``test`` -> 422), server-side apply (managedFields, pruning of
  dropped fields, conflicts), PUT, stale resourceVersion -> 409; defaulting as the apiserver's
  (objects come back as a real apiserver returns them: Go's zero values and key order, omitted
  zero counters, canonical quantities); validation (422/400 in the apiserver's words); field &
  label selectors (unknown field selector -> 400); list resourceVersion + watch replay only
  after it; finalizers; ownerReferences GC (right after the answer; the real one is
  asynchronous: poll); namespaces. Not emulated: controllers (Deployments never get a status by
  themselves: ``k8s.set_deployment_status``; pods: ``k8s.create_pod``), admission webhooks.
  => ``metadata.generation`` IS set here (and in real clusters); with plain KMock it never is.
  ``status.observedGeneration`` is only what a test writes. Zero counters: Go's omitempty drops
  them, here as from the real controller (treat absent readyReplicas etc. as 0).

kopf against the harness:
* [V] Label filters of ``@kopf.index``/``@kopf.on.event`` (``labels={...}``) are client-side in
  kopf; kopf never sends a labelSelector for them (only ``settings.watching.label_selectors`` is
  sent server-side). They work with plain KMock too [S].
* [V] Watches: kopf lists ([S] its events have type None), then watches from the list's
  resourceVersion: each object is processed once; an object that existed before the operator
  started is handled once; a restarted operator does not re-run on.create for handled objects
  (kopf's last-handled-configuration annotation); objects changed while it was down are seen.
  on.event gets ADDED/MODIFIED/DELETED for later changes. [S] kopf reconnects a watch after
  ``watching.inactivity_timeout`` (70 s) of silence; here it resumes from the last seen
  resourceVersion (no duplicates) -- under looptime this happens every 70 fake seconds.
* [V] kopf's writes work: handler results in ``status.<handler id>`` (merge-patch of /status,
  the CRD is discovered with the status subresource), annotations (merge-patch), the finalizer
  ``kopf.zalando.org/KopfFinalizerMarker`` (JSON-patch), deletion -> on.delete -> finalizer
  removed -> object gone -> owned objects garbage-collected.
* [V] A 409 on a write of the handler's own code raises in the handler; ``kopf.TemporaryError``
  (or any error, after ``execution.default_backoff``: 0.5 s here, 60 s in prod) retries it.
  [V] A 409 on kopf's own /status write is not retried: kopf logs "Throttling for N seconds"
  (``queueing.error_delays``), the operator survives, but that handler result is LOST (the
  annotations were written first, so the handler counts as done). Do not rely on handler return
  values as the only status; write status idempotently from state.
* [V] Daemons: ``spec``/``status`` (views of the live ``body``) reflect new watch events inside
  the same running daemon invocation ([S] for ``body``/``meta``/``labels``). The per-object
  ``memo`` is a shallow copy of the operator memo (shared containers, own attributes).
* [V] Timers/daemons run in fake time with ``@pytest.mark.looptime`` (125 s in ~0.05 s).
* [V] kopf 1.45 posts k8s Events (core ``v1/events`` only [S]) for ``kopf.info/warn/event``;
  handler log lines are NOT posted by default (``posting.loggers`` is False).
* [V] The official ``kubernetes`` client is synchronous: called on the event loop that also
  serves KMock it blocks until urllib3 times out (8 s here); from sync kopf handlers (run in
  threads) or ``asyncio.to_thread`` it works. Build it with ``make_api_client(memo.kube_config)``
  (``Configuration(host=...)``, KUBECONFIG never read); the harness puts ``kube_url`` and
  ``kube_config`` into the operator's memo -- let the real operator take its client config
  from there when present.
* Stopping: [V] ``stop_flag.set()`` (``handle.stop()``) is graceful: daemons get ``stopped``,
  watches and sessions close, all operator tasks finish (~10 ms here). [V] Plain
  ``kopf.operator()`` waits 5 s at exit for every task created after it started (KMock's server
  connections, [S] the test's own task if it awaits the stop) and then cancels them; the harness
  runs ``kopf.spawn_tasks``+``kopf.run_tasks`` with only operator-created tasks as "hung" ones.
  [V] A kopf race: an event processed during the shutdown can (re)spawn a daemon/timer after the
  daemon killer has run; kopf waits 5 s for it, then cancels it (in prod: +5 s pod shutdown, and
  daemons must tolerate cancellation). ``handle.stop()`` sets such late daemons' ``stopped``.
  [S] Cancelling instead of the stop-flag arms a SIGKILL after
  ``process.ultimate_exiting_timeout`` (disabled here). [V] kopf grabs SIGINT/SIGTERM; the
  harness gives them back to pytest. An operator crash fails ``wait_ready``/teardown.
* [S] The login handler is added once to the registry (the default registry when
  ``slotkeeper.handlers`` uses it) and disables kopf's fallback logins (kubeconfig/in-cluster)
  for that registry for the rest of the session; the real operator should not define its own
  ``@kopf.on.login`` (or it runs in tests too).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import kmock as kmock_lib
import kopf
import pytest
import pytest_asyncio

from kmock_cluster import ClusterEmulator, Kube, OperatorHandle, declare_resources, make_test_settings, \
                          running_operator


@pytest_asyncio.fixture()
async def kmock(kmock_options: dict[str, Any]) -> AsyncIterator[ClusterEmulator]:
    """
    KMock's ``kmock`` fixture, overridden: a :class:`ClusterEmulator` on 127.0.0.1:<random port>
    with the builtins (apps/v1 deployments, v1 services/pods/events, events.k8s.io/v1 events,
    CRDs, ...) and ``slotkeeper.io/v1alpha1/modelendpoints`` (namespaced, ``status`` subresource)
    discoverable. ``@pytest.mark.kmock(strict=True, limit=...)`` options are honoured.
    """
    options = dict(kmock_options)
    options.pop('cls', None)
    server_fields = {field.name.strip('_') for field in attrs.fields(kmock_lib.Server)}
    server_kwargs = {key: val for key, val in options.items() if key in server_fields}
    handler_kwargs = {key: val for key, val in options.items() if key not in server_fields}
    async with ClusterEmulator(**handler_kwargs) as emulator, kmock_lib.Server(emulator, **server_kwargs):
        declare_resources(emulator)
        yield emulator
        # API errors (404/409/422...) are recorded by KMock too; only emulator crashes (500s) fail.
        crashes = [e for e in emulator.errors if not isinstance(e, kmock_lib.KubernetesError)]
        assert not crashes, f"The emulator crashed while serving requests: {crashes!r}"


@pytest.fixture()
def k8s(kmock: ClusterEmulator) -> Kube:
    """Async API helpers (create/patch/get/delete, endpoints, deployment status, pods) + store reads."""
    return Kube(kmock)


@pytest.fixture()
def operator_module() -> str:
    """The module with the operator's handlers. Override to point elsewhere."""
    return 'slotkeeper.handlers'


@pytest.fixture()
def operator_registry(operator_module: str) -> kopf.OperatorRegistry:
    """
    The registry to run: the module's ``registry`` attribute if it is an ``OperatorRegistry``,
    else kopf's default registry (filled by ``@kopf.on...`` decorators at import time).
    Skips the test while the module does not exist yet. Override it to run another registry.
    """
    if importlib.util.find_spec(operator_module) is None:
        pytest.skip(f"{operator_module} does not exist yet")
    module = importlib.import_module(operator_module)  # real import errors fail the test
    registry = getattr(module, 'registry', None)
    return registry if isinstance(registry, kopf.OperatorRegistry) else kopf.get_default_registry()


@pytest.fixture()
def operator_settings() -> kopf.OperatorSettings:
    """kopf settings for the ``operator`` fixture; override or mutate in a dependent fixture."""
    return make_test_settings()


@pytest.fixture()
def operator_memo() -> kopf.Memo:
    """The operator's global memo (per-object memos are shallow copies of it)."""
    return kopf.Memo()


@pytest_asyncio.fixture()
async def run_operator(kmock: ClusterEmulator) -> AsyncIterator[Callable[..., Awaitable[OperatorHandle]]]:
    """
    A factory: ``handle = await run_operator(registry, namespaces=('default',), clusterwide=False,
    settings=None, memo=None, wait_ready=True)``. Every operator started is stopped at teardown;
    ``await handle.stop()`` stops one earlier (e.g. to restart it).
    """
    async with contextlib.AsyncExitStack() as stack:
        async def start(registry: kopf.OperatorRegistry, **kwargs: Any) -> OperatorHandle:
            return await stack.enter_async_context(running_operator(kmock, registry, **kwargs))
        yield start


@pytest_asyncio.fixture()
async def operator(
        run_operator: Callable[..., Awaitable[OperatorHandle]],
        operator_registry: kopf.OperatorRegistry,
        operator_settings: kopf.OperatorSettings,
        operator_memo: kopf.Memo,
) -> OperatorHandle:
    """The operator, running and watching everything it wants (namespace ``default``)."""
    return await run_operator(operator_registry, settings=operator_settings, memo=operator_memo)
