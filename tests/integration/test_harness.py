"""
Proof that the harness runs the real kopf operator against KMock over real HTTP.

A tiny demo registry uses the kopf features the real operator will use: a (sync) create
handler writing through the official ``kubernetes`` client, a delete handler (=> finalizers),
a daemon writing through aiohttp and reading the live ``spec``, a timer, label-filtered
indices on deployments & pods, and a label-filtered ``on.event`` handler on deployments.
The ``test_raw_kmock_*`` tests pin down what plain KMock does (no operator involved).
"""
from __future__ import annotations

import asyncio
import json
import signal

import aiohttp
import kmock as kmock_lib
import kopf
import kubernetes.client
import pytest

from kmock_cluster import DEPLOYMENTS, MERGE_PATCH, MODELENDPOINTS, NAMESPACES, PODS, SERVICES, ClusterEmulator, Kube, \
                          KubeAPIError, OperatorHandle, declare_resources, eventually, make_api_client, url_for

GROUP, VERSION, PLURAL = 'slotkeeper.io', 'v1alpha1', 'modelendpoints'
ENDPOINT_LABEL = 'slotkeeper.io/endpoint'
LAST_HANDLED = 'kopf.zalando.org/last-handled-configuration'
MODEL = {'name': 'llama', 'uri': 'file:///models/llama/model.joblib'}  # valid per the CRD (the double enforces it)


def spec(replicas: int | None = None) -> dict:
    return {'model': dict(MODEL)} | ({'serving': {'replicas': replicas}} if replicas is not None else {})


def handled_replicas(endpoint: dict | None) -> int | None:
    """spec.serving.replicas as kopf last handled it (its diff-base annotation): proves an event was processed."""
    raw = ((endpoint or {}).get('metadata', {}).get('annotations') or {}).get(LAST_HANDLED)
    return (json.loads(raw).get('spec', {}).get('serving') or {}).get('replicas') if raw else None

registry = kopf.OperatorRegistry()


@kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
def create_service(name, namespace, body, memo, retry, **_):
    # A SYNC handler: kopf runs it in a worker thread, so the blocking official client is fine here
    # (in an `async def` handler it would block the very loop that serves KMock: a deadlock).
    memo.calls.append(('create', name, retry))
    service = {
        'apiVersion': 'v1', 'kind': 'Service',
        'metadata': {'name': name, 'labels': {ENDPOINT_LABEL: name}},
        'spec': {'selector': {ENDPOINT_LABEL: name}, 'ports': [{'port': 80, 'targetPort': 8080}]},
    }
    kopf.adopt(service, owner=body)  # ownerReferences => emulated garbage collection on deletion
    with make_api_client(memo.kube_config) as api_client:
        try:
            kubernetes.client.CoreV1Api(api_client).create_namespaced_service(namespace, service)
        except kubernetes.client.ApiException as e:
            if e.status == 409:
                raise kopf.TemporaryError(f"Service write conflicted: {e.reason}", delay=0.1)
            raise
    kopf.info(body, reason='ServiceCreated', message=f"Service {name} created")  # a k8s Event
    return {'service': name}


@kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
async def delete_endpoint(name, memo, **_):
    memo.calls.append(('delete', name, None))


@kopf.daemon(GROUP, VERSION, PLURAL, registry=registry, cancellation_timeout=1.0)
async def endpoint_daemon(name, namespace, spec, status, stopped, memo, **_):
    # `spec`/`status` are live views: they change as new watch events arrive (same daemon run).
    seen = memo.daemon_seen.setdefault(name, [])
    memo.daemon_starts[name] = memo.daemon_starts.get(name, 0) + 1
    async with aiohttp.ClientSession(memo.kube_url) as session:
        while not stopped:
            replicas = (spec.get('serving') or {}).get('replicas')
            if not seen or seen[-1] != replicas:
                seen.append(replicas)
                url = url_for(MODELENDPOINTS, namespace, name, 'status')
                patch = {'status': {'observedReplicas': replicas}}
                async with session.patch(url, json=patch, headers={'Content-Type': MERGE_PATCH}) as rsp:
                    rsp.raise_for_status()
            memo.daemon_status_seen[name] = status.get('observedReplicas')  # our own write, seen back
            memo.daemon_ticks[name] = memo.daemon_ticks.get(name, 0) + 1
            await stopped.wait(memo.daemon_interval)


