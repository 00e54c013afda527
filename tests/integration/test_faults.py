"""The API misbehaves at random on the operator's writes (409 Conflict, 500, 429, timeouts, and
timeouts of writes that did happen): rollouts still complete or revert, with nothing duplicated."""

from __future__ import annotations

import random

import kmock as kmock_lib
import kopf
import pytest

from kmock_cluster import DEPLOYMENTS, MODELENDPOINTS, SERVICES, eventually, make_api_client
from slotkeeper.cluster import Cluster
from test_operator import NEW_MODEL, SLOT, SPEC, deployment, ready, selector, selector_patches, status

MAIN, STATUS = kmock_lib.subresource(None), kmock_lib.subresource("status")
# The operator's writes only: the test's own writes (spec edits, Deployment status) go through.
WRITES = [("patch", SERVICES, MAIN), ("create", SERVICES, MAIN), ("patch", DEPLOYMENTS, MAIN),
          ("create", DEPLOYMENTS, MAIN), ("patch", MODELENDPOINTS, STATUS)]
FAULTS = [dict(status=409), dict(status=500), dict(status=429), dict(status=504, delay=1.0),
          dict(status=200, delay=1.0, after_write=True)]


@pytest.fixture
def operator_memo(kmock) -> kopf.Memo:
    # A short client timeout, so an answer held for a second is a timeout, as a hung apiserver is.
    # Fast retries keep the test short; production backs off from 0.5 s up to a minute.
    return kopf.Memo(cluster=Cluster(make_api_client(str(kmock.url).rstrip("/")), request_timeout=(1.0, 0.3)),
                     retry_backoff=0.05)


def inject_random_faults(kmock, seed: int) -> list:
    rng = random.Random(seed)
    faults = []
    for criteria in WRITES:
        for fault in rng.sample(FAULTS, k=2):
            faults.append(kmock.fail(*criteria, times=rng.randint(1, 2), **fault))
    return faults


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_rollout_completes_through_random_write_faults(operator, k8s, kmock, seed):
    faults = inject_random_faults(kmock, seed)
    await k8s.create_endpoint("credit", SPEC, namespace="default")
    await eventually(lambda: deployment(k8s, "blue"), timeout=20)
    await ready(k8s, "blue")
    await eventually(lambda: status(k8s).get("phase") == "Healthy", timeout=20, message="first revision")
    await k8s.patch_endpoint("credit", {"model": NEW_MODEL}, namespace="default")
    await eventually(lambda: deployment(k8s, "green"), timeout=20)
    await ready(k8s, "green")
    await eventually(lambda: status(k8s).get("activeSlot") == "green" and selector(k8s)[SLOT] == "green"
                     and deployment(k8s, "blue")["spec"]["replicas"] == 0, timeout=20, message="promoted")

    assert sum(len(f.hits) for f in faults) > 0, "no fault was hit: the test proves nothing"
    assert [h["outcome"] for h in status(k8s)["history"]] == ["Promoted", "Promoted"]
    assert sorted(d["metadata"]["name"] for d in k8s.objects(DEPLOYMENTS, namespace="default")) == [
        "credit-blue", "credit-green"]
    assert sorted(s["metadata"]["name"] for s in k8s.objects(SERVICES, namespace="default")) == [
        "credit", "credit-blue", "credit-green"]
    assert selector_patches(kmock) == ["blue", "green"]  # traffic never flapped


@pytest.mark.parametrize("seed", [4, 5])
async def test_revert_completes_through_random_write_faults(operator, k8s, kmock, seed):
    await k8s.create_endpoint("credit", SPEC, namespace="default")
    await ready(k8s, "blue")
    await eventually(lambda: status(k8s).get("phase") == "Healthy", timeout=10)
    faults = inject_random_faults(kmock, seed)
    await k8s.patch_endpoint("credit", {"model": NEW_MODEL}, namespace="default")
    await eventually(lambda: deployment(k8s, "green"), timeout=20)
    revision = deployment(k8s, "green")["spec"]["template"]["metadata"]["labels"]["slotkeeper.io/revision"]
    await k8s.create_pod("credit-green-1", namespace="default", waiting_reason="ImagePullBackOff", labels={
        "app.kubernetes.io/managed-by": "slotkeeper", "slotkeeper.io/endpoint": "credit",
        SLOT: "green", "slotkeeper.io/revision": revision})

    await eventually(lambda: status(k8s).get("phase") == "RolledBack" and selector(k8s)[SLOT] == "blue"
                     and deployment(k8s, "green")["spec"]["replicas"] == 1, timeout=20, message="reverted")
    assert sum(len(f.hits) for f in faults) > 0
    assert [h["outcome"] for h in status(k8s)["history"]] == ["Promoted", "RolledBack"]
    assert selector_patches(kmock) == ["blue"]  # the failed candidate never got traffic
