"""The operator's /metrics over real HTTP (``--metrics-bind-address``), scraped while the real operator
takes an endpoint through a rollout and a revert against the API double."""

from __future__ import annotations

import socket

import aiohttp
import kopf
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controllers import deployment_controller
from kmock_cluster import MODELENDPOINTS, eventually
from test_console_script import start_operator, stop_operator
from test_operator import FAST_CHECKS, NEW_MODEL, SLOT, SPEC, selector, status

THIRD_MODEL = {"name": "credit", "uri": "file:///models/credit/3/model.joblib"}


@pytest.fixture()
def operator_memo() -> kopf.Memo:
    return kopf.Memo(metrics_bind_address="127.0.0.1:0")  # any free port


def served_at(memo: kopf.Memo) -> tuple[str, int]:
    return memo.metrics_server.addresses[0][:2]


async def scrape(address: tuple[str, int]) -> dict[tuple[str, frozenset], float]:
    host, port = address
    async with aiohttp.ClientSession() as session, session.get(f"http://{host}:{port}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def credit(**labels: str) -> frozenset:
    return frozenset({"namespace": "default", "name": "credit", **labels}.items())


async def eventually_scraped(address: tuple[str, int], predicate, message: str) -> dict:
    """Wait until a scrape satisfies ``predicate``; return that scrape."""
    found: dict = {}

    async def check() -> bool:
        found.clear()
        found.update(await scrape(address))
        return predicate(found)
    await eventually(check, timeout=10, message=message)
    return found


async def test_metrics_show_a_rollout_and_a_revert(operator, operator_memo, k8s):
    async with deployment_controller(k8s):  # plays the Deployment controller: slots get ready
        await k8s.create_endpoint("credit", SPEC, namespace="default")
        seen = await eventually_scraped(served_at(operator_memo), lambda m: m.get(
            ("slotkeeper_traffic_weight_ratio", credit(slot="blue"))) == 1, "blue has all traffic")
        assert seen[("slotkeeper_endpoints", frozenset({"phase": "Healthy"}.items()))] == 1
        assert seen[("slotkeeper_leader", frozenset())] == 1  # standalone: the leader from the start
        assert seen[("slotkeeper_reconcile_passes_total", frozenset({"result": "success"}.items()))] > 0

        # A rollout: v2 promoted into green.
        await k8s.patch_endpoint("credit", {"model": NEW_MODEL}, namespace="default")
        await eventually(lambda: status(k8s).get("activeSlot") == "green" and status(k8s).get("phase") == "Healthy",
                         message="v2 promoted")
        await eventually_scraped(served_at(operator_memo), lambda m: m.get(
            ("slotkeeper_traffic_weight_ratio", credit(slot="green"))) == 1, "green has all traffic")

        # A revert after traffic moved: v3 into blue, switched, then aborted during its analysis.
        await k8s.patch_endpoint("credit", {"model": THIRD_MODEL, "checks": {**FAST_CHECKS, "analysisSeconds": 600}},
                                 namespace="default")
        await eventually(lambda: selector(k8s)[SLOT] == "blue", message="v3 switched in")
        seen = await eventually_scraped(served_at(operator_memo), lambda m: (
            "slotkeeper_rollout_started_timestamp_seconds", credit()) in m, "a rollout under way")
        await k8s.patch(MODELENDPOINTS, "credit", {"metadata": {"annotations": {"slotkeeper.io/abort": "t1"}}},
                        namespace="default")
        await eventually(lambda: selector(k8s)[SLOT] == "green", message="traffic back on stable")

        seen = await eventually_scraped(served_at(operator_memo), lambda m: m.get(
            ("slotkeeper_endpoints", frozenset({"phase": "RolledBack"}.items()))) == 1, "the endpoint RolledBack")
        rollouts = {dict(labels)["outcome"] + "/" + dict(labels)["reason"]: value
                    for (name, labels), value in seen.items() if name == "slotkeeper_rollouts_total"}
        assert rollouts == {"Promoted/FirstRevision": 1, "Promoted/AnalysisPassed": 1, "RolledBack/Aborted": 1}
        assert seen[("slotkeeper_revert_duration_seconds_count", frozenset({"reason": "Aborted"}.items()))] == 1
        assert ("slotkeeper_rollout_started_timestamp_seconds", credit()) not in seen

    await k8s.delete(MODELENDPOINTS, "credit", namespace="default")
    seen = await eventually_scraped(served_at(operator_memo), lambda m: not any(
        ("name", "credit") in labels for _, labels in m), "the deleted endpoint's series are gone")
    assert sum(value for (name, _), value in seen.items() if name == "slotkeeper_endpoints") == 0
    assert seen[("slotkeeper_rollouts_total", frozenset({"outcome": "RolledBack", "reason": "Aborted"}.items()))] == 1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_the_console_script_serves_metrics_on_the_bind_address(kmock, k8s, tmp_path):
    port = free_port()
    process, log = await start_operator(tmp_path, kmock, "--namespace", "default", "--slot-access", "direct",
                                        "--metrics-bind-address", f"127.0.0.1:{port}")
    try:
        async with deployment_controller(k8s):
            await k8s.create_endpoint("credit", SPEC, namespace="default")
            await eventually(lambda: status(k8s).get("phase") == "Healthy", timeout=60, message="Healthy")
        seen = await eventually_scraped(("127.0.0.1", port), lambda m: m.get(
            ("slotkeeper_endpoints", frozenset({"phase": "Healthy"}.items()))) == 1, "scraped from the process")
        assert seen[("slotkeeper_leader", frozenset())] == 1
        # every owned kind listed (HTTPRoutes too: this double serves them), as the installed operator reports it
        listed = {dict(labels)["resource"]: value for (name, labels), value in seen.items()
                  if name == "slotkeeper_watch_listed"}
        assert listed == dict.fromkeys(("deployments", "pods", "services", "horizontalpodautoscalers",
                                        "poddisruptionbudgets", "httproutes", "jobs"), 1)
    finally:
        await stop_operator(process, log, tmp_path)


async def test_the_console_script_refuses_a_bind_address_without_a_port(tmp_path, kmock):
    process, log = await start_operator(tmp_path, kmock, "--metrics-bind-address", "8081")
    await process.wait()
    log.close()
    assert process.returncode == 2
    assert "is not [host]:port or 0" in (tmp_path / "operator.log").read_text()

