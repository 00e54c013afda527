"""
The API behaviours slotkeeper depends on, one readable test each, on the double or a real cluster
(``SLOTKEEPER_CONTRACT_CONTEXT``; see conftest.py). Every test works in its own fresh namespace.
Absences are proven by barriers (a later event arriving first), never by waiting.
"""
from __future__ import annotations

from typing import Any

from .backends import Backend

MERGE = 'application/merge-patch+json'
STRATEGIC = 'application/strategic-merge-patch+json'
APPLY = 'application/apply-patch+yaml'
QUANTITY_ERROR = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"


def services(namespace: str, name: str = '') -> str:
    return f'/api/v1/namespaces/{namespace}/services' + (f'/{name}' if name else '')


def configmaps(namespace: str, name: str = '') -> str:
    return f'/api/v1/namespaces/{namespace}/configmaps' + (f'/{name}' if name else '')


def deployments(namespace: str, name: str = '') -> str:
    return f'/apis/apps/v1/namespaces/{namespace}/deployments' + (f'/{name}' if name else '')


def endpoints(namespace: str, name: str = '') -> str:
    return f'/apis/slotkeeper.io/v1alpha1/namespaces/{namespace}/modelendpoints' + (f'/{name}' if name else '')


def service(name: str, selector: dict[str, str]) -> dict[str, Any]:
    return {'apiVersion': 'v1', 'kind': 'Service', 'metadata': {'name': name},
            'spec': {'selector': selector, 'ports': [{'name': 'http', 'port': 80, 'targetPort': 'http'}]}}


def deployment(name: str, *, labels: dict[str, str] | None = None, env: list[dict[str, str]] | None = None,
               replicas: int = 1, service_account: str | None = 'default') -> dict[str, Any]:
    pod: dict[str, Any] = {'containers': [{'name': 'model', 'image': 'example/model:1', **({'env': env} if env else {})}]}
    if service_account:
        pod['serviceAccountName'] = service_account
    return {'apiVersion': 'apps/v1', 'kind': 'Deployment',
            'metadata': {'name': name, 'labels': {'app': name, **(labels or {})}},
            'spec': {'replicas': replicas, 'selector': {'matchLabels': {'app': name}},
                     'template': {'metadata': {'labels': {'app': name}}, 'spec': pod}}}


def apply(backend: Backend, path: str, body: dict[str, Any], manager: str = 'slotkeeper', force: bool = True):
    params = {'fieldManager': manager} | ({'force': 'true'} if force else {})
    return backend.request('PATCH', path, body, APPLY, params=params)


def test_merge_patch_keeps_the_keys_it_does_not_name_and_null_deletes_one(backend: Backend, namespace: str) -> None:
    backend.request('POST', services(namespace), service('credit', {'endpoint': 'credit', 'slot': 'blue'})).ok()
    patched = backend.request('PATCH', services(namespace, 'credit'), {'spec': {'selector': {'slot': 'green'}}}, MERGE).ok()
    assert patched.body['spec']['selector'] == {'endpoint': 'credit', 'slot': 'green'}  # a merge cannot drop keys
    patched = backend.request('PATCH', services(namespace, 'credit'), {'spec': {'selector': {'slot': None}}}, MERGE).ok()
    assert patched.body['spec']['selector'] == {'endpoint': 'credit'}  # only null does
    replaced = backend.request('PATCH', services(namespace, 'credit'),
                               {'spec': {'selector': {'$patch': 'replace', 'endpoint': 'other'}}}, STRATEGIC).ok()
    assert replaced.body['spec']['selector'] == {'endpoint': 'other'}  # strategic merge: $patch replace