@kopf.timer(GROUP, VERSION, PLURAL, registry=registry, interval=60, idle=None)
async def slow_timer(name, memo, **_):
    memo.timer_ticks[name] = memo.timer_ticks.get(name, 0) + 1


@kopf.index('apps', 'v1', 'deployments', registry=registry, labels={ENDPOINT_LABEL: kopf.PRESENT})
def deployments_by_endpoint(name, labels, status, **_):
    return {labels[ENDPOINT_LABEL]: {'name': name, 'ready': status.get('readyReplicas', 0)}}


@kopf.index('v1', 'pods', registry=registry, labels={ENDPOINT_LABEL: kopf.PRESENT})
def crashing_pods_by_endpoint(name, labels, status, **_):
    waiting = [cs.get('state', {}).get('waiting', {}).get('reason') for cs in status.get('containerStatuses', [])]
    return {labels[ENDPOINT_LABEL]: name} if 'CrashLoopBackOff' in waiting else None


@kopf.on.event('apps', 'v1', 'deployments', registry=registry, labels={ENDPOINT_LABEL: kopf.PRESENT})
def deployment_event(type, name, status, memo, **_):
    memo.deployment_events.append((type, name, status.get('readyReplicas')))


def demo_memo() -> kopf.Memo:
    return kopf.Memo(calls=[], deployment_events=[], timer_ticks={}, daemon_interval=0.05,
                     daemon_seen={}, daemon_starts={}, daemon_status_seen={}, daemon_ticks={})


@pytest.fixture()
def operator_registry() -> kopf.OperatorRegistry:
    return registry


@pytest.fixture()
def operator_memo() -> kopf.Memo:
    return demo_memo()


# ---------------------------------------------------------------------------------------------


async def test_create_handler_and_kopf_state(operator: OperatorHandle, k8s: Kube) -> None:
    await k8s.create_endpoint('me1', spec(replicas=1))

    svc = await eventually(lambda: k8s.peek(SERVICES, 'me1'))
    assert svc['metadata']['labels'] == {ENDPOINT_LABEL: 'me1'}
    assert svc['metadata']['ownerReferences'][0]['uid'] == k8s.endpoint('me1')['metadata']['uid']

    # kopf's own writes: the handler result (status subresource), the finalizer (JSON-patch with
    # a resourceVersion test), the last-handled-configuration annotation (merge-patch).
    me = await eventually(lambda: (me := k8s.endpoint('me1')) and me.get('status', {}).get('create_service') and me)
    assert me['status']['create_service'] == {'service': 'me1'}
    assert me['metadata']['finalizers'] == ['kopf.zalando.org/KopfFinalizerMarker']
    assert 'kopf.zalando.org/last-handled-configuration' in me['metadata']['annotations']
    assert me['metadata']['generation'] == 1  # status/metadata writes do not bump it
    assert operator.memo.calls == [('create', 'me1', 0)]
    event = (await eventually(lambda: k8s.events_for('me1')))[0]  # posted in the background
    assert event['reason'] == 'ServiceCreated' and event['metadata']['name'].startswith('kopf-event-')

    await k8s.patch_endpoint('me1', {'serving': {'replicas': 3}})
    assert k8s.endpoint('me1')['metadata']['generation'] == 2  # spec writes do
    # Barrier: kopf stores the diff-base after handling the update (no on.update handler here);
    # once it did, the update was processed without re-running the create handler.
    await eventually(lambda: handled_replicas(k8s.endpoint('me1')) == 3)
    assert operator.memo.calls == [('create', 'me1', 0)]  # no on.update handler, no re-creation


