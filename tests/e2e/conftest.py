"""e2e fixtures: a real cluster (kind), the real operator and serving images.

Before any e2e test runs, the API is checked once with a short timeout; with nothing to test against
(no kubeconfig, no ``kind-slotkeeper`` context, the API refusing connections, the CRD or the operator
missing) every e2e test is skipped with the reason and how to get a cluster: ``make kind``.
``make e2e`` runs them: ``SLOTKEEPER_E2E_CONTEXT`` names the kube context (default
``kind-slotkeeper``) and ``SLOTKEEPER_E2E_SERVING_IMAGE`` the serving image loaded into it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from .kube import Cluster, NoCluster, Preflight, e2e_context, preflight, serving_image, wait_until
from .workloads import ClientLog, client_pod, infer_url, model_configmap, model_file_server

FOUND = pytest.StashKey[Preflight]()
WORKDIR = pytest.StashKey[Path]()
FAILED = pytest.StashKey[bool]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    e2e_items = [item for item in items if item.get_closest_marker("e2e")]
    if not e2e_items:
        return
    workdir = Path(tempfile.mkdtemp(prefix="slotkeeper-e2e-"))
    config.stash[WORKDIR] = workdir
    try:
        config.stash[FOUND] = preflight(e2e_context(), workdir)
    except NoCluster as why:
        skip = pytest.mark.skip(reason=f"e2e: {why}")
        for item in e2e_items:
            item.add_marker(skip)


def pytest_unconfigure(config: pytest.Config) -> None:
    workdir = config.stash.get(WORKDIR, None)
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    report = yield
    if report.when == "call" and report.failed:
        item.stash[FAILED] = True
    return report


@pytest.fixture(scope="session")
def cluster(pytestconfig: pytest.Config) -> Cluster:
    found = pytestconfig.stash.get(FOUND, None)
    if found is None:  # only reachable when an e2e test was not marked e2e
        pytest.skip("e2e: no cluster (the preflight check did not run)")
    return Cluster(found)


@pytest.fixture(scope="session")
def models(cluster: Cluster) -> Iterator[str]:
    """A namespace serving the demo's score.py models over HTTP; yields its name."""
    namespace = cluster.create_namespace("sk-e2e-models")
    try:
        cluster.create(namespace, model_configmap())
        for doc in model_file_server(serving_image()):
            cluster.create(namespace, doc)
        wait_until("the model file server to be ready",
                   lambda: cluster.ready_pods(namespace, "app.kubernetes.io/name=model-files"), timeout=180,
                   describe=lambda: str(cluster.core.list_namespaced_pod(namespace).items))
        yield namespace
    finally:
        cluster.delete_namespace(namespace)


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test; on failure, what a person would look at is printed first."""
    name = cluster.create_namespace(f"sk-e2e-{request.node.name.removeprefix('test_')[:30].replace('_', '-')}")
    yield name
    if request.node.stash.get(FAILED, False):
        from slotkeeper.api import GROUP, PLURAL, VERSION

        for endpoint in cluster.custom.list_namespaced_custom_object(GROUP, VERSION, name, PLURAL)["items"]:
            print(f"\n--- ModelEndpoint {name}/{endpoint['metadata']['name']} ---")
            print(cluster.describe(name, endpoint["metadata"]["name"]))
    cluster.delete_namespace(name)


class Client:
    """The in-cluster client pod: calls the endpoint Service in a loop, one log line per request."""

    def __init__(self, cluster: Cluster, namespace: str, pod: str) -> None:
        self.cluster, self.namespace, self.pod = cluster, namespace, pod

    def log(self) -> ClientLog:
        return ClientLog.parse(self.cluster.pod_log(self.namespace, self.pod))

    def wait_for(self, what: str, fact: Callable[[ClientLog], bool], timeout: float = 120) -> ClientLog:
        def check() -> ClientLog | None:
            log = self.log()
            return log if fact(log) else None
        return wait_until(f"the client to see {what}", check, timeout,
                          describe=lambda: f"client log tail: {self.log().results[-10:]}")


@pytest.fixture
def start_client(cluster: Cluster) -> Callable[..., Client]:
    def start(namespace: str, endpoint: str, model: str, seconds: float = 900, name: str = "client") -> Client:
        cluster.create(namespace, client_pod(serving_image(), infer_url(endpoint, model), seconds, name))
        client = Client(cluster, namespace, name)
        client.wait_for("its first answer", lambda log: log.results or log.done, timeout=120)
        return client
    return start
