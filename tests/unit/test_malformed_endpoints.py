"""More than fifty malformed ModelEndpoints. Each is refused by the CRD's schema or CEL rules (evaluated here
with jsonschema and the conformant common-expression-language) with a message naming the field; and
should one reach the operator anyway (a skipped or older CRD), it creates nothing and marks the
endpoint Degraded, naming the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from slotkeeper.actions import ApplyDeployment
from slotkeeper.reconciler import EndpointReconciler, ObservedSources

from .cel_helpers import schema_errors

GOOD: dict[str, Any] = {
    "model": {"name": "credit", "uri": "file:///models/credit/7/model.joblib", "format": "sklearn"},
    "serving": {"replicas": 2, "port": 8080},
    "strategy": {"blueGreen": {"autoPromote": True, "scaleDownDelaySeconds": 60}},
    "checks": {"progressDeadlineSeconds": 300, "analysisSeconds": 120,
               "validation": [{"name": "smoke", "request": {"inputs": []}, "expect": {"status": 200}}],
               "metrics": [{"name": "errors", "source": "pods", "metric": "error_ratio", "max": 0.05}]},
}
HUGE = "x" * 5000
AUTOSCALING = {"minReplicas": 2, "maxReplicas": 10, "metrics": [
    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]}


def mutate(path: str, value: Any) -> dict[str, Any]:
    """GOOD with the value at a dotted path replaced (``...`` deletes the key)."""
    spec = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node: Any = spec
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is ...:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return spec


MALFORMED = {
    # missing fields
    "no model": (mutate("model", ...), "spec"),
    "no model name": (mutate("model.name", ...), "spec.model"),
    "no model uri": (mutate("model.uri", ...), "spec.model"),
    "validation without name": (mutate("checks.validation.0.name", ...), "spec.checks.validation"),
    "validation without request": (mutate("checks.validation.0.request", ...), "spec.checks.validation"),
    "metric without name": (mutate("checks.metrics.0.name", ...), "spec.checks.metrics"),
    "metric without source": (mutate("checks.metrics.0.source", ...), "spec.checks.metrics"),
    "pods check without metric": (mutate("checks.metrics.0.metric", ...), "spec.checks.metrics"),
    "metric without threshold": (mutate("checks.metrics.0.max", ...), "spec.checks.metrics"),
    "canary without steps": (mutate("strategy", {"canary": {}}), "spec.strategy.canary"),
    "env without name": (mutate("serving.env", [{"value": "1"}]), "spec.serving.env"),
    # wrong types
    "model is a string": (mutate("model", "credit"), "spec.model"),
    "uri is a number": (mutate("model.uri", 7), "spec.model.uri"),
    "replicas is a string": (mutate("serving.replicas", "two"), "spec.serving.replicas"),
    "replicas is a float": (mutate("serving.replicas", 1.5), "spec.serving.replicas"),
    "port is a string": (mutate("serving.port", "http"), "spec.serving.port"),
    "env is an object": (mutate("serving.env", {"A": "1"}), "spec.serving.env"),
    "env value is a number": (mutate("serving.env", [{"name": "A", "value": 1}]), "spec.serving.env"),
    "autoPromote is a string": (mutate("strategy.blueGreen.autoPromote", "yes"), "spec.strategy.blueGreen"),
    "steps is an object": (mutate("strategy", {"canary": {"steps": {"setWeight": 10}}}), "spec.strategy.canary"),
    "max is a string": (mutate("checks.metrics.0.max", "5%"), "spec.checks.metrics"),
    "validation is an object": (mutate("checks.validation", {"name": "x"}), "spec.checks.validation"),
    "paused is a string": (mutate("paused", "true"), "spec.paused"),
    "history limit is a string": (mutate("revisionHistoryLimit", "ten"), "spec.revisionHistoryLimit"),
    "expected status is a string": (mutate("checks.validation.0.expect", {"status": "ok"}), "spec.checks.validation"),
    # out of range
    "zero replicas": (mutate("serving.replicas", 0), "spec.serving.replicas"),
    "too many replicas": (mutate("serving.replicas", 101), "spec.serving.replicas"),
    "port zero": (mutate("serving.port", 0), "spec.serving.port"),
    "port too high": (mutate("serving.port", 65536), "spec.serving.port"),
    "negative deadline": (mutate("checks.progressDeadlineSeconds", -1), "spec.checks.progressDeadlineSeconds"),
    "negative analysis": (mutate("checks.analysisSeconds", -5), "spec.checks.analysisSeconds"),
    "weight above 100": (mutate("strategy", {"canary": {"steps": [{"setWeight": 101}]}}), "spec.strategy.canary"),
    "negative weight": (mutate("strategy", {"canary": {"steps": [{"setWeight": -1}]}}), "spec.strategy.canary"),
    "negative pause": (mutate("strategy", {"canary": {"steps": [{"pause": {"seconds": -1}}]}}), "spec.strategy"),
    "interval zero": (mutate("checks.metrics.0.intervalSeconds", 0), "spec.checks.metrics"),
    "failure limit zero": (mutate("checks.metrics.0.failureLimit", 0), "spec.checks.metrics"),
    "history limit zero": (mutate("revisionHistoryLimit", 0), "spec.revisionHistoryLimit"),
    "expected status 99": (mutate("checks.validation.0.expect", {"status": 99}), "spec.checks.validation"),
    "negative scale-down delay": (mutate("strategy.blueGreen.scaleDownDelaySeconds", -1), "spec.strategy"),
    # rules across fields
    "both strategies": (mutate("strategy", {"blueGreen": {}, "canary": {"steps": [{"setWeight": 5}]}}),
                        "spec.strategy"),
    "no strategy at all": (mutate("strategy", {}), "spec.strategy"),
    "step with weight and pause": (mutate("strategy", {"canary": {"steps": [{"setWeight": 5, "pause": {}}]}}),
                                   "spec.strategy.canary.steps"),
    "empty step": (mutate("strategy", {"canary": {"steps": [{}]}}), "spec.strategy.canary.steps"),
    "unknown check source": (mutate("checks.metrics.0.source", "statsd"), "spec.checks.metrics"),
    "unknown pods metric": (mutate("checks.metrics.0.metric", "accuracy"), "spec.checks.metrics"),
    "prometheus without query": (mutate("checks.metrics.0", {"name": "p", "source": "prometheus",
                                                              "address": "http://prom:9090", "max": 1}),
                                 "spec.checks.metrics"),
    "min above max": (mutate("checks.metrics.0.min", 0.5), "spec.checks.metrics"),
    "env value and valueFrom": (mutate("serving.env", [{"name": "A", "value": "1", "valueFrom": {}}]),
                                "spec.serving.env"),
    "pvc uri without path": (mutate("model.uri", "pvc://models"), "spec.model"),
    # huge strings
    "huge model uri": (mutate("model.uri", "file:///" + HUGE), "spec.model.uri"),
    "huge model name": (mutate("model.name", HUGE), "spec.model.name"),
    "huge image": (mutate("serving.image", HUGE), "spec.serving.image"),
    "huge prometheus query": (mutate("checks.metrics.0", {"name": "p", "source": "prometheus", "max": 1,
                                                          "address": "http://prom:9090", "query": HUGE * 2}),
                              "spec.checks.metrics"),
    "bad model format": (mutate("model.format", "onnx"), "spec.model.format"),
    "bad uri scheme": (mutate("model.uri", "s3://bucket/model.joblib"), "spec.model.uri"),
    # quantities the apiserver would refuse only in the Deployment (400 on create, 422 on a patch)
    "cpu request is lots": (mutate("serving.resources", {"requests": {"cpu": "lots"}}),
                            "spec.serving.resources.requests.cpu"),
    "memory limit in Gb": (mutate("serving.resources", {"limits": {"memory": "1Gb"}}),
                           "spec.serving.resources.limits.memory"),
    "negative cpu request": (mutate("serving.resources", {"requests": {"cpu": "-500m"}}),
                             "spec.serving.resources.requests.cpu"),
    "negative integer quantity": (mutate("serving.resources", {"limits": {"cpu": -1}}),
                                  "spec.serving.resources.limits.cpu"),
    "empty quantity": (mutate("serving.resources", {"requests": {"memory": ""}}),
                       "spec.serving.resources.requests.memory"),
    "quantity is a float": (mutate("serving.resources", {"requests": {"cpu": 1.5}}),
                            "spec.serving.resources.requests.cpu"),
    "quantity is a boolean": (mutate("serving.resources", {"limits": {"nvidia.com/gpu": True}}),
                              "spec.serving.resources.limits.nvidia.com/gpu"),
    "huge quantity": (mutate("serving.resources", {"limits": {"memory": "1" * 65}}),
                      "spec.serving.resources.limits.memory"),
    "too many resources": (mutate("serving.resources", {"requests": {f"example.com/r{i}": 1 for i in range(17)}}),
                           "spec.serving.resources.requests"),
    "resources is a string": (mutate("serving.resources", "500m"), "spec.serving.resources"),
    # autoscaling and disruption budgets
    "min replicas above max": (mutate("serving.autoscaling", {**AUTOSCALING, "minReplicas": 5, "maxReplicas": 3}),
                               "spec.serving.autoscaling"),
    "autoscaling without targets": (mutate("serving.autoscaling", {**AUTOSCALING, "metrics": []}),
                                    "spec.serving.autoscaling.metrics"),
    "autoscaling without max": (mutate("serving.autoscaling", {"metrics": AUTOSCALING["metrics"]}),
                                "spec.serving.autoscaling"),
    "zero min replicas": (mutate("serving.autoscaling", {**AUTOSCALING, "minReplicas": 0}),
                          "spec.serving.autoscaling.minReplicas"),
    "a Pods metric naming a resource": (mutate("serving.autoscaling", {**AUTOSCALING, "metrics": [
        {"type": "Pods", "resource": AUTOSCALING["metrics"][0]["resource"]}]}), "spec.serving.autoscaling.metrics"),
    "utilization without a percent": (mutate("serving.autoscaling", {**AUTOSCALING, "metrics": [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization"}}}]}),
        "spec.serving.autoscaling.metrics"),
    "autoscaling on gpus": (mutate("serving.autoscaling", {**AUTOSCALING, "metrics": [
        {"type": "Resource", "resource": {"name": "nvidia.com/gpu", "target": {
            "type": "Utilization", "averageUtilization": 50}}}]}), "spec.serving.autoscaling.metrics"),
    "bad scaling policy": (mutate("serving.autoscaling", {**AUTOSCALING, "behavior": {"scaleUp": {"policies": [
        {"type": "Replicas", "value": 1, "periodSeconds": 15}]}}}), "spec.serving.autoscaling.behavior"),
    "zero max unavailable": (mutate("serving.disruptionBudget", {"maxUnavailable": 0}),
                             "spec.serving.disruptionBudget.maxUnavailable"),
    "max unavailable 0%": (mutate("serving.disruptionBudget", {"maxUnavailable": "0%"}),
                           "spec.serving.disruptionBudget.maxUnavailable"),
    "max unavailable 150%": (mutate("serving.disruptionBudget", {"maxUnavailable": "150%"}),
                             "spec.serving.disruptionBudget.maxUnavailable"),
    "max unavailable in words": (mutate("serving.disruptionBudget", {"maxUnavailable": "one"}),
                                 "spec.serving.disruptionBudget.maxUnavailable"),
}

# Quantities the CRD and the operator accept, rendered into the Deployment as written.
ACCEPTED_RESOURCES = {
    "cpu 500m": {"requests": {"cpu": "500m"}},
    "cpu 2": {"requests": {"cpu": 2}},
    "memory 1Gi": {"requests": {"memory": "1Gi"}, "limits": {"memory": "1Gi"}},
    "one gpu": {"limits": {"nvidia.com/gpu": 1}},
    "cpu 1.5 as a string": {"requests": {"cpu": "1.5"}},
    "zero and exponent": {"requests": {"cpu": 0, "ephemeral-storage": "1e9"}},
}


def test_there_are_fifty_malformed_endpoints():
    assert len(MALFORMED) >= 50


def _normalised(text: str) -> str:
    return text.replace("[", ".").replace("]", "")


@pytest.mark.parametrize("name", MALFORMED)
def test_schema_or_cel_refuses_it_naming_the_field(name):
    spec, field = MALFORMED[name]
    body = {"apiVersion": "slotkeeper.io/v1alpha1", "kind": "ModelEndpoint",
            "metadata": {"name": "credit", "namespace": "ml"}, "spec": spec}
    errors = schema_errors(body)
    assert errors, f"{name}: the apiserver would accept it"
    assert any(_normalised(e).startswith(_normalised(field)) for e in errors), errors


class RecordingCluster:
    """Stands in for the cluster layer: records every write."""

    def __init__(self) -> None:
        self.actions: list = []
        self.status_patches: list[dict] = []

    async def apply(self, namespace, endpoint, action, post_event) -> None:
        self.actions.append(action)

    async def patch_status(self, namespace, name, patch) -> None:
        self.status_patches.append(patch)


async def reconcile_once(spec: dict[str, Any]) -> tuple[RecordingCluster, list[dict]]:
    """One pass of the reconciler over a new endpoint, schema skipped."""
    cluster = RecordingCluster()
    events: list[dict] = []
    reconciler = EndpointReconciler(namespace="ml", name="credit", cluster=cluster,
                                    post_event=lambda **event: events.append(event))
    body = {"metadata": {"name": "credit", "namespace": "ml", "uid": "u1", "generation": 1}, "spec": spec}
    await reconciler.reconcile(body, ObservedSources(deployments=[], pods=[], services={}))
    return cluster, events


@pytest.mark.parametrize("name", MALFORMED)
async def test_operator_creates_nothing_and_names_the_field(name):
    spec, field = MALFORMED[name]
    cluster, events = await reconcile_once(spec)

    assert cluster.actions == []
    (patch,) = cluster.status_patches
    assert patch["phase"] == "Degraded"
    (degraded,) = [c for c in patch["conditions"] if c["type"] == "Degraded"]
    assert degraded["reason"] == "InvalidSpec"
    top = field.split(".")[1] if "." in field else "spec"
    assert f"spec.{top}" in degraded["message"] or top == "spec", degraded["message"]
    assert events and events[0]["reason"] == "InvalidSpec"


@pytest.mark.parametrize("name", [name for name, (_, field) in MALFORMED.items() if ".resources" in field])
async def test_operator_names_the_whole_path_of_a_bad_quantity(name):
    spec, field = MALFORMED[name]
    cluster, _ = await reconcile_once(spec)
    (patch,) = cluster.status_patches
    (degraded,) = [c for c in patch["conditions"] if c["type"] == "Degraded"]
    assert f"{field}:" in degraded["message"], degraded["message"]


@pytest.mark.parametrize("name", ACCEPTED_RESOURCES)
def test_schema_accepts_kubernetes_quantities(name):
    spec = mutate("serving.resources", ACCEPTED_RESOURCES[name])
    body = {"apiVersion": "slotkeeper.io/v1alpha1", "kind": "ModelEndpoint",
            "metadata": {"name": "credit", "namespace": "ml"}, "spec": spec}
    assert schema_errors(body) == []


@pytest.mark.parametrize("name", ACCEPTED_RESOURCES)
async def test_operator_renders_kubernetes_quantities_as_written(name):
    cluster, _ = await reconcile_once(mutate("serving.resources", ACCEPTED_RESOURCES[name]))
    (patch,) = cluster.status_patches
    assert patch["phase"] == "Progressing", patch
    (deployment,) = [a.body for a in cluster.actions if isinstance(a, ApplyDeployment)]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == ACCEPTED_RESOURCES[name]