async def test_daemon_sees_live_spec(operator: OperatorHandle, k8s: Kube) -> None:
    await k8s.create_endpoint('me1', spec(replicas=1))
    await eventually(lambda: k8s.endpoint('me1').get('status', {}).get('observedReplicas') == 1)
    await k8s.patch_endpoint('me1', {'serving': {'replicas': 2}})
    await eventually(lambda: k8s.endpoint('me1').get('status', {}).get('observedReplicas') == 2)
    await eventually(lambda: operator.memo.daemon_status_seen['me1'] == 2)
    assert operator.memo.daemon_seen['me1'] == [1, 2]
    assert operator.memo.daemon_starts['me1'] == 1  # the same daemon invocation saw both values


async def test_label_filtered_index_and_event(operator: OperatorHandle, k8s: Kube, kmock: ClusterEmulator) -> None:
    await k8s.create_deployment('me1-blue', labels={ENDPOINT_LABEL: 'me1', 'slot': 'blue'}, replicas=2)
    await k8s.create_deployment('unrelated', labels={'app': 'other'})
    await k8s.set_deployment_status('unrelated')
    dep = await k8s.set_deployment_status('me1-blue', ready=1)
    assert dep['status'] == {'replicas': 2, 'readyReplicas': 1, 'updatedReplicas': 2,
                             'availableReplicas': 1, 'unavailableReplicas': 1, 'observedGeneration': 1}

    index = operator.indices['deployments_by_endpoint']
    await eventually(lambda: list(index.get('me1', [])) == [{'name': 'me1-blue', 'ready': 1}])
    await k8s.set_deployment_status('me1-blue')  # rollout finished: 2/2
    await eventually(lambda: list(index['me1']) == [{'name': 'me1-blue', 'ready': 2}])
    assert set(index) == {'me1'}  # the unlabelled deployment is filtered out client-side by kopf
    assert not [r for r in kmock if 'labelSelector' in r.params]  # kopf never sent a labelSelector

    await eventually(lambda: ('MODIFIED', 'me1-blue', 2) in operator.memo.deployment_events)
    assert {name for _, name, _ in operator.memo.deployment_events} == {'me1-blue'}
    assert operator.memo.deployment_events[0] == ('ADDED', 'me1-blue', None)


async def test_crashlooping_pod(operator: OperatorHandle, k8s: Kube) -> None:
    pod = await k8s.create_pod('me1-blue-abc', labels={ENDPOINT_LABEL: 'me1'}, waiting_reason='CrashLoopBackOff')
    assert pod['status']['containerStatuses'][0]['state']['waiting']['reason'] == 'CrashLoopBackOff'
    await k8s.create_pod('me1-blue-ok', labels={ENDPOINT_LABEL: 'me1'}, waiting_reason=None)
    index = operator.indices['crashing_pods_by_endpoint']
    await eventually(lambda: list(index.get('me1', [])) == ['me1-blue-abc'])
    await k8s.delete(PODS, 'me1-blue-abc')
    await eventually(lambda: 'me1' not in index)


async def test_deletion_finalizer_and_garbage_collection(operator: OperatorHandle, k8s: Kube) -> None:
    await k8s.create_endpoint('me1', spec())
    await eventually(lambda: k8s.peek(SERVICES, 'me1') and k8s.endpoint('me1')['metadata'].get('finalizers'))
    await k8s.delete(MODELENDPOINTS, 'me1')  # blocked by the finalizer: deletionTimestamp only
    await eventually(lambda: k8s.endpoint('me1') is None)  # kopf ran on.delete, removed the finalizer
    assert ('delete', 'me1', None) in operator.memo.calls
    assert k8s.peek(SERVICES, 'me1') is None  # the owned Service was garbage-collected