def test_server_side_apply_removes_what_the_manager_stops_applying(backend: Backend, namespace: str) -> None:
    path = deployments(namespace, 'slot')
    first = apply(backend, path, deployment('slot', labels={'tier': 'model'}, env=[{'name': 'A', 'value': '1'},
                                                                                 {'name': 'B', 'value': '2'}]))
    assert first.status == 201, first
    # Another client adds a label with a merge patch: that field is the other manager's.
    backend.request('PATCH', path, {'metadata': {'labels': {'owner': 'team'}}}, MERGE,
                    params={'fieldManager': 'someone-else'}).ok()
    second = apply(backend, path, deployment('slot', env=[{'name': 'A', 'value': '1'}])).ok()
    assert second.body['metadata']['labels'] == {'app': 'slot', 'owner': 'team'}  # tier gone, owner kept
    assert second.body['spec']['template']['spec']['containers'][0]['env'] == [{'name': 'A', 'value': '1'}]
    managers = {(e['manager'], e['operation']) for e in second.body['metadata']['managedFields']}
    assert {('slotkeeper', 'Apply'), ('someone-else', 'Update')} <= managers
    # A merge patch could not have done this: it only adds and changes keys.


def test_server_side_apply_conflicts_with_another_manager_unless_forced(backend: Backend, namespace: str) -> None:
    path = deployments(namespace, 'slot')
    assert apply(backend, path, deployment('slot', replicas=1)).status == 201
    backend.request('PATCH', path, {'spec': {'replicas': 3}}, MERGE, params={'fieldManager': 'autoscaler'}).ok()
    refused = apply(backend, path, deployment('slot', replicas=1), force=False)
    assert refused.status == 409, refused
    assert [c['field'] for c in refused.body['details']['causes']] == ['.spec.replicas']
    forced = apply(backend, path, deployment('slot', replicas=1)).ok()
    assert forced.body['spec']['replicas'] == 1


def test_a_service_port_an_apply_stops_naming_is_removed_and_a_json_patched_selector_does_not_keep_it(
        backend: Backend, namespace: str) -> None:
    """spec.serving.grpcPort off: the next apply of a Service leaves its grpc port out (service_ports.py)."""
    path = services(namespace, 'credit')
    grpc = {'name': 'grpc', 'port': 9000, 'targetPort': 'grpc', 'protocol': 'TCP', 'appProtocol': 'grpc'}
    with_grpc = service('credit', {'endpoint': 'credit', 'slot': 'none'})
    with_grpc['spec']['ports'] = [{**with_grpc['spec']['ports'][0], 'protocol': 'TCP'}, grpc]
    assert apply(backend, path, with_grpc).status == 201
    # The traffic switch: a JSON patch of the selector by the same manager name (an Update entry).
    switched = backend.request('PATCH', path, [{'op': 'replace', 'path': '/spec/selector',
                                                'value': {'endpoint': 'credit', 'slot': 'blue'}}],
                               'application/json-patch+json', params={'fieldManager': 'slotkeeper'}).ok()
    assert [p['name'] for p in switched.body['spec']['ports']] == ['http', 'grpc']
    without = service('credit', {'endpoint': 'credit', 'slot': 'blue'})
    applied = apply(backend, path, without).ok()
    assert [p['name'] for p in applied.body['spec']['ports']] == ['http']
    assert applied.body['spec']['selector'] == {'endpoint': 'credit', 'slot': 'blue'}
    again = apply(backend, path, with_grpc | {'spec': {**with_grpc['spec'], 'selector': {'endpoint': 'credit',
                                                                                          'slot': 'blue'}}}).ok()
    assert again.body['spec']['ports'][1] == grpc


