"""Two ``slotkeeper run`` processes with leader election against the API double: one acts, the other
waits. The leader is killed (SIGKILL: no release, no cleanup) at the points of a blue/green rollout
and of a revert that matter for a takeover, and the follower must finish exactly as an uninterrupted
run does: same status, same history, no traffic switch made twice (counted at the API).

Each process has its own bearer token, so the double's request log tells them apart. Timings are
short (lease 5 s, renew deadline 4 s, retry 0.5 s); waits are bounded conditions, never assertions
on how long something took."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import kmock as kmock_lib
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kmock_cluster import DEPLOYMENTS, SERVICES, eventually
from test_console_script import SCRIPT
from test_operator import NEW_MODEL, SLOT, SPEC, deployment, ready, selector, status, switched_selector
from test_rbac_requests import MANIFESTS, grants, operator_requests

REVISION = "slotkeeper.io/revision"
# Short, but long enough that a leader starved of CPU on a loaded machine does not lose the Lease.
LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD = 5, 4, 0.5
TAKEOVER_WAIT = LEASE_DURATION + 15  # a bounded wait for the follower (kopf's start included), not a figure
ELECTION = ["--leader-elect", "--lease-namespace", "default", "--lease-name", "slotkeeper-operator",
            "--lease-duration", str(LEASE_DURATION), "--renew-deadline", str(RENEW_DEADLINE),
            "--retry-period", str(RETRY_PERIOD)]
LEASES = kmock_lib.resource("coordination.k8s.io", "v1", "leases")
WRITES = ("POST", "PUT", "PATCH", "DELETE")


@dataclass
class Replica:
    name: str
    token: str
    process: asyncio.subprocess.Process
    log_path: Path
    liveness: str
    metrics: str

    def output(self) -> str:
        return self.log_path.read_text()

    def sent(self, request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    def requests(self, kmock) -> list:
        return [r for r in list(kmock) if self.sent(r)]


async def start_replica(tmp_path: Path, kmock, name: str) -> Replica:
    token = f"token-of-{name}"
    kubeconfig = tmp_path / f"{name}.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "double",
        "clusters": [{"name": "double", "cluster": {"server": str(kmock.url).rstrip("/")}}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": "double", "context": {"cluster": "double", "user": name, "namespace": "default"}}],
    }))
    log_path = tmp_path / f"{name}.log"
    liveness_port, metrics_port = free_port(), free_port()
    liveness = f"http://127.0.0.1:{liveness_port}/healthz"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            SCRIPT, "run", "--namespace", "default", "--slot-access", "direct", "--liveness", liveness, *ELECTION,
            "--metrics-bind-address", f"127.0.0.1:{metrics_port}",
            "--kubeconfig", str(kubeconfig), stdout=log, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "POD_NAME": name})
    return Replica(name, token, process, log_path, liveness, f"http://127.0.0.1:{metrics_port}/metrics")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def leader_gauge(replica: Replica) -> float | None:
    """slotkeeper_leader as the replica's /metrics shows it; None: no answer (yet)."""
    try:
        async with aiohttp.ClientSession() as session, session.get(replica.metrics) as response:
            text = await response.text()
    except aiohttp.ClientError:
        return None
    return next((sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                 if sample.name == "slotkeeper_leader"), None)


async def alive(replica: Replica) -> dict | None:
    """The replica's liveness answer (a follower's own, kopf's on the leader); None: no answer."""
    try:
        async with aiohttp.ClientSession() as session, session.get(replica.liveness) as response:
            return await response.json(content_type=None) if response.status == 200 else None
    except aiohttp.ClientError:
        return None