async def test_injected_409_is_absorbed(operator: OperatorHandle, k8s: Kube, kmock: ClusterEmulator) -> None:
    fault = kmock.fail('create', SERVICES, status=409, times=1)
    await k8s.create_endpoint('me1', spec())
    await eventually(lambda: k8s.endpoint('me1').get('status', {}).get('create_service'))
    assert len(fault.hits) == 1 and fault.hits[0].data['metadata']['name'] == 'me1'
    assert [retry for kind, _, retry in operator.memo.calls if kind == 'create'] == [0, 1]
    assert len(kmock['post', SERVICES]) == 2  # both attempts reached the server; only the 2nd stored
    assert k8s.peek(SERVICES, 'me1')['metadata']['resourceVersion']


async def test_409_on_kopfs_own_status_write(operator: OperatorHandle, k8s: Kube, kmock: ClusterEmulator) -> None:
    # kopf does not retry 4xx (except 403/429) at the API level. After a failed write of its own,
    # it logs "Throttling for N seconds due to an unexpected error" (settings.queueing.error_delays)
    # and carries on. Here the annotations (merge-patch of the main resource) were already written,
    # so the handler is considered done and the result meant for the status is LOST.
    by_kopf = lambda request: request.headers.get('User-Agent', '').startswith('kopf/')
    fault = kmock.fail('patch', MODELENDPOINTS, kmock.subresource('status'), by_kopf, status=409, times=1)
    await k8s.create_endpoint('me1', spec())
    await eventually(lambda: fault.hits)
    await eventually(lambda: operator.memo.calls)
    # Barrier instead of a sleep: a later change, handled by the same per-object worker after its
    # throttling. Once kopf has stored it as handled, a retry of the lost write would have come first.
    await k8s.patch_endpoint('me1', {'serving': {'replicas': 4}})
    await eventually(lambda: handled_replicas(k8s.endpoint('me1')) == 4)
    assert 'create_service' not in k8s.endpoint('me1').get('status', {})
    assert operator.memo.calls == [('create', 'me1', 0)]  # not re-run
    assert 'kopf.zalando.org/last-handled-configuration' in k8s.endpoint('me1')['metadata']['annotations']
    operator.check()  # the operator is alive


async def test_native_reaction_answers_after_the_store_change(kmock: ClusterEmulator, k8s: Kube) -> None:
    await k8s.create(SERVICES, {'metadata': {'name': 's1'}, 'spec': {'ports': [{'port': 80}]}})
    kmock['patch', SERVICES][:1] << 409  # one-shot native reaction (no Status body!)
    async with kmock.patch(url_for(SERVICES, 'default', 's1'), json={'spec': {'type': 'NodePort'}},
                           headers={'Content-Type': MERGE_PATCH}) as rsp:
        assert rsp.status == 409
    assert k8s.peek(SERVICES, 's1')['spec']['type'] == 'NodePort'  # ...but the patch was stored!

    fault = kmock.fail('patch', SERVICES, status=409)  # the harness's fault: store untouched
    with pytest.raises(KubeAPIError) as err:
        await k8s.patch(SERVICES, 's1', {'spec': {'type': 'LoadBalancer'}})
    assert err.value.status == 409 and err.value.body['reason'] == 'Conflict'
    assert k8s.peek(SERVICES, 's1')['spec']['type'] == 'NodePort'
    assert fault.hits and not fault.active