def replicas_owners(body: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(manager, operation, subresource) of each managedFields entry that owns spec.replicas."""
    return {(e['manager'], e['operation'], e.get('subresource', '')) for e in body['metadata']['managedFields']
            if 'f:replicas' in (e.get('fieldsV1') or {}).get('f:spec', {})}


def without_replicas(body: dict[str, Any]) -> dict[str, Any]:
    return dict(body, spec={k: v for k, v in body['spec'].items() if k != 'replicas'})


def test_replicas_an_apply_stops_naming_are_reset_to_the_default_unless_another_manager_owns_them(
        backend: Backend, namespace: str) -> None:
    """The trap of handing replicas to an autoscaler (Kubernetes' "Transferring ownership"): an apply
    that owned spec.replicas alone and stops naming them removes them, and the default comes back."""
    path = deployments(namespace, 'slot')
    assert apply(backend, path, deployment('slot', replicas=3)).status == 201
    reset = apply(backend, path, without_replicas(deployment('slot'))).ok()
    assert reset.body['spec']['replicas'] == 1

    # The hand-over: another manager applies replicas alone, at the count they have, before.
    assert apply(backend, path, deployment('slot', replicas=3)).ok().body['spec']['replicas'] == 3
    handover = {'apiVersion': 'apps/v1', 'kind': 'Deployment', 'metadata': {'name': 'slot'}, 'spec': {'replicas': 3}}
    shared = apply(backend, path, handover, manager='slotkeeper-handover', force=False).ok()  # same value: no conflict
    assert replicas_owners(shared.body) == {('slotkeeper', 'Apply', ''), ('slotkeeper-handover', 'Apply', '')}
    kept = apply(backend, path, without_replicas(deployment('slot'))).ok()
    assert kept.body['spec']['replicas'] == 3
    assert replicas_owners(kept.body) == {('slotkeeper-handover', 'Apply', '')}


def test_a_scale_subresource_write_takes_replicas_from_the_apply(backend: Backend, namespace: str) -> None:
    """What an autoscaler's write does to the field: it owns spec.replicas now, so an apply without
    them keeps its count, and a merge patch by another manager takes them in turn."""
    path = deployments(namespace, 'slot')
    assert apply(backend, path, deployment('slot', replicas=2)).status == 201
    scale = backend.request('GET', path + '/scale').ok().body
    scale['spec']['replicas'] = 5
    scaled = backend.request('PUT', path + '/scale', scale, 'application/json',
                             params={'fieldManager': 'kube-controller-manager'}).ok()
    assert scaled.body['kind'] == 'Scale' and scaled.body['spec']['replicas'] == 5
    kept = apply(backend, path, without_replicas(deployment('slot'))).ok()
    assert kept.body['spec']['replicas'] == 5
    assert replicas_owners(kept.body) == {('kube-controller-manager', 'Update', 'scale')}
    same = backend.request('PATCH', path, {'spec': {'replicas': 5}}, MERGE, params={'fieldManager': 'slotkeeper'}).ok()
    assert replicas_owners(same.body) == {('kube-controller-manager', 'Update', 'scale')}  # no change, no claim
    moved = backend.request('PATCH', path, {'spec': {'replicas': 0}}, MERGE, params={'fieldManager': 'slotkeeper'}).ok()
    assert replicas_owners(moved.body) == {('slotkeeper', 'Update', '')}


def test_service_account_name_cannot_be_dropped_by_a_merge_patch_or_an_apply(backend: Backend, namespace: str) -> None:
    path = deployments(namespace, 'slot')
    assert apply(backend, path, deployment('slot', service_account='runner')).status == 201
    patched = backend.request('PATCH', path, {'spec': {'template': {'spec': {'serviceAccountName': None}}}}, MERGE).ok()
    assert patched.body['spec']['template']['spec']['serviceAccountName'] == 'runner'  # serviceAccount refills it
    applied = apply(backend, path, deployment('slot', service_account=None)).ok()
    assert applied.body['spec']['template']['spec']['serviceAccountName'] == 'runner'


def test_a_no_op_write_keeps_the_resource_version_and_sends_no_event(backend: Backend, namespace: str) -> None:
    created = backend.request('POST', services(namespace), service('credit', {'slot': 'blue'})).ok()
    before = created.body['metadata']['resourceVersion']
    same = backend.request('PATCH', services(namespace, 'credit'), {'spec': {'selector': {'slot': 'blue'}}}, MERGE).ok()
    assert same.body['metadata']['resourceVersion'] == before
    changed = backend.request('PATCH', services(namespace, 'credit'), {'spec': {'selector': {'slot': 'green'}}}, MERGE).ok()
    after = changed.body['metadata']['resourceVersion']
    assert after != before
    # The first event after `before` is the real change: the no-op made none.
    with backend.watch(services(namespace), {'resourceVersion': before, 'fieldSelector': 'metadata.name=credit',
                                             'timeoutSeconds': '30'}) as events:
        first = next(events)
    assert (first['type'], first['object']['spec']['selector']) == ('MODIFIED', {'slot': 'green'})
    assert first['object']['metadata']['resourceVersion'] == after


def test_a_watch_with_a_label_selector_sees_only_matching_objects_after_the_resource_version(
        backend: Backend, namespace: str) -> None:
    def configmap(name: str, app: str) -> dict[str, Any]:
        return {'apiVersion': 'v1', 'kind': 'ConfigMap', 'metadata': {'name': name, 'labels': {'app': app}},
                'data': {'v': '1'}}
    backend.request('POST', configmaps(namespace), configmap('before', 'mine')).ok()  # older than the watch
    since = backend.request('GET', configmaps(namespace)).ok().body['metadata']['resourceVersion']
    backend.request('POST', configmaps(namespace), configmap('other', 'other')).ok()
    backend.request('POST', configmaps(namespace), configmap('mine', 'mine')).ok()
    backend.request('PATCH', configmaps(namespace, 'other'), {'data': {'v': '2'}}, MERGE).ok()
    backend.request('PATCH', configmaps(namespace, 'mine'), {'data': {'v': '2'}}, MERGE).ok()
    backend.request('PATCH', configmaps(namespace, 'mine'), {'metadata': {'labels': {'app': 'gone'}}}, MERGE).ok()
    backend.request('POST', configmaps(namespace), configmap('last', 'mine')).ok()  # the barrier
    seen = []
    with backend.watch(configmaps(namespace), {'resourceVersion': since, 'labelSelector': 'app=mine',
                                               'timeoutSeconds': '30'}) as events:
        for event in events:
            seen.append((event['type'], event['object']['metadata']['name']))
            if seen[-1] == ('ADDED', 'last'):
                break
    # No "before" (older than the resourceVersion), no "other" (not selected); "mine" leaves the
    # selection with a DELETED event although the object still exists.
    assert seen == [('ADDED', 'mine'), ('MODIFIED', 'mine'), ('DELETED', 'mine'), ('ADDED', 'last')]


def test_a_finalizer_keeps_a_deleted_object_until_it_is_removed(backend: Backend, namespace: str) -> None:
    path = configmaps(namespace, 'held')
    backend.request('POST', configmaps(namespace), {'apiVersion': 'v1', 'kind': 'ConfigMap', 'data': {'v': '1'},
                                                    'metadata': {'name': 'held', 'finalizers': ['example.com/hold']}}).ok()
    deleted = backend.request('DELETE', path).ok()
    assert deleted.body['metadata']['deletionTimestamp'] and deleted.body['metadata']['finalizers'] == ['example.com/hold']
    assert backend.request('GET', path).status == 200  # still there
    assert backend.request('PATCH', path, {'data': {'v': '2'}}, MERGE).ok().body['data'] == {'v': '2'}  # still writable
    refused = backend.request('PATCH', path, {'metadata': {'finalizers': ['example.com/hold', 'example.com/more']}}, MERGE)
    assert refused.status == 422  # no new finalizers on the way out
    released = backend.request('PATCH', path, {'metadata': {'finalizers': None}}, MERGE).ok()
    assert released.body['metadata']['deletionTimestamp']
    assert backend.request('GET', path).status == 404


def test_owned_objects_are_garbage_collected(backend: Backend, namespace: str) -> None:
    owner = backend.request('POST', configmaps(namespace), {'apiVersion': 'v1', 'kind': 'ConfigMap',
                                                            'metadata': {'name': 'owner'}}).ok().body
    reference = {'apiVersion': 'v1', 'kind': 'ConfigMap', 'name': 'owner', 'uid': owner['metadata']['uid'],
                 'controller': True, 'blockOwnerDeletion': True}
    backend.request('POST', configmaps(namespace), {'apiVersion': 'v1', 'kind': 'ConfigMap',
                                                    'metadata': {'name': 'child', 'ownerReferences': [reference]}}).ok()
    deleted = backend.request('DELETE', configmaps(namespace, 'owner')).ok()
    assert deleted.body['status'] == 'Success'  # gone at once: no finalizers
    # The real garbage collector works asynchronously: poll.
    backend.poll(lambda: backend.request('GET', configmaps(namespace, 'child')).status == 404, 'the child collected')


def test_unknown_field_selectors_are_refused(backend: Backend, namespace: str) -> None:
    refused = backend.request('GET', services(namespace), params={'fieldSelector': 'spec.type=ClusterIP'})
    assert refused.status == 400
    assert refused.body['message'] == '"spec.type" is not a known field selector: only "metadata.name", "metadata.namespace"'
    events = f'/api/v1/namespaces/{namespace}/events'
    assert backend.request('GET', events, params={'fieldSelector': 'involvedObject.kind=ModelEndpoint,'
                                                                    'involvedObject.name=credit,reason=Promoted'}).status == 200
    assert backend.request('GET', events, params={'fieldSelector': 'involvedObject.colour=red'}).status == 400
    pods = f'/api/v1/namespaces/{namespace}/pods'
    assert backend.request('GET', pods, params={'fieldSelector': 'status.phase=Running,spec.nodeName='}).status == 200


def test_an_invalid_quantity_is_400_on_create_and_422_with_the_whole_object_on_a_patch(
        backend: Backend, namespace: str) -> None:
    bad = deployment('slot')
    bad['spec']['template']['spec']['containers'][0]['resources'] = {'requests': {'cpu': 'lots'}}
    created = backend.request('POST', deployments(namespace), bad)
    assert (created.status, created.body['reason']) == (400, 'BadRequest')
    assert created.body['message'].endswith(QUANTITY_ERROR)
    backend.request('POST', deployments(namespace), deployment('slot')).ok()
    patched = backend.request('PATCH', deployments(namespace, 'slot'),
                              {'spec': {'template': {'spec': bad['spec']['template']['spec']}}}, MERGE)
    assert (patched.status, patched.body['reason']) == (422, 'Invalid')
    cause = patched.body['details']['causes'][0]
    assert cause['field'] == 'patch' and cause['message'].endswith(f'": {QUANTITY_ERROR}')
    # The message embeds the whole patched object: the cause is what follows it.
    assert patched.body['message'].rsplit('": ', 1)[-1] == QUANTITY_ERROR
    assert '\\"name\\":\\"slot\\"' in patched.body['message']


def test_status_goes_only_through_the_status_subresource_and_keeps_the_generation(
        backend: Backend, namespace: str) -> None:
    body = {'apiVersion': 'slotkeeper.io/v1alpha1', 'kind': 'ModelEndpoint', 'metadata': {'name': 'credit'},
            'spec': {'model': {'name': 'credit', 'uri': 'file:///m/model.joblib'}}}
    created = backend.request('POST', endpoints(namespace), body).ok().body
    assert created['spec']['model']['format'] == 'sklearn'  # CRD defaults
    status = backend.request('PATCH', endpoints(namespace, 'credit') + '/status', {'status': {'phase': 'Progressing'}},
                             MERGE).ok().body
    assert status['status']['phase'] == 'Progressing' and status['metadata']['generation'] == 1
    ignored = backend.request('PATCH', endpoints(namespace, 'credit'), {'status': {'phase': 'Healthy'}}, MERGE).ok().body
    assert ignored['status']['phase'] == 'Progressing'
    assert ignored['metadata']['resourceVersion'] == status['metadata']['resourceVersion']  # nothing changed
    spec = backend.request('PATCH', endpoints(namespace, 'credit'), {'spec': {'serving': {'replicas': 2}}}, MERGE).ok().body
    assert spec['metadata']['generation'] == 2
    invalid = backend.request('PATCH', endpoints(namespace, 'credit'), {'spec': {'serving': {'replicas': -3}}}, MERGE)
    assert invalid.status == 422
    assert [c['field'] for c in invalid.body['details']['causes']] == ['spec.serving.replicas']


def test_a_crd_whose_cel_rule_does_not_compile_is_refused(backend: Backend) -> None:
    # '\S' is no escape sequence in CEL string literals (write '\\S'): the apiserver refuses the CRD.
    name = 'celescapes.contract.slotkeeper.io'
    crd = {'apiVersion': 'apiextensions.k8s.io/v1', 'kind': 'CustomResourceDefinition', 'metadata': {'name': name},
           'spec': {'group': 'contract.slotkeeper.io', 'scope': 'Namespaced',
                    'names': {'plural': 'celescapes', 'singular': 'celescape', 'kind': 'CelEscape'},
                    'versions': [{'name': 'v1', 'served': True, 'storage': True, 'schema': {'openAPIV3Schema': {
                        'type': 'object', 'properties': {'spec': {
                            'type': 'object', 'properties': {'uri': {'type': 'string'}},
                            'x-kubernetes-validations': [{'rule': "self.uri.matches('^\\S+$')",
                                                          'message': 'no spaces'}]}}}}}]}}
    path = '/apis/apiextensions.k8s.io/v1/customresourcedefinitions'
    try:
        answer = backend.request('POST', path, crd)
        assert answer.status == 422, answer
        assert 'x-kubernetes-validations[0].rule' in answer.body['message']
    finally:
        if backend.request('GET', f'{path}/{name}').status == 200:
            backend.request('DELETE', f'{path}/{name}')


def cronjobs(namespace: str, name: str = '') -> str:
    return f'/apis/batch/v1/namespaces/{namespace}/cronjobs' + (f'/{name}' if name else '')


def cron_job(name: str, env: list[dict[str, str]]) -> dict[str, Any]:
    pod = {'restartPolicy': 'Never', 'containers': [{'name': 'model', 'image': 'example/model:1',
                                                      'args': ['batch'], 'env': env}]}
    labels = {'slotkeeper.io/batch': 'nightly', 'slotkeeper.io/revision': env[0]['value']}
    return {'apiVersion': 'batch/v1', 'kind': 'CronJob', 'metadata': {'name': name, 'labels': labels},
            'spec': {'schedule': '0 2 * * *', 'suspend': False, 'concurrencyPolicy': 'Forbid',
                     'jobTemplate': {'metadata': {'labels': labels},
                                     'spec': {'backoffLimit': 3, 'template': {'metadata': {'labels': labels},
                                                                              'spec': pod}}}}}


def test_a_cron_job_is_created_by_apply_re_pinned_by_the_next_and_deleted_once(backend: Backend, namespace: str) -> None:
    """What batch schedules rely on: an apply creates the CronJob; an apply of another job template
    (the new stable revision) leaves exactly that template (a dropped env var gone); a repeated apply
    changes nothing; a second delete is a 404 (the operator takes it as done)."""
    path = cronjobs(namespace, 'credit-nightly')
    created = apply(backend, path, cron_job('credit-nightly', [{'name': 'SLOTKEEPER_MODEL_VERSION', 'value': 'r1'},
                                                               {'name': 'OLD', 'value': '1'}]))
    assert created.status == 201, created
    assert created.body['kind'] == 'CronJob' and created.body['spec']['schedule'] == '0 2 * * *'
    repinned = apply(backend, path, cron_job('credit-nightly', [{'name': 'SLOTKEEPER_MODEL_VERSION', 'value': 'r2'}])).ok()
    template = repinned.body['spec']['jobTemplate']
    assert template['spec']['template']['spec']['containers'][0]['env'] == [
        {'name': 'SLOTKEEPER_MODEL_VERSION', 'value': 'r2'}]
    assert template['metadata']['labels']['slotkeeper.io/revision'] == 'r2'
    assert template['spec']['template']['spec']['containers'][0]['args'] == ['batch']
    again = apply(backend, path, cron_job('credit-nightly', [{'name': 'SLOTKEEPER_MODEL_VERSION', 'value': 'r2'}])).ok()
    assert again.body['metadata']['resourceVersion'] == repinned.body['metadata']['resourceVersion']
    assert backend.request('DELETE', path).status == 200
    assert backend.request('DELETE', path).status == 404
