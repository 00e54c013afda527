"""
What leader election (``slotkeeper.leader``) relies on from ``coordination.k8s.io/v1`` Leases, on the
double or a real cluster (``SLOTKEEPER_CONTRACT_CONTEXT``). No recording of Leases exists in
``recordings/``: these are semantics tests, run against a cluster to check the double.
"""
from __future__ import annotations

from typing import Any

from .backends import Backend


def leases(namespace: str, name: str = '') -> str:
    return f'/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases' + (f'/{name}' if name else '')


def lease(holder: str | None, *, version: str | None = None, transitions: int = 0,
          renewed: str = '2026-12-01T10:00:00.000000Z') -> dict[str, Any]:
    metadata: dict[str, Any] = {'name': 'slotkeeper-operator'}
    if version is not None:
        metadata['resourceVersion'] = version
    return {'apiVersion': 'coordination.k8s.io/v1', 'kind': 'Lease', 'metadata': metadata,
            'spec': {'holderIdentity': holder, 'leaseDurationSeconds': 15, 'leaseTransitions': transitions,
                     'acquireTime': '2026-12-01T10:00:00.000000Z', 'renewTime': renewed}}


def test_a_missing_lease_is_404_and_a_second_create_is_409_already_exists(backend: Backend, namespace: str) -> None:
    missing = backend.request('GET', leases(namespace, 'slotkeeper-operator'))
    assert (missing.status, missing.body['reason']) == (404, 'NotFound')
    created = backend.request('POST', leases(namespace), lease('a_1'))
    assert created.status == 201, created
    assert created.body['spec']['holderIdentity'] == 'a_1' and created.body['metadata']['resourceVersion']
    again = backend.request('POST', leases(namespace), lease('b_1'))
    assert (again.status, again.body['reason']) == (409, 'AlreadyExists')
    got = backend.request('GET', leases(namespace, 'slotkeeper-operator')).ok()
    assert got.body['spec']['holderIdentity'] == 'a_1'  # the loser changed nothing


def test_an_update_at_a_stale_resource_version_is_409_conflict(backend: Backend, namespace: str) -> None:
    created = backend.request('POST', leases(namespace), lease('a_1')).ok()
    read_at = created.body['metadata']['resourceVersion']
    renewed = backend.request('PUT', leases(namespace, 'slotkeeper-operator'),
                              lease('a_1', version=read_at, renewed='2026-12-01T10:00:02.000000Z')).ok()
    assert renewed.body['metadata']['resourceVersion'] != read_at  # a renewal is a new version
    assert renewed.body['spec']['renewTime'] == '2026-12-01T10:00:02.000000Z'
    # A follower that read the Lease before that renewal cannot take it over.
    stale = backend.request('PUT', leases(namespace, 'slotkeeper-operator'),
                            lease('b_1', version=read_at, transitions=1))
    assert (stale.status, stale.body['reason']) == (409, 'Conflict')
    assert backend.request('GET', leases(namespace, 'slotkeeper-operator')).ok().body['spec']['holderIdentity'] == 'a_1'


def test_a_renewal_that_changes_nothing_keeps_the_resource_version(backend: Backend, namespace: str) -> None:
    """Why every renewal writes a new renewTime: an unchanged Lease is a no-op write, and followers
    would see no change (they watch the record change, not the clock)."""
    created = backend.request('POST', leases(namespace), lease('a_1')).ok()
    read_at = created.body['metadata']['resourceVersion']
    same = backend.request('PUT', leases(namespace, 'slotkeeper-operator'), lease('a_1', version=read_at)).ok()
    assert same.body['metadata']['resourceVersion'] == read_at


def test_a_released_lease_has_no_holder(backend: Backend, namespace: str) -> None:
    created = backend.request('POST', leases(namespace), lease('a_1')).ok()
    released = backend.request('PUT', leases(namespace, 'slotkeeper-operator'),
                               lease(None, version=created.body['metadata']['resourceVersion'])).ok()
    assert 'holderIdentity' not in released.body['spec']  # null is dropped (omitempty), not stored as ""