async def test_restart_and_clean_shutdown(run_operator, k8s: Kube, kmock: ClusterEmulator) -> None:
    memo = demo_memo()
    sigint_handler = signal.getsignal(signal.SIGINT)
    first = await run_operator(registry, memo=memo)
    assert signal.getsignal(signal.SIGINT) is sigint_handler  # kopf's grab is undone: Ctrl+C works
    await k8s.create_endpoint('me1', spec())
    await eventually(lambda: k8s.endpoint('me1').get('status', {}).get('create_service'))

    await first.stop()  # graceful: stop-flag => daemons stopped, watches closed, sessions closed
    assert first.task.done() and not first.task.cancelled() and first.task.exception() is None
    assert not [task for task in first.owned_tasks if not task.done()]
    assert kmock.watch_count(MODELENDPOINTS, 'default') == 0

    await k8s.patch_endpoint('me1', {'serving': {'replicas': 5}})  # changed while the operator is down
    second = await run_operator(registry, memo=memo)
    await eventually(lambda: memo.daemon_seen['me1'][-1] == 5)  # the new daemon sees the new spec
    assert [c for c in memo.calls if c[0] == 'create'] == [('create', 'me1', 0)]  # no re-creation
    await second.stop()


async def test_object_created_before_the_operator_is_handled_once(run_operator, k8s: Kube) -> None:
    await k8s.create_endpoint('me1', spec())  # listed by kopf at startup, not watched
    handle = await run_operator(registry, memo=demo_memo())
    await eventually(lambda: k8s.endpoint('me1').get('status', {}).get('create_service'))
    await k8s.patch_endpoint('me1', {'serving': {'replicas': 2}})  # more events for the same object
    await eventually(lambda: handle.memo.daemon_seen['me1'][-1] == 2)
    assert handle.memo.calls == [('create', 'me1', 0)]


async def test_namespaced_mode_scans_namespaces(operator: OperatorHandle, kmock: ClusterEmulator) -> None:
    # Scanning is on, as in production: serving namespaces=['default'], kopf lists & watches them.
    assert kmock['list', NAMESPACES]
    await eventually(lambda: kmock.watch_count(NAMESPACES))


async def test_clusterwide_mode(run_operator, k8s: Kube, kmock: ClusterEmulator) -> None:
    handle = await run_operator(registry, clusterwide=True, memo=demo_memo())
    # Cluster-wide with scanning on (as `slotkeeper run` without -n): kopf lists & watches the CRDs.
    assert kmock['list', kmock.resource('apiextensions.k8s.io/v1/customresourcedefinitions')]
    await eventually(lambda: kmock.watch_count('apiextensions.k8s.io/v1/customresourcedefinitions'))
    await k8s.create_namespace('team-a')  # objects need an existing namespace, as on a real cluster
    await k8s.create_endpoint('me2', spec(), namespace='team-a')
    await eventually(lambda: k8s.peek(SERVICES, 'me2', namespace='team-a'))
    assert handle.memo.calls == [('create', 'me2', 0)]


async def test_official_client(kmock: ClusterEmulator, k8s: Kube) -> None:
    await k8s.create_deployment('d1', labels={'app': 'a', ENDPOINT_LABEL: 'me1'})
    await k8s.create_deployment('d2', labels={'app': 'b'})

    def list_names(selector: str) -> list[str]:
        with make_api_client(str(kmock.url)) as api_client:
            apps = kubernetes.client.AppsV1Api(api_client)
            return sorted(d.metadata.name for d in apps.list_namespaced_deployment('default', label_selector=selector).items)

    assert await asyncio.to_thread(list_names, ENDPOINT_LABEL) == ['d1']
    assert await asyncio.to_thread(list_names, 'app in (a,b)') == ['d1', 'd2']
    assert await asyncio.to_thread(list_names, 'app!=a') == ['d2']


def deployment_body(name: str, replicas: int = 1, **extra) -> dict:
    labels = {'app': name}
    return {'metadata': {'name': name, 'labels': labels},
            'spec': {'replicas': replicas, 'selector': {'matchLabels': labels},
                     'template': {'metadata': {'labels': labels},
                                  'spec': {'containers': [{'name': 'c', 'image': 'example/c:1'}]}}}, **extra}