async def eventually_async(probe, wanted, message: str, timeout: float = TAKEOVER_WAIT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (value := await probe()) != wanted:
        assert asyncio.get_running_loop().time() < deadline, f"Not satisfied: {message}; last value: {value!r}"
        await asyncio.sleep(0.1)


def method(request) -> str:
    return (request.method.value if hasattr(request.method, "value") else str(request.method)).upper()


def is_lease(request) -> bool:
    return request.resource is not None and request.resource.plural == "leases"


def holder(k8s) -> str:
    lease = k8s.peek(LEASES, "slotkeeper-operator", namespace="default") or {}
    return (lease.get("spec") or {}).get("holderIdentity") or ""


def leads(k8s, replica: Replica) -> bool:
    return holder(k8s).startswith(f"{replica.name}_")


def selector_switches(kmock) -> list[str]:
    """Every traffic switch the API received, repeats included (a doubled switch shows as two)."""
    return [switched_selector(r.data)[SLOT] for r in kmock[kmock_lib.method.PATCH, SERVICES, kmock_lib.name("credit")]
            if switched_selector(r.data) and switched_selector(r.data).get(SLOT)]


def first_lease_write(replica: Replica, kmock, after: int = 0) -> int:
    """The position in the API's log of the replica's first Lease write after ``after`` (taking it over)."""
    log = list(kmock)
    return next(i for i, r in enumerate(log) if i > after and is_lease(r) and method(r) in WRITES and replica.sent(r))


async def stop(replica: Replica) -> int:
    if replica.process.returncode is None:
        replica.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(replica.process.wait(), timeout=30)
        except asyncio.TimeoutError:
            replica.process.kill()
            await replica.process.wait()
    return replica.process.returncode


@pytest.fixture()
async def replicas(tmp_path, kmock, k8s):
    """``start()``: replica a, then b; returns (a, b) once a leads and b follows. All are stopped at the end."""
    started: list[Replica] = []

    async def start() -> tuple[Replica, Replica]:
        # One after the other, so that b never races a for the create: everything b sends is a follower's.
        leader = await start_replica(tmp_path, kmock, "a")
        started.append(leader)
        await eventually(lambda: leads(k8s, leader), timeout=TAKEOVER_WAIT, message="a leads")
        follower = await start_replica(tmp_path, kmock, "b")
        started.append(follower)
        await eventually(lambda: f"following the leader {holder(k8s)}" in follower.output(), timeout=30,
                         message="b follows")
        return leader, follower

    yield start
    for replica in started:
        await stop(replica)
        assert "Traceback" not in replica.output(), replica.output()


async def healthy_v1(k8s, spec) -> None:
    await k8s.create_endpoint("credit", spec, namespace="default")
    await ready(k8s, "blue")
    await eventually(lambda: status(k8s).get("phase") == "Healthy", timeout=30, message="v1 Healthy")


async def kill(replica: Replica) -> None:
    replica.process.kill()  # SIGKILL: the Lease stays held until it expires
    await replica.process.wait()


async def promoted(k8s) -> None:
    await eventually(lambda: status(k8s).get("activeSlot") == "green" and status(k8s).get("phase") == "Healthy"
                     and deployment(k8s, "blue")["spec"]["replicas"] == 0,
                     timeout=TAKEOVER_WAIT + 30, message="v2 promoted by the new leader")


# ----------------------------------------------------------------------------------- the baseline


async def test_one_leader_acts_and_the_follower_makes_no_write_then_a_sigterm_hands_over_at_once(
        replicas, k8s, kmock):
    """The uninterrupted run the kills are compared with: its numbers are the ones asserted there."""
    a, b = await replicas()
    assert await alive(b) == {"leader": False}  # the kubelet's probe finds the follower alive
    # Both replicas serve /metrics, so a scraper sees who leads (and an alert sees "no leader").
    await eventually_async(lambda: leader_gauge(a), 1.0, "a's /metrics says it leads")
    assert await leader_gauge(b) == 0.0
    spec = {**SPEC, "checks": {"progressDeadlineSeconds": 60, "analysisSeconds": 1}}
    await healthy_v1(k8s, spec)
    await k8s.patch_endpoint("credit", {"model": NEW_MODEL}, namespace="default")
    await ready(k8s, "green")
    await promoted(k8s)
    assert [h["outcome"] for h in status(k8s)["history"]] == ["Promoted", "Promoted"]
    assert selector_switches(kmock) == ["blue", "green"]

    assert [(method(r), r.resource.plural if r.resource else None) for r in b.requests(kmock)
            if method(r) in WRITES] == [], b.output()  # the follower wrote nothing at all
    assert {r.resource.plural for r in b.requests(kmock) if r.resource} == {"leases"}  # nor watched anything
    assert any(method(r) == "PATCH" for r in a.requests(kmock))

    assert await stop(a) == 0, a.output()  # a graceful stop releases the Lease ...
    assert "released the Lease" in a.output(), a.output()
    await eventually(lambda: leads(k8s, b), timeout=LEASE_DURATION + 10, message="b leads")
    await eventually_async(lambda: leader_gauge(b), 1.0, "b's /metrics says it leads")
    # ... and b took it at its first read after the release, not after a lease duration (that would
    # have taken LEASE_DURATION / RETRY_PERIOD reads): counted in requests, not in seconds.
    log = list(kmock)
    released = max(i for i, r in enumerate(log) if is_lease(r) and method(r) == "PUT" and a.sent(r))
    taken = first_lease_write(b, kmock, after=released)
    assert [method(r) for r in log[released:taken] if b.sent(r)] == ["GET"], b.output()
    await k8s.patch_endpoint("credit", {"serving": {"replicas": 3}}, namespace="default")
    await eventually(lambda: deployment(k8s, "green")["spec"]["replicas"] == 3, timeout=30, message="b acts")
    assert await alive(b) not in (None, {"leader": False})  # kopf's probe now, on the same port
    # Everything both processes asked for, the Lease included, is granted by the namespaced install.
    allowed = grants(MANIFESTS / "overlays" / "namespaced" / "role.yaml") | grants(
        MANIFESTS / "operator" / "leader_election_role.yaml")
    made = operator_requests(kmock, sent_by=lambda r: a.sent(r) or b.sent(r))
    assert ("coordination.k8s.io", "leases", "update") in made and made - allowed == set(), sorted(made - allowed)
    assert selector_switches(kmock) == ["blue", "green"]


# ------------------------------------------------------------------------------- kills mid-rollout


# Not "during analysis": that resumes from status like any restart (tests/integration/test_restarts.py);
# these two are where a takeover could double or lose the switch.
@pytest.mark.parametrize("kill_at", ["candidate applied", "switch sent"])
async def test_the_follower_finishes_a_rollout_whose_leader_was_killed(replicas, k8s, kmock, kill_at):
    a, b = await replicas()
    await healthy_v1(k8s, {**SPEC, "checks": {"progressDeadlineSeconds": 60, "analysisSeconds": 2}})
    await k8s.patch_endpoint("credit", {"model": NEW_MODEL}, namespace="default")
    await eventually(lambda: deployment(k8s, "green"), timeout=30, message="the candidate applied")
    if kill_at == "candidate applied":
        await kill(a)
        await ready(k8s, "green")
    elif kill_at == "switch sent":
        # The write-ahead status says "switching"; the switch request reaches the API and is held
        # unanswered (never stored) until the leader dies.
        held = kmock.fail(kmock_lib.method.PATCH, SERVICES, kmock_lib.name("credit"), status=500, delay=60)
        await ready(k8s, "green")
        await eventually(lambda: held.hits, timeout=30, message="the switch sent")
        await kill(a)
        held.cancel()
        assert selector(k8s)[SLOT] == "blue"
    await eventually(lambda: leads(k8s, b), timeout=TAKEOVER_WAIT, message="b takes over")

    await promoted(k8s)
    assert selector(k8s)[SLOT] == "green"
    assert [h["outcome"] for h in status(k8s)["history"]] == ["Promoted", "Promoted"]
    revisions = [h["revision"] for h in status(k8s)["history"]]
    assert len(set(revisions)) == 2  # no history entry twice
    # As uninterrupted: blue once, green once (twice when the first was held and never stored).
    expected = ["blue", "green", "green"] if kill_at == "switch sent" else ["blue", "green"]
    assert selector_switches(kmock) == expected


# -------------------------------------------------------------------------------- kills mid-revert


@pytest.mark.parametrize("kill_at", ["revert recorded", "revert switch sent"])
async def test_the_follower_finishes_a_revert_whose_leader_was_killed(replicas, k8s, kmock, kill_at):
    a, b = await replicas()
    await healthy_v1(k8s, {**SPEC, "checks": {"progressDeadlineSeconds": 60, "analysisSeconds": 600}})
    await k8s.patch_endpoint("credit", {"model": NEW_MODEL}, namespace="default")
    await ready(k8s, "green")
    await eventually(lambda: selector(k8s)[SLOT] == "green", timeout=30, message="switched to green")
    revision = deployment(k8s, "green")["spec"]["template"]["metadata"]["labels"][REVISION]
    held = None
    if kill_at == "revert switch sent":
        held = kmock.fail(kmock_lib.method.PATCH, SERVICES, kmock_lib.name("credit"), status=500, delay=60)
    await k8s.create_pod("credit-green-1", namespace="default", waiting_reason="CrashLoopBackOff", labels={
        "app.kubernetes.io/managed-by": "slotkeeper", "slotkeeper.io/endpoint": "credit", SLOT: "green",
        REVISION: revision})
    if held is not None:
        await eventually(lambda: held.hits, timeout=30, message="the revert's switch sent")
    else:  # the revert is written ahead to status; its switch may or may not have gone out yet
        await eventually(lambda: status(k8s).get("phase") == "RolledBack", timeout=30, message="the revert recorded")
    await kill(a)
    if held is not None:
        held.cancel()
    await eventually(lambda: leads(k8s, b), timeout=TAKEOVER_WAIT, message="b takes over")

    await eventually(lambda: status(k8s).get("phase") == "RolledBack" and selector(k8s)[SLOT] == "blue",
                     timeout=TAKEOVER_WAIT + 30, message="reverted by the new leader")
    assert [h["outcome"] for h in status(k8s)["history"]] == ["Promoted", "RolledBack"]
    # As uninterrupted: blue, green, blue (the revert's switch twice when the first was held, never stored).
    expected = ["blue", "green", "blue", "blue"] if held is not None else ["blue", "green", "blue"]
    assert selector_switches(kmock) == expected


# ------------------------------------------------------------------------- a leader cut off the API


async def test_a_leader_that_cannot_renew_stops_writing_before_the_follower_takes_over(replicas, k8s, kmock):
    a, b = await replicas()
    await healthy_v1(k8s, {**SPEC, "checks": {"progressDeadlineSeconds": 60, "analysisSeconds": 1}})
    # From now on the API holds a's Lease requests unanswered; everything else of a still works, and
    # someone keeps scaling the serving slot behind its back, so a would go on writing (scaling it
    # back) if it did not stop by itself.
    cut = len(list(kmock))
    kmock.fail(lambda request: is_lease(request) and a.sent(request),
               status=500, delay=60, times=None)

    async def meddle() -> None:
        while True:
            await k8s.patch(DEPLOYMENTS, "credit-blue", {"spec": {"replicas": 5}}, namespace="default")
            await asyncio.sleep(0.2)

    meddling = asyncio.create_task(meddle())
    try:
        await eventually(lambda: a.process.returncode is not None, timeout=RENEW_DEADLINE + 10, message="a leaves")
    finally:
        meddling.cancel()
    assert a.process.returncode == 1
    assert "lost the leadership: no renewal within the renew deadline" in a.output()
    await eventually(lambda: leads(k8s, b), timeout=TAKEOVER_WAIT, message="b takes over")
    await eventually(lambda: deployment(k8s, "blue")["spec"]["replicas"] == 2, timeout=30, message="b scales back")
    await k8s.patch_endpoint("credit", {"model": NEW_MODEL}, namespace="default")
    await ready(k8s, "green")
    await promoted(k8s)

    log = list(kmock)
    takeover = first_lease_write(b, kmock, after=cut)
    a_writes = [i for i, r in enumerate(log) if method(r) in WRITES and a.sent(r)]
    assert any(i > cut for i in a_writes)  # a did act while it could not renew ...
    assert max(a_writes) < takeover  # ... and nothing of a's reached the API after b took the Lease
    assert [h["outcome"] for h in status(k8s)["history"]] == ["Promoted", "Promoted"]
