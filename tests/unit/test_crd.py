"""The CRD is generated from the API models; these tests keep the committed file honest and prove
the schema and its CEL rules (evaluated with the conformant ``common-expression-language``, see
cel_helpers) reject bad input with a message naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from slotkeeper.api import ModelEndpointSpec
from slotkeeper.crd import CRD_FILE_NAME, render_crd, render_crd_yaml

from .cel_helpers import all_rules, compile_rule, crd_schema, schema_errors

ROOT = Path(__file__).resolve().parents[2]


def endpoint(spec: dict[str, Any], name: str = "credit") -> dict[str, Any]:
    return {"apiVersion": "slotkeeper.io/v1alpha1", "kind": "ModelEndpoint",
            "metadata": {"name": name, "namespace": "ml"}, "spec": spec}


GOOD = {"model": {"name": "credit", "uri": "file:///models/credit/7/model.joblib"}}


def test_committed_crd_is_up_to_date():
    committed = (ROOT / "crds" / CRD_FILE_NAME).read_text()
    assert committed == render_crd_yaml(), "crds/ is stale: run `slotkeeper crd`"


def test_crd_names_columns_and_status_subresource():
    crd = render_crd()
    version = crd["spec"]["versions"][0]
    assert crd["spec"]["names"]["shortNames"] == ["mep"]
    assert crd["spec"]["names"]["categories"] == ["slotkeeper"]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Phase", "Active", "Stable", "Candidate", "Traffic", "Age"]


def _walk(node: Any, path: str = ""):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{path}/{index}")


def test_schema_is_structural():
    """What the apiserver demands of a v1 CRD schema: a type on every node, no refs, no unions."""
    for path, node in _walk(crd_schema()):
        if path.endswith("/properties") or "x-kubernetes-validations" in path.rsplit("/", 2)[-2:]:
            continue
        if "/properties/" in path or path == "" or path.endswith("/items") or path.endswith("/additionalProperties"):
            assert not {"$ref", "anyOf", "oneOf", "allOf", "title", "$defs"} & node.keys(), path
            assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"no type at {path}"
            assert node.get("additionalProperties") is not False, path
            assert not ("properties" in node and "additionalProperties" in node), path


def test_every_cel_rule_compiles():
    """With the conformant parser (the apiserver's cel-go refuses what it refuses, e.g. `'\\S'`)."""
    rules = list(all_rules(crd_schema()))
    assert len(rules) >= 8
    refused = []
    for rule in rules:
        try:
            compile_rule(rule.rule)
        except ValueError as error:
            refused.append(f"{rule.path}: {rule.rule!r}: {str(error).splitlines()[0]}")
    assert refused == [], "the apiserver's CEL compiler refuses these rules:\n" + "\n".join(refused)


def test_good_endpoint_passes_schema_cel_and_models():
    assert schema_errors(endpoint(GOOD)) == []
    ModelEndpointSpec.model_validate(GOOD)


def with_(**changes: Any) -> dict[str, Any]:
    spec = yaml.safe_load(yaml.safe_dump(GOOD))
    spec.update(changes)
    return spec


BAD = [
    pytest.param({}, "spec: 'model' is a required property", id="no-model"),
    pytest.param({"model": {"name": "credit"}}, "spec.model: 'uri' is a required property", id="no-uri"),
    pytest.param(with_(model={"name": "credit", "uri": "s3://bucket/model"}), "spec.model.uri", id="bad-scheme"),
    pytest.param(with_(model={"name": "credit", "uri": "file:///m", "format": "onnx"}), "spec.model.format",
                 id="bad-format"),
    pytest.param(with_(serving={"replicas": 0}), "spec.serving.replicas", id="zero-replicas"),
    pytest.param(with_(serving={"replicas": "two"}), "spec.serving.replicas", id="replicas-string"),
    pytest.param(with_(serving={"port": 70000}), "spec.serving.port", id="port-range"),
    pytest.param(with_(strategy={"blueGreen": {}, "canary": {"steps": [{"setWeight": 10}]}}),
                 "spec.strategy: strategy sets exactly one of blueGreen or canary", id="two-strategies"),
    pytest.param(with_(strategy={}), "spec.strategy: strategy sets exactly one of blueGreen or canary",
                 id="no-strategy"),
    pytest.param(with_(strategy={"canary": {"steps": []}}), "spec.strategy.canary.steps", id="no-steps"),
    pytest.param(with_(strategy={"canary": {"steps": [{"setWeight": 10, "pause": {}}]}}),
                 "spec.strategy.canary.steps[0]: each canary step sets exactly one of setWeight or pause",
                 id="step-both"),
    pytest.param(with_(strategy={"canary": {"steps": [{"setWeight": 120}]}}), "setWeight", id="weight-range"),
    pytest.param(with_(checks={"metrics": [{"name": "errors", "source": "pods", "max": 0.1}]}),
                 "spec.checks.metrics[0]: a pods check names its metric", id="pods-no-metric"),
    pytest.param(with_(checks={"metrics": [{"name": "p95", "source": "prometheus", "query": "up", "max": 1}]}),
                 "spec.checks.metrics[0]: a prometheus check names its address and query", id="prom-no-address"),
    pytest.param(with_(checks={"metrics": [{"name": "x", "source": "statsd", "max": 1}]}),
                 "spec.checks.metrics.0.source", id="unknown-source"),
    pytest.param(with_(checks={"metrics": [{"name": "e", "source": "pods", "metric": "error_ratio"}]}),
                 "a metric check sets min, max or both", id="no-threshold"),
    pytest.param(with_(checks={"metrics": [{"name": "e", "source": "pods", "metric": "error_ratio",
                                            "min": 2, "max": 1}]}), "min must not exceed max", id="min-gt-max"),
    pytest.param(with_(checks={"progressDeadlineSeconds": 0}), "spec.checks.progressDeadlineSeconds",
                 id="deadline-zero"),
    pytest.param(with_(serving={"env": [{"name": "A", "value": "1", "valueFrom": {"secretKeyRef": {}}}]}),
                 "spec.serving.env[0]: set either value or valueFrom, not both", id="env-both"),
    pytest.param(with_(model={"name": "credit", "uri": "file:///" + "m" * 3000}), "spec.model.uri",
                 id="huge-uri"),
]


@pytest.mark.parametrize("spec, expected", BAD)
def test_bad_endpoint_is_rejected_naming_the_field(spec, expected):
    errors = schema_errors(endpoint(spec))
    assert errors, "the apiserver would have accepted this"
    assert any(expected.replace("[", ".").replace("]", "") in e.replace("[", ".").replace("]", "") or expected in e
               for e in errors), errors
    with pytest.raises(ValidationError):  # the operator refuses it too, should a schema be skipped
        ModelEndpointSpec.model_validate(spec)


@pytest.mark.parametrize("name", ["Credit", "credit.v2", "9lives", "a" * 58])
def test_endpoint_names_that_cannot_name_slot_services_are_rejected(name):
    assert any(e.startswith("metadata.name") for e in schema_errors(endpoint(GOOD, name=name)))