async def test_emulator_api_semantics(kmock: ClusterEmulator, k8s: Kube) -> None:
    dep = await k8s.create(DEPLOYMENTS, deployment_body('d1', status={'replicas': 9}))
    assert dep['status'] == {} and dep['metadata']['generation'] == 1  # create resets the status
    assert dep['spec']['template']['spec']['containers'][0]['imagePullPolicy'] == 'IfNotPresent'  # defaulted
    rv = dep['metadata']['resourceVersion']
    dep = await k8s.patch(DEPLOYMENTS, 'd1', {'spec': {'replicas': 2}, 'status': {'replicas': 9}})
    assert dep['status'] == {} and dep['metadata']['generation'] == 2  # main resource: status ignored
    again = await k8s.patch(DEPLOYMENTS, 'd1', {'spec': {'replicas': 2}})  # a no-op: same resourceVersion
    assert again['metadata']['resourceVersion'] == dep['metadata']['resourceVersion']
    dep = await k8s.set_deployment_status('d1')
    assert dep['status']['observedGeneration'] == 2 and dep['metadata']['generation'] == 2
    with pytest.raises(KubeAPIError) as err:  # optimistic concurrency with a stale resourceVersion
        await k8s.patch(DEPLOYMENTS, 'd1', {'metadata': {'resourceVersion': rv}, 'spec': {'replicas': 3}})
    assert err.value.status == 409 and err.value.body['reason'] == 'Conflict'
    with pytest.raises(KubeAPIError) as err:  # a JSON-patch whose `test` op fails
        await k8s.patch(DEPLOYMENTS, 'd1', [{'op': 'test', 'path': '/metadata/resourceVersion', 'value': rv}])
    assert err.value.status == 422
    with pytest.raises(KubeAPIError) as err:  # validation, as the apiserver words it
        await k8s.patch(DEPLOYMENTS, 'd1', {'spec': {'replicas': -1}})
    assert err.value.status == 422 and err.value.body['details']['causes'][0]['field'] == 'spec.replicas'
    current = k8s.peek(DEPLOYMENTS, 'd1')
    body = deployment_body('d1', replicas=4)
    body['metadata'] = current['metadata']
    replaced = await k8s.request('PUT', url_for(DEPLOYMENTS, 'default', 'd1'), body)
    assert replaced['spec']['replicas'] == 4 and replaced['status'] == current['status']
    assert replaced['metadata']['uid'] == current['metadata']['uid']

    # Server-side apply: creates, owns, and removes what the manager stops applying.
    applied = await k8s.apply(DEPLOYMENTS, dict(deployment_body('d3'), apiVersion='apps/v1', kind='Deployment',
                                                metadata={'name': 'd3', 'labels': {'app': 'd3', 'extra': 'x'}}),
                              manager='test')
    assert applied['metadata']['labels'] == {'app': 'd3', 'extra': 'x'}
    assert [e['manager'] for e in applied['metadata']['managedFields']] == ['test']
    applied = await k8s.apply(DEPLOYMENTS, dict(deployment_body('d3'), apiVersion='apps/v1', kind='Deployment'),
                              manager='test')
    assert applied['metadata']['labels'] == {'app': 'd3'}

    listing = await k8s.request('GET', url_for(DEPLOYMENTS, 'default') + '?fieldSelector=metadata.name%3Dd1')
    assert [i['metadata']['name'] for i in listing['items']] == ['d1']
    assert listing['metadata']['resourceVersion'] == str(kmock.resource_version)

    # A watch from the listed resourceVersion gets only newer events; timeoutSeconds ends it.
    await k8s.create(DEPLOYMENTS, deployment_body('d2'))
    url = url_for(DEPLOYMENTS, 'default') + f"?watch=true&resourceVersion={listing['metadata']['resourceVersion']}&timeoutSeconds=1"
    async with kmock.get(url) as rsp:
        events = [line for line in (await rsp.read()).splitlines() if line]
    assert len(events) == 1 and b'"ADDED"' in events[0] and b'"d2"' in events[0]


