"""manifests/monitoring, the optional kustomize component, as ``kubectl kustomize`` renders it with
the install: the metrics Service reaches the operator's metrics port, the ServiceMonitor selects
that Service, and the alerts and the dashboard query only metrics the operator exports.

The Prometheus Operator's CRDs are not in the repository: ServiceMonitor and PrometheusRule are
checked against a minimal hand-kept schema below (the fields this component uses and the ones the
Prometheus Operator requires), not against the real CRDs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from slotkeeper.metrics import OperatorMetrics, parse_bind_address

from .test_manifests import MANIFESTS, NAMESPACE, OPERATOR, operator_container

MONITORING = MANIFESTS / "monitoring"
DASHBOARD = MONITORING / "dashboards" / "slotkeeper.json"

_NAME = {"type": "string", "minLength": 1}
_METADATA = {"type": "object", "required": ["name"], "properties": {"name": _NAME}}
SERVICE_MONITOR_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
        "metadata": _METADATA,
        "spec": {"type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
                 "properties": {
                     "selector": {"type": "object", "required": ["matchLabels"],
                                  "properties": {"matchLabels": {"type": "object", "minProperties": 1}}},
                     "endpoints": {"type": "array", "minItems": 1, "items": {
                         "type": "object", "required": ["port"], "additionalProperties": False,
                         "properties": {"port": _NAME, "path": {"type": "string", "pattern": "^/"},
                                        "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"}}}}}},
    },
}
PROMETHEUS_RULE_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"},
        "metadata": _METADATA,
        "spec": {"type": "object", "required": ["groups"], "properties": {"groups": {
            "type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name", "rules"], "properties": {"name": _NAME, "rules": {
                    "type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["alert", "expr", "labels", "annotations"],
                        "additionalProperties": False,
                        "properties": {
                            "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                            "expr": {"type": "string", "minLength": 1},
                            "for": {"type": "string", "pattern": "^[0-9]+(s|m|h)$"},
                            "labels": {"type": "object", "required": ["severity"], "properties": {
                                "severity": {"enum": ["info", "warning", "critical"]}}},
                            "annotations": {"type": "object", "required": ["summary", "description"]}}}}}}}}},
    },
}
METRIC_NAME = re.compile(r"\bslotkeeper_[a-z_]+\b")


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """``kubectl kustomize`` of a kustomization of the user's: the install and the component."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")

    def render(install: str, namespace: str) -> list[dict[str, Any]]:
        directory = tmp_path_factory.mktemp("user-kustomization")
        relative = os.path.relpath(MANIFESTS, directory)  # kustomize refuses absolute paths
        (directory / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": namespace,
            "resources": [f"{relative}/{install}".rstrip("/.")], "components": [f"{relative}/monitoring"]}))
        result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return render


@pytest.fixture(scope="module")
def install(build) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in build(".", NAMESPACE)}


def exported_sample_names() -> set[str]:
    """Every sample name the operator's registry can expose (counters end in _total, histograms
    have _bucket/_sum/_count)."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "gauge": ("",)}
    return {family.name + suffix for family in OperatorMetrics().registry.collect()
            for suffix in suffixes[family.type]}


def test_the_component_adds_monitor_rules_and_dashboard_in_the_operator_namespace(install):
    assert {("ServiceMonitor", OPERATOR), ("PrometheusRule", OPERATOR), ("ConfigMap", "slotkeeper-dashboard"),
            ("Service", f"{OPERATOR}-metrics"), ("Deployment", OPERATOR)} <= install.keys()
    for key in (("ServiceMonitor", OPERATOR), ("PrometheusRule", OPERATOR), ("ConfigMap", "slotkeeper-dashboard")):
        assert install[key]["metadata"]["namespace"] == NAMESPACE
    dashboard = install[("ConfigMap", "slotkeeper-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"  # Grafana's sidecar picks it up
    assert json.loads(dashboard["data"]["slotkeeper.json"]) == json.loads(DASHBOARD.read_text())


def test_the_component_goes_with_the_namespaced_install_too(build):
    kinds = {(o["kind"], o["metadata"].get("namespace")) for o in build("overlays/namespaced", "team-a")}
    assert {("ServiceMonitor", "team-a"), ("PrometheusRule", "team-a"), ("Service", "team-a")} <= kinds


def test_service_monitor_scrapes_the_port_the_operator_serves_metrics_on(install):
    monitor = install[("ServiceMonitor", OPERATOR)]
    service = install[("Service", f"{OPERATOR}-metrics")]
    deployment = install[("Deployment", OPERATOR)]
    container = operator_container(deployment)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    (port,) = service["spec"]["ports"]
    assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (flag,) = [a for a in container["args"] if a.startswith("--metrics-bind-address=")]
    assert parse_bind_address(flag.split("=", 1)[1])[1] == ports[port["targetPort"]]
    # The Service selects the operator pods only, not the models' pods (those carry other labels).
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": OPERATOR}


def test_service_monitor_and_prometheus_rule_have_the_shape_the_prometheus_operator_reads(install):
    jsonschema.Draft7Validator(SERVICE_MONITOR_SCHEMA).validate(install[("ServiceMonitor", OPERATOR)])
    jsonschema.Draft7Validator(PROMETHEUS_RULE_SCHEMA).validate(install[("PrometheusRule", OPERATOR)])


def alerts(install) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in install[("PrometheusRule", OPERATOR)]["spec"]["groups"]
            for rule in group["rules"]}


def test_alerts_cover_stuck_rollouts_reverts_quality_and_the_leader(install):
    rules = alerts(install)
    assert "slotkeeper_rollout_started_timestamp_seconds" in rules["SlotkeeperRolloutStuck"]["expr"]
    assert 'outcome="RolledBack"' in rules["SlotkeeperRevert"]["expr"]
    assert "slotkeeper_quality_degraded" in rules["SlotkeeperQualityDegraded"]["expr"]
    assert "slotkeeper_leader" in rules["SlotkeeperNoLeader"]["expr"]


def test_alert_expressions_name_only_metrics_the_operator_exports(install):
    exported = exported_sample_names()
    for name, rule in alerts(install).items():
        used = set(METRIC_NAME.findall(rule["expr"]))
        assert used, f"{name} queries no slotkeeper metric"
        assert used <= exported, f"{name}: {sorted(used - exported)} are not exported"
        assert rule["expr"].count("(") == rule["expr"].count(")"), name


def dashboard_expressions(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for key, value in node.items() if key != "expr" for e in dashboard_expressions(value)]
    if isinstance(node, list):
        return [e for item in node for e in dashboard_expressions(item)]
    return []


def test_dashboard_parses_and_queries_only_exported_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = dashboard_expressions(dashboard["panels"])
    expressions.append(dashboard["templating"]["list"][1]["query"]["query"])
    assert len(expressions) >= 10
    exported = exported_sample_names()
    used = {name for expression in expressions for name in METRIC_NAME.findall(expression)}
    assert used <= exported, sorted(used - exported)
    # Every family the operator exports is on the dashboard somewhere.
    families = {family.name for family in OperatorMetrics().registry.collect()}
    assert {f for f in families if not any(name.startswith(f) for name in used)} == set()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_component_lists_files_that_exist():
    component = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    for resource in component["resources"]:
        assert (MONITORING / resource).is_file()
    assert [Path(f).name for g in component["configMapGenerator"] for f in g["files"]] == [DASHBOARD.name]
