"""Deleting needs no operator: no finalizer is put on a ModelEndpoint, so deleting one (or its
namespace, or the whole install) completes whether or not the operator runs, and what it owns goes
with it through owner references. A finalizer left by slotkeeper 0.1.0 is removed on sight."""

from __future__ import annotations

import kmock as kmock_lib

from kmock_cluster import DEPLOYMENTS, MODELENDPOINTS, SERVICES, eventually
from test_operator import SPEC, deployment, healthy_endpoint, status

LEGACY_FINALIZER = "slotkeeper.io/finalizer"


def owned(k8s) -> list[str]:
    return sorted(o["metadata"]["name"] for resource in (DEPLOYMENTS, SERVICES)
                  for o in k8s.objects(resource, namespace="default"))


async def test_no_finalizer_so_deletion_completes_with_the_operator_stopped(run_operator, operator_registry,
                                                                           operator_settings, k8s):
    operator = await run_operator(operator_registry, settings=operator_settings)
    await healthy_endpoint(k8s)
    meta = k8s.endpoint("credit", namespace="default")["metadata"]
    assert not meta.get("finalizers")
    assert not [key for key in meta.get("annotations") or {} if key.startswith("kopf.")]  # no bookkeeping either
    assert owned(k8s) == ["credit", "credit-blue", "credit-blue", "credit-green"]
    await operator.stop()

    await k8s.delete(MODELENDPOINTS, "credit", namespace="default")
    assert k8s.endpoint("credit", namespace="default") is None  # gone at once, nobody had to act
    await eventually(lambda: owned(k8s) == [], message="owned objects garbage-collected")


async def test_a_deleted_endpoint_stops_its_loop(operator, k8s, kmock):
    await healthy_endpoint(k8s)
    await k8s.delete(MODELENDPOINTS, "credit", namespace="default")
    await eventually(lambda: ("default", "credit") not in operator.memo.loops, message="loop stopped")
    writes = len(kmock[kmock_lib.method.PATCH])
    # A barrier instead of a sleep: a second endpoint's whole first rollout happens after the deletion.
    await healthy_endpoint(k8s, name="other")
    assert not [r for r in list(kmock[kmock_lib.method.PATCH])[writes:] if r.name == "credit"]


async def test_a_legacy_finalizer_is_removed_so_deletion_is_not_blocked(operator, k8s):
    await k8s.create(MODELENDPOINTS, {"apiVersion": "slotkeeper.io/v1alpha1", "kind": "ModelEndpoint",
                                      "metadata": {"name": "credit", "finalizers": [LEGACY_FINALIZER, "x.io/keep"]},
                                      "spec": SPEC}, namespace="default")
    await eventually(lambda: k8s.endpoint("credit", namespace="default")["metadata"].get("finalizers") == ["x.io/keep"],
                     message="the legacy finalizer removed, others kept")
    await eventually(lambda: deployment(k8s, "blue") and status(k8s).get("phase") == "Progressing",
                     message="and the endpoint is reconciled")