async def test_namespaces_are_served(kmock: ClusterEmulator, k8s: Kube) -> None:
    # Plain KMock answers 500 here (its URL parser takes "namespaces" for a namespace).
    listing = await k8s.request('GET', '/api/v1/namespaces')
    assert {'default', 'kube-system'} <= {ns['metadata']['name'] for ns in listing['items']}
    with pytest.raises(KubeAPIError) as err:  # objects need their namespace, as on a real cluster
        await k8s.create(SERVICES, {'metadata': {'name': 's'}, 'spec': {'ports': [{'port': 80}]}}, namespace='nope')
    assert err.value.status == 404 and err.value.body['message'] == 'namespaces "nope" not found'
    created = await k8s.create_namespace('team-a')
    assert created['status'] == {'phase': 'Active'}
    await k8s.create(SERVICES, {'metadata': {'name': 's'}, 'spec': {'ports': [{'port': 80}]}}, namespace='team-a')
    deleted = await k8s.delete(kmock.resource('v1/namespaces'), 'team-a')
    assert deleted['status'] == {'phase': 'Terminating'}
    assert k8s.peek(SERVICES, 's', namespace='team-a') is None  # its content went with it
    assert k8s.peek(kmock.resource('v1/namespaces'), 'team-a') is None


@pytest.mark.looptime
async def test_timer_and_daemon_under_looptime(operator: OperatorHandle, k8s: Kube, looptime) -> None:
    operator.memo.daemon_interval = 10  # read by newly started daemons (per-object memo copies)
    start = float(looptime)
    await k8s.create_endpoint('me1', spec())
    await asyncio.sleep(125)  # fake time: ~instant
    assert 2 <= operator.memo.timer_ticks['me1'] <= 3  # interval=60s
    assert 11 <= operator.memo.daemon_ticks['me1'] <= 14  # every 10s
    assert float(looptime) - start >= 125


# --- plain KMock (no harness emulation): the facts documented in conftest.py ----------------------

@pytest.fixture()
async def raw_kmock():
    async with kmock_lib.KubernetesEmulator() as emulator, kmock_lib.Server(emulator):
        declare_resources(emulator)
        yield emulator


async def test_raw_kmock_semantics(raw_kmock: kmock_lib.KubernetesEmulator) -> None:
    base = url_for(DEPLOYMENTS, 'default')
    for name, labels in [('d1', {'app': 'a'}), ('d2', {'app': 'b'})]:
        body = {'metadata': {'name': name, 'labels': labels}, 'spec': {'replicas': 1}, 'status': {'x': 1}}
        async with raw_kmock.post(base, json=body) as rsp:
            assert rsp.status == 200
    stored = dict(raw_kmock.objects[DEPLOYMENTS, 'default', 'd1'].raw)
    assert set(stored['metadata']) == {'name', 'labels'}  # no uid/resourceVersion/generation/namespace
    assert stored['status'] == {'x': 1}  # status kept on create

    async with raw_kmock.get(base, params={'labelSelector': 'app=a'}) as rsp:
        listing = await rsp.json()
    assert [i['metadata']['name'] for i in listing['items']] == ['d1', 'd2']  # selector ignored
    assert listing['metadata']['resourceVersion'] == '...'

    # kopf's finalizer/JSON-patch write with a resourceVersion test op fails with 500:
    ops = [{'op': 'test', 'path': '/metadata/resourceVersion', 'value': None},
           {'op': 'add', 'path': '/metadata/finalizers', 'value': ['f']}]
    async with raw_kmock.patch(url_for(DEPLOYMENTS, 'default', 'd1'), json=ops,
                               headers={'Content-Type': 'application/json-patch+json'}) as rsp:
        assert rsp.status == 500

    # A watch (with any resourceVersion) replays every existing object as ADDED:
    async with raw_kmock.get(base, params={'watch': 'true', 'resourceVersion': '...'}) as rsp:
        lines = [await asyncio.wait_for(rsp.content.readline(), 1) for _ in range(2)]
    assert [line.startswith(b'{"type": "ADDED"') for line in lines] == [True, True]
