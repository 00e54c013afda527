"""Rollouts on a real cluster, with the real operator and serving images, asserting what a user sees:
the ModelEndpoint's status, the endpoint Service's selector, Events, and what an in-cluster client
got back from the endpoint Service while it all happened.

Models come from the demo's file server (manifests/examples/demo/models): score-v1.py and score-v2.py
are good revisions, errors.py loads but answers every request with a 500.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from slotkeeper.render import LABEL_ENDPOINT, LABEL_SLOT

from .kube import OPERATOR_NAMESPACE, OPERATOR_SELECTOR, Cluster, wait_until
from .workloads import model_uri

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

NAME = "credit"
MODEL = "credit"
READY_TIMEOUT = 240  # a slot's pods pulled from the node's cache, started and ready
ROLLOUT_TIMEOUT = 300


def endpoint_spec(models: str, file: str = "score-v1.py", replicas: int = 2,
                  strategy: dict[str, Any] | None = None, checks: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "model": {"name": MODEL, "uri": model_uri(models, file), "format": "score-py"},
        "serving": {"replicas": replicas},
        "strategy": strategy or {"blueGreen": {"autoPromote": True, "scaleDownDelaySeconds": 5}},
        "checks": {"progressDeadlineSeconds": 180, "analysisSeconds": 10, **(checks or {})},
    }


def condition(status: dict[str, Any], type: str) -> dict[str, Any]:
    found = [c for c in status.get("conditions", []) if c["type"] == type]
    assert found, f"no {type} condition in {status.get('conditions')}"
    return found[0]


def selects(cluster: Cluster, namespace: str, slot: str | None) -> bool:
    wanted = {LABEL_ENDPOINT: NAME, **({LABEL_SLOT: slot} if slot else {})}
    return cluster.selector(namespace, NAME) == wanted


def healthy_first_revision(cluster: Cluster, namespace: str, spec: dict[str, Any]) -> str:
    cluster.create_endpoint(namespace, NAME, spec)
    status = cluster.wait_for_phase(namespace, NAME, "Healthy", READY_TIMEOUT)
    return status["stableRevision"]


def promoted_past(revision: str):
    return lambda status: status.get("stableRevision") not in (None, revision)


def test_first_rollout_serves_from_the_blue_slot(cluster, namespace, models, start_client):
    cluster.create_endpoint(namespace, NAME, endpoint_spec(models))

    # status.traffic follows the Service as the operator's watch shows it: a moment after the switch.
    status = cluster.wait_for_phase(namespace, NAME, "Healthy", READY_TIMEOUT,
                                    also=lambda s: s.get("traffic") == {"blue": 100, "green": 0})

    revision = status["stableRevision"]
    assert status["activeSlot"] == "blue"
    assert status["url"] == f"http://{NAME}.{namespace}.svc.cluster.local"
    assert condition(status, "Ready")["status"] == "True"
    assert status["history"][-1]["outcome"] == "Promoted"
    assert selects(cluster, namespace, "blue")
    owner = cluster.deployment(namespace, f"{NAME}-blue").metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid) == ("ModelEndpoint", NAME, cluster.endpoint(namespace, NAME)["metadata"]["uid"])

    client = start_client(namespace, NAME, MODEL, seconds=5)
    log = client.wait_for("the end of its run", lambda log: log.done, timeout=60)
    assert log.errors == []
    assert set(log.versions) == {revision}


def test_blue_green_switch_loses_no_request(cluster, namespace, models, start_client):
    v1 = healthy_first_revision(cluster, namespace, endpoint_spec(models))
    client = start_client(namespace, NAME, MODEL)
    client.wait_for("20 answers from the first revision", lambda log: log.count(v1) >= 20)

    cluster.patch_spec(namespace, NAME, {"model": {"uri": model_uri(models, "score-v2.py")}})

    status = cluster.wait_for_phase(namespace, NAME, "Healthy", ROLLOUT_TIMEOUT, also=promoted_past(v1))
    v2 = status["stableRevision"]
    assert status["activeSlot"] == "green"
    assert selects(cluster, namespace, "green")
    # The old slot scales down after scaleDownDelaySeconds: keep measuring through that too.
    wait_until("the blue slot to scale down",
               lambda: cluster.deployment(namespace, f"{NAME}-blue").spec.replicas == 0, ROLLOUT_TIMEOUT)
    log = client.wait_for("20 answers in a row from the new revision after the switch",
                          lambda log: log.tail_is(v2, 20))
    assert log.errors == [], f"{len(log.errors)} of {len(log.results)} requests failed: {log.errors[:10]}"
    assert log.count(v1) >= 20 and log.count(v2) >= 20
    assert any(e.reason == "TrafficSwitched" for e in cluster.events(namespace, NAME))


def test_crash_looping_candidate_reverts_without_waiting_for_the_deadline(cluster, namespace, models, start_client):
    deadline = 900
    v1 = healthy_first_revision(cluster, namespace, endpoint_spec(models, checks={"progressDeadlineSeconds": deadline}))
    client = start_client(namespace, NAME, MODEL)
    started = time.monotonic()

    # The serving image exits at start on an invalid setting: the candidate's container crash-loops.
    cluster.patch_spec(namespace, NAME, {"serving": {"env": [{"name": "SLOTKEEPER_WORKERS", "value": "0"}]}})

    status = cluster.wait_for_phase(namespace, NAME, "RolledBack", ROLLOUT_TIMEOUT)
    assert time.monotonic() - started < deadline / 2, "the revert waited for the progress deadline"
    rolled_back = condition(status, "RolledBack")
    assert (rolled_back["status"], rolled_back["reason"]) == ("True", "PodFailure")
    assert "CrashLoopBackOff" in rolled_back["message"]
    assert status["history"][-1]["outcome"] == "RolledBack"
    assert status["stableRevision"] == v1 and status["activeSlot"] == "blue"
    assert selects(cluster, namespace, "blue")
    assert any(e.type == "Warning" and e.reason == "RolledBack" for e in cluster.events(namespace, NAME))
    # Traffic never left the stable slot.
    log = client.wait_for("more answers from the stable revision", lambda log: log.tail_is(v1, 20))
    assert log.errors == [], log.errors[:10]


def test_failing_metric_check_reverts_to_the_stable_slot(cluster, namespace, models, start_client):
    v1 = healthy_first_revision(cluster, namespace, endpoint_spec(models))
    client = start_client(namespace, NAME, MODEL)
    client.wait_for("answers from the first revision", lambda log: log.count(v1) >= 20)

    # errors.py loads and becomes ready, then fails every request: only the metric check can tell.
    cluster.patch_spec(namespace, NAME, {
        "model": {"uri": model_uri(models, "errors.py")},
        "checks": {"analysisSeconds": 600, "metrics": [{
            "name": "errors", "source": "pods", "metric": "error_ratio", "max": 0.05,
            "intervalSeconds": 5, "failureLimit": 2}]},
    })

    status = cluster.wait_for_phase(namespace, NAME, "RolledBack", ROLLOUT_TIMEOUT)
    failed = status["history"][-1]
    assert failed["outcome"] == "RolledBack" and failed["revision"] != v1
    reverted = condition(status, "RolledBack")
    assert reverted["status"] == "True"
    assert "error_ratio" in reverted["message"] or "errors" in reverted["message"], reverted
    assert status["stableRevision"] == v1 and selects(cluster, namespace, "blue")
    # The client did reach the bad revision (that is what the check measured), and is served by v1 again.
    log = client.wait_for("the stable revision to answer again", lambda log: log.tail_is(v1, 20))
    assert any(error.startswith("http-500") for error in log.errors), "the candidate never got traffic"


def test_canary_traffic_follows_ready_replicas(cluster, namespace, models, start_client):
    canary = {"canary": {"steps": [{"setWeight": 25}, {"pause": {}}], "scaleDownDelaySeconds": 5}}
    v1 = healthy_first_revision(cluster, namespace, endpoint_spec(models, replicas=3, strategy=canary))
    client = start_client(namespace, NAME, MODEL)

    cluster.patch_spec(namespace, NAME, {"model": {"uri": model_uri(models, "score-v2.py")}})

    def at_the_pause() -> dict[str, Any] | None:
        status = cluster.current_status(namespace, NAME)
        slots, traffic = status.get("slots", {}), status.get("traffic", {})
        ready = {slot: slots.get(slot, {}).get("readyReplicas", 0) for slot in ("blue", "green")}
        if ready["green"] >= 1 and ready["blue"] >= 3 and traffic.get("green", 0) > 0:
            return status
        return None

    status = wait_until("the canary step at 25 %", at_the_pause, ROLLOUT_TIMEOUT,
                        describe=lambda: cluster.describe(namespace, NAME))
    ready = {slot: status["slots"][slot]["readyReplicas"] for slot in ("blue", "green")}
    share = 100 * ready["green"] / (ready["blue"] + ready["green"])
    assert abs(status["traffic"]["green"] - share) <= 1, (status["traffic"], ready)
    assert status["traffic"]["blue"] + status["traffic"]["green"] == 100
    assert (ready, status["traffic"]) == ({"blue": 3, "green": 1}, {"blue": 75, "green": 25})
    assert selects(cluster, namespace, None), "during a canary step the endpoint selects both slots"
    # What the Service really sends traffic to (its Endpoints), not only what the status says.
    wait_until("the Service's ready endpoints to give the reported shares",
               lambda: cluster.served_shares(namespace, NAME) == status["traffic"], 60,
               describe=lambda: f"served {cluster.served_shares(namespace, NAME)}, status {status['traffic']}")
    log = client.wait_for("answers from both revisions", lambda log: log.count(v1) >= 5 and len(set(log.versions)) == 2)
    v2 = next(version for version in log.versions if version != v1)

    cluster.slotkeeper("promote", NAME, "-n", namespace)

    status = cluster.wait_for_phase(namespace, NAME, "Healthy", ROLLOUT_TIMEOUT,
                                    also=lambda s: promoted_past(v1)(s) and s.get("traffic") == {"blue": 0, "green": 100})
    assert status["stableRevision"] == v2
    wait_until("the Service to send everything to green",
               lambda: cluster.served_shares(namespace, NAME) == {"blue": 0, "green": 100}, 60,
               describe=lambda: str(cluster.served_shares(namespace, NAME)))
    client.wait_for("the promoted revision only", lambda log: log.tail_is(v2, 20))


def test_abort_switches_traffic_back_at_once(cluster, namespace, models, start_client):
    v1 = healthy_first_revision(cluster, namespace, endpoint_spec(models, checks={"analysisSeconds": 900}))
    client = start_client(namespace, NAME, MODEL)
    cluster.patch_spec(namespace, NAME, {"model": {"uri": model_uri(models, "score-v2.py")}})
    wait_until("traffic to move to the candidate's slot", lambda: selects(cluster, namespace, "green"),
               ROLLOUT_TIMEOUT, describe=lambda: cluster.describe(namespace, NAME))
    client.wait_for("answers from the candidate", lambda log: len(set(log.versions)) == 2)

    cluster.slotkeeper("abort", NAME, "-n", namespace)

    status = cluster.wait_for_phase(namespace, NAME, "RolledBack", 60)
    assert selects(cluster, namespace, "blue")
    assert status["stableRevision"] == v1 and status["activeSlot"] == "blue"
    last = status["history"][-1]
    assert last["outcome"] == "RolledBack" and "abort" in f"{last['reason']} {last.get('message', '')}".lower(), last
    log = client.wait_for("the stable revision again", lambda log: log.tail_is(v1, 20))
    assert log.errors == [], log.errors[:10]


def test_operator_restart_mid_rollout_resumes_it(cluster, namespace, models, start_client):
    v1 = healthy_first_revision(cluster, namespace, endpoint_spec(models, checks={"analysisSeconds": 45}))
    client = start_client(namespace, NAME, MODEL)
    cluster.patch_spec(namespace, NAME, {"model": {"uri": model_uri(models, "score-v2.py")}})
    wait_until("the rollout to be analysing, traffic on the candidate",
               lambda: selects(cluster, namespace, "green"), ROLLOUT_TIMEOUT,
               describe=lambda: cluster.describe(namespace, NAME))
    candidate = cluster.status(namespace, NAME)["candidateRevision"]

    old = [pod.metadata.name for pod in cluster.core.list_namespaced_pod(
        OPERATOR_NAMESPACE, label_selector=OPERATOR_SELECTOR).items]
    for pod in old:
        cluster.core.delete_namespaced_pod(pod, OPERATOR_NAMESPACE)
    wait_until("a new operator pod to be ready",
               lambda: [p for p in cluster.ready_pods(OPERATOR_NAMESPACE, OPERATOR_SELECTOR)
                        if p.metadata.name not in old], 180)

    status = cluster.wait_for_phase(namespace, NAME, "Healthy", ROLLOUT_TIMEOUT, also=promoted_past(v1))
    assert status["stableRevision"] == candidate and status["activeSlot"] == "green"
    promotions = [h for h in status["history"] if h["revision"] == candidate and h["outcome"] == "Promoted"]
    assert len(promotions) == 1, status["history"]
    # Two TrafficSwitched Events: the first revision selected (slot none -> blue), then the candidate
    # (blue -> green). A third would mean the resumed rollout switched again.
    switches = [e for e in cluster.events(namespace, NAME) if e.reason == "TrafficSwitched"]
    assert len(switches) == 2, [e.message for e in switches]
    log = client.wait_for("the new revision", lambda log: log.tail_is(candidate, 20))
    assert log.errors == [], log.errors[:10]


def test_grpc_port_on_the_services_follows_the_spec(cluster, namespace, models):
    services = (NAME, f"{NAME}-blue", f"{NAME}-green")
    spec = endpoint_spec(models)
    spec["serving"]["grpcPort"] = 9000
    v1 = healthy_first_revision(cluster, namespace, spec)
    for service in services:
        wait_until(f"Service {service} to carry the grpc port",
                   lambda: cluster.service_ports(namespace, service).get("grpc") == 9000, 30)
    # targetPort "grpc" resolves on the serving pods: the endpoint Service has ready gRPC addresses.
    wait_until("ready addresses behind the endpoint Service's grpc port",
               lambda: "grpc" in cluster.ready_port_names(namespace, NAME), 60)

    cluster.patch_spec(namespace, NAME, {"serving": {"grpcPort": None}})
    cluster.wait_for_phase(namespace, NAME, "Healthy", ROLLOUT_TIMEOUT, also=promoted_past(v1))
    for service in services:
        wait_until(f"Service {service} to lose the grpc port",
                   lambda: set(cluster.service_ports(namespace, service)) == {"http"}, 30)
    assert selects(cluster, namespace, "green")
