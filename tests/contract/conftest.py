"""
Contract tests: what slotkeeper relies on from the Kubernetes API, checked against the API double
and -- with ``SLOTKEEPER_CONTRACT_CONTEXT=<kube context>`` -- against a real cluster, by the same
tests through the same code path (see ``backends.py``).

* ``test_recordings.py`` replays ``recordings/kube-apiserver-1.28.7.json`` (answers of a real
  kube-apiserver) in order and compares every answer with the recorded one.
* ``test_semantics.py``: readable tests of the behaviours the operator depends on.

Run against a cluster (kind works: ``make kind`` installs the CRD)::

    kubectl --context kind-slotkeeper apply -f crds/modelendpoints.slotkeeper.io.yaml
    SLOTKEEPER_CONTRACT_CONTEXT=kind-slotkeeper python -m pytest tests/contract

The tests create and delete their own namespaces there; no slotkeeper operator may watch them.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from .backends import Backend, NoBackend, backend_from_environment


@pytest.fixture(scope='session')
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """The API double (default) or the real cluster of $SLOTKEEPER_CONTRACT_CONTEXT."""
    try:
        manager = backend_from_environment(tmp_path_factory.mktemp('contract-double'))
        chosen = manager.__enter__()
    except NoBackend as why:
        pytest.fail(f"contract tests: {why}", pytrace=False)
    try:
        yield chosen
        crashes = chosen.crashes()
        assert not crashes, f"The API double crashed while serving requests: {crashes!r}"
    finally:
        manager.__exit__(None, None, None)


@pytest.fixture()
def namespace(backend: Backend) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    name = backend.create_namespace('contract')
    try:
        yield name
    finally:
        backend.delete_namespace(name)
