"""The operator process is stopped and started again at each step of a rollout. It resumes from
status: it never switches traffic twice, never loses history, and ends where an uninterrupted run ends."""

from __future__ import annotations

import pytest

from kmock_cluster import eventually
from test_operator import NEW_MODEL, SLOT, SPEC, deployment, ready, selector, selector_patches, status

REVISION = "slotkeeper.io/revision"


async def start(run_operator, operator_registry, operator_settings):
    return await run_operator(operator_registry, settings=operator_settings)


@pytest.mark.parametrize("stop_at", ["candidate rendered", "candidate ready", "switched", "analysing"])
async def test_restart_mid_rollout_resumes_to_the_same_end(run_operator, operator_registry, operator_settings,
                                                           k8s, kmock, stop_at):
    spec = {**SPEC, "checks": {"progressDeadlineSeconds": 60, "analysisSeconds": 2}}
    operator = await start(run_operator, operator_registry, operator_settings)
    await k8s.create_endpoint("credit", spec, namespace="default")
    await ready(k8s, "blue")
    await eventually(lambda: status(k8s).get("phase") == "Healthy")
    await k8s.patch_endpoint("credit", {"model": NEW_MODEL}, namespace="default")
    await eventually(lambda: deployment(k8s, "green"))

    if stop_at == "candidate rendered":
        await operator.stop()
        await ready(k8s, "green")
    elif stop_at == "candidate ready":
        await ready(k8s, "green")
        await operator.stop()
    elif stop_at in ("switched", "analysing"):
        await ready(k8s, "green")
        await eventually(lambda: selector(k8s)[SLOT] == "green")
        if stop_at == "analysing":
            await eventually(lambda: (status(k8s).get("rollout") or {}).get("switchedAt"))
        await operator.stop()
    await start(run_operator, operator_registry, operator_settings)

    await eventually(lambda: status(k8s).get("activeSlot") == "green" and status(k8s).get("phase") == "Healthy",
                     timeout=10, message="promoted after the restart")
    await eventually(lambda: deployment(k8s, "blue")["spec"]["replicas"] == 0, message="old slot scaled down")
    assert selector(k8s)[SLOT] == "green"
    assert [h["outcome"] for h in status(k8s)["history"]] == ["Promoted", "Promoted"]
    # Counted at the API (Events are best effort: kopf may drop queued ones when it stops).
    assert selector_patches(kmock) == ["blue", "green"]  # blue selected once, green once: never twice


async def test_restart_during_revert_finishes_the_revert(run_operator, operator_registry, operator_settings, k8s,
                                                         kmock):
    operator = await start(run_operator, operator_registry, operator_settings)
    await k8s.create_endpoint("credit", {**SPEC, "checks": {"progressDeadlineSeconds": 60, "analysisSeconds": 600}},
                              namespace="default")
    await ready(k8s, "blue")
    await eventually(lambda: status(k8s).get("phase") == "Healthy")
    await k8s.patch_endpoint("credit", {"model": NEW_MODEL}, namespace="default")
    await ready(k8s, "green")
    await eventually(lambda: selector(k8s)[SLOT] == "green")
    revision = deployment(k8s, "green")["spec"]["template"]["metadata"]["labels"][REVISION]
    await operator.stop()
    await k8s.create_pod("credit-green-1", namespace="default", waiting_reason="CrashLoopBackOff", labels={
        "app.kubernetes.io/managed-by": "slotkeeper", "slotkeeper.io/endpoint": "credit", SLOT: "green",
        REVISION: revision})
    await start(run_operator, operator_registry, operator_settings)

    await eventually(lambda: status(k8s).get("phase") == "RolledBack" and selector(k8s)[SLOT] == "blue",
                     timeout=10, message="reverted after the restart")
    assert [h["outcome"] for h in status(k8s)["history"]] == ["Promoted", "RolledBack"]
    await eventually(lambda: deployment(k8s, "green")["spec"]["replicas"] == 1)
    assert selector_patches(kmock) == ["blue", "green", "blue"]


@pytest.mark.timeout(300)  # 30 endpoints on a loaded 2-core machine: generous bounds, no timing asserted
async def test_restart_with_many_endpoints_indexes_them_all_and_acts_again(run_operator, operator_registry,
                                                                           operator_settings, k8s):
    """30 endpoints own 60 Deployments and 90 Services. A restarted operator must index all of them
    before any handler runs; a kopf worker limit below the owned objects of one kind deadlocked that
    (benchmarks/operator/restart.py found it with 7 endpoints and 20 workers)."""
    names = [f"model-{i}" for i in range(30)]
    operator = await start(run_operator, operator_registry, operator_settings)
    for name in names:
        await k8s.create_endpoint(name, SPEC, namespace="default")
    for name in names:
        await ready(k8s, "blue", name)
    await eventually(lambda: all(status(k8s, name).get("phase") == "Healthy" for name in names), timeout=180,
                     message="all 30 endpoints healthy")
    await operator.stop()

    await start(run_operator, operator_registry, operator_settings)
    await k8s.patch_endpoint("model-7", {"model": NEW_MODEL}, namespace="default")
    # With a worker limit of 20 this never happens: the handlers wait for indexes that never fill.
    await eventually(lambda: deployment(k8s, "green", "model-7"), timeout=90,
                     message="the restarted operator rendered model-7's candidate")
    await ready(k8s, "green", "model-7")
    await eventually(lambda: status(k8s, "model-7").get("activeSlot") == "green"
                     and status(k8s, "model-7").get("phase") == "Healthy", timeout=90,
                     message="the restarted operator rolled model-7 out")
    assert selector(k8s, "model-7")[SLOT] == "green"
    assert all(selector(k8s, name)[SLOT] == "blue" for name in names if name != "model-7")
