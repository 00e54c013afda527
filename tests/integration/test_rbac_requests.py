"""Every request the operator makes is one the install's RBAC allows: the ClusterRole (and the
namespaced overlay's Role) are checked against what the operator really sent during a rollout, a
canary, a revert, an autoscaled rollout, a deletion and a leader election, not against a hand-kept list. A real cluster answers 403 to the
rest (the operator runs as its own ServiceAccount there)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import kopf
import pytest
import yaml

from controllers import autoscaler_controller, deployment_controller
from kmock_cluster import HPAS, MODELENDPOINTS, eventually, make_api_client
from slotkeeper.leader import ElectionTiming, LeaderElector, LeaseStore
from test_canary import CANARY, promote
from test_operator import FAST_CHECKS, NEW_MODEL, status

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
OPERATOR_AGENTS = ("kopf/", "slotkeeper/")  # kopf's own client, the operator's (kube_api.py)


def verb(request) -> str:
    method = request.method.value if hasattr(request.method, "value") else str(request.method)
    method = method.upper()
    if method == "GET":
        if request.params.get("watch") in ("true", "1"):
            return "watch"
        return "get" if request.name else "list"
    return {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}[method]


def grants(path: Path) -> set[tuple[str, str, str]]:
    (role,) = [doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc["kind"] in ("ClusterRole", "Role")]
    return {(group, resource, v) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for v in rule["verbs"]}


def operator_requests(kmock, sent_by=None) -> set[tuple[str, str, str]]:
    """(group, resource, verb) of the operator's requests: by its clients' User-Agents, or ``sent_by``."""
    made = set()
    for request in list(kmock):
        agent = request.headers.get("User-Agent", "")
        ours = sent_by(request) if sent_by is not None else agent.startswith(OPERATOR_AGENTS)
        if request.resource is None or request.resource.plural is None or not ours:
            continue  # discovery (/api, /apis/<group>/<version>) is open to every authenticated client
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        made.add((request.resource.group or "", resource, verb(request)))
        if verb(request) == "patch" and "apply-patch" in request.headers.get("Content-Type", ""):
            made.add((request.resource.group or "", resource, "create"))  # an apply may create
    return made


@pytest.mark.parametrize("scope", ["cluster-wide", "namespaced"])
async def test_every_request_of_a_canary_rollout_and_revert_is_allowed_by_the_rbac(
        run_operator, operator_registry, operator_settings, k8s, kmock, scope):
    # As `slotkeeper run` starts it: cluster-wide with the ClusterRole, or `--namespace` with the Role.
    if scope == "cluster-wide":
        role = MANIFESTS / "rbac" / "cluster_role.yaml"
        operator = await run_operator(operator_registry, settings=operator_settings, clusterwide=True)
    else:
        role = MANIFESTS / "overlays" / "namespaced" / "role.yaml"
        operator = await run_operator(operator_registry, settings=operator_settings, namespaces=("default",),
                                      memo=kopf.Memo(namespaced=True))
    async with deployment_controller(k8s):
        await k8s.create_endpoint("credit", CANARY, namespace="default")
        await eventually(lambda: status(k8s).get("phase") == "Healthy", timeout=10)
        await k8s.patch_endpoint("credit", {"model": NEW_MODEL}, namespace="default")
        await eventually(lambda: status(k8s).get("phase") == "Paused", timeout=10)
        await k8s.patch(MODELENDPOINTS, "credit", {"metadata": {"annotations": {"slotkeeper.io/abort": "a1"}}},
                        namespace="default")
        await eventually(lambda: status(k8s).get("phase") == "RolledBack", timeout=10)
        await promote(k8s, "after-revert")  # nothing to promote: still a request the operator reads
        await k8s.delete(MODELENDPOINTS, "credit", namespace="default")
        await eventually(lambda: ("default", "credit") not in operator.memo.loops)

    made = operator_requests(kmock)
    assert {("apps", "deployments", "patch"), ("", "services", "patch"),
            ("slotkeeper.io", "modelendpoints/status", "patch")} <= made  # the test saw the writes
    assert made - grants(role) == set(), f"{role.name} does not allow: {sorted(made - grants(role))}"


AUTOSCALED = {**CANARY, "strategy": {"blueGreen": {"scaleDownDelaySeconds": 0}}, "checks": FAST_CHECKS,
              "serving": {"autoscaling": {"minReplicas": 2, "maxReplicas": 4, "metrics": [
                  {"type": "Resource", "resource": {"name": "cpu", "target": {
                      "type": "Utilization", "averageUtilization": 70}}}]}}}


async def start(scope, run_operator, operator_registry, operator_settings):
    if scope == "cluster-wide":
        await run_operator(operator_registry, settings=operator_settings, clusterwide=True)
        return MANIFESTS / "rbac" / "cluster_role.yaml"
    await run_operator(operator_registry, settings=operator_settings, namespaces=("default",),
                       memo=kopf.Memo(namespaced=True))
    return MANIFESTS / "overlays" / "namespaced" / "role.yaml"


@pytest.mark.parametrize("scope", ["cluster-wide", "namespaced"])
async def test_every_request_of_an_autoscaled_rollout_is_allowed_by_the_rbac(
        run_operator, operator_registry, operator_settings, k8s, kmock, scope):
    role = await start(scope, run_operator, operator_registry, operator_settings)
    async with deployment_controller(k8s), autoscaler_controller(k8s):
        await k8s.create_endpoint("credit", AUTOSCALED, namespace="default")
        await eventually(lambda: status(k8s).get("phase") == "Healthy", timeout=10)
        await k8s.patch_endpoint("credit", {"model": NEW_MODEL}, namespace="default")
        # promoted, and the old slot's autoscaler deleted before it scaled to 0
        await eventually(lambda: status(k8s).get("activeSlot") == "green" and
                         k8s.peek(HPAS, "credit-blue", namespace="default") is None, timeout=10)

    made = operator_requests(kmock)
    assert {("autoscaling", "horizontalpodautoscalers", "patch"), ("autoscaling", "horizontalpodautoscalers", "delete"),
            ("policy", "poddisruptionbudgets", "patch")} <= made  # the test saw the writes
    assert made - grants(role) == set(), f"{role.name} does not allow: {sorted(made - grants(role))}"


@pytest.mark.parametrize("scope", ["cluster-wide", "namespaced"])
async def test_every_request_of_a_batch_schedule_and_its_runs_is_allowed_by_the_rbac(
        run_operator, operator_registry, operator_settings, k8s, kmock, scope):
    from controllers import CRONJOBS, batch_controller
    from test_batch import BATCH_SPEC, runs

    role = await start(scope, run_operator, operator_registry, operator_settings)
    async with deployment_controller(k8s), batch_controller(k8s) as batch:
        await k8s.create_endpoint("credit", BATCH_SPEC, namespace="default")
        await eventually(lambda: k8s.peek(CRONJOBS, "credit-nightly", namespace="default") is not None, timeout=10)
        job = await batch.fire("credit-nightly")
        batch.finish(job, rows=10)
        await eventually(lambda: runs(k8s).get(job, {}).get("outcome") == "Succeeded", timeout=10)
        await k8s.patch_endpoint("credit", {"model": NEW_MODEL}, namespace="default")  # re-pins the CronJob
        await eventually(lambda: status(k8s).get("activeSlot") == "green", timeout=10)
        await k8s.patch_endpoint("credit", {"batch": None}, namespace="default")
        await eventually(lambda: k8s.peek(CRONJOBS, "credit-nightly", namespace="default") is None, timeout=10)

    made = operator_requests(kmock)
    assert {("batch", "cronjobs", "patch"), ("batch", "cronjobs", "delete"), ("batch", "jobs", "watch")} <= made
    assert made - grants(role) == set(), f"{role.name} does not allow: {sorted(made - grants(role))}"


async def test_every_lease_request_of_an_election_is_allowed_by_the_leader_election_role(kmock):
    """The elector's requests, as a leader (create, renew, release) and a follower (reads, take over),
    are all in the operator's namespace and all granted by the leader-election Role."""
    role = MANIFESTS / "operator" / "leader_election_role.yaml"
    timing = ElectionTiming(lease_duration=1, renew_deadline=0.6, retry_period=0.1)
    stores = [LeaseStore(make_api_client(str(kmock.url).rstrip("/")), "default", "slotkeeper-operator", timeout=1)
              for _ in range(2)]
    leader, follower = (LeaderElector(store, identity, timing) for store, identity in zip(stores, ("a_1", "b_1")))
    try:
        await leader.acquire()  # creates the Lease
        holding = asyncio.create_task(leader.hold())
        following = asyncio.create_task(follower.acquire())
        await eventually(lambda: sum(1 for r in list(kmock) if verb(r) == "update") >= 2, timeout=10)  # renewals
        await leader.stop_holding(holding)
        await leader.release()
        await asyncio.wait_for(following, timeout=10)  # takes the released Lease over
    finally:
        for store in stores:
            await store.close()

    leases = [r for r in list(kmock) if r.resource is not None and r.resource.plural == "leases"]
    assert {r.namespace for r in leases} == {"default"}
    made = {(r.resource.group or "", r.resource.plural, verb(r)) for r in leases}
    assert made == {("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")}
    assert made - grants(role) == set(), f"{role.name} does not allow: {sorted(made - grants(role))}"
