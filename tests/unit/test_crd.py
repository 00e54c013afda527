"""The CRD is generated from the API models; these tests keep the committed file honest and prove
the schema and its CEL rules (evaluated with the conformant ``common-expression-language``, see
cel_helpers) reject bad input with a message naming the field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from pydantic import ValidationError

from slotkeeper.api import ModelEndpointSpec
from slotkeeper.crd import CRD_FILE_NAME, render_crd, render_crd_yaml, structural

from .cel_helpers import all_rules, compile_rule, crd_schema, re2_end_of_text, schema_errors

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


INT_OR_STRING_ANY_OF = [{"type": "integer"}, {"type": "string"}]


def _schema_nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node the apiserver checks as a field, item or map value (not the junctors)."""
    yield path or "<root>", node
    for name, child in (node.get("properties") or {}).items():
        yield from _schema_nodes(child, f"{path}.properties[{name}]")
    if isinstance(node.get("items"), dict):
        yield from _schema_nodes(node["items"], f"{path}.items")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _schema_nodes(node["additionalProperties"], f"{path}.additionalProperties")


def structural_problems(schema: dict[str, Any]) -> list[str]:
    """What apiextensions' ValidateStructural refuses, for the constructs a generated schema can
    contain: a type on every node except int-or-string and preserve-unknown-fields ones; no $ref,
    no junctors (anyOf, oneOf, allOf, not) except int-or-string's exact `anyOf: [{type: integer},
    {type: string}]`; int-or-string without preserve-unknown-fields or embedded-resource; no title;
    no `additionalProperties: false` and not beside `properties`; none at the root."""
    problems = []
    if "additionalProperties" in schema:
        problems.append("<root>: additionalProperties must not be used at the root")
    for path, node in _schema_nodes(schema):
        int_or_string = node.get("x-kubernetes-int-or-string") is True
        junctors = {"$ref", "anyOf", "oneOf", "allOf", "not", "$defs"} & node.keys()
        if int_or_string and node.get("anyOf") == INT_OR_STRING_ANY_OF:
            junctors.discard("anyOf")
        if junctors:
            problems.append(f"{path}: {sorted(junctors)} is not structural")
        if "title" in node:
            problems.append(f"{path}: title")
        if int_or_string:
            if "type" in node:  # an integer would fail `type: string` and a string `type: integer`
                problems.append(f"{path}: int-or-string has no type beside it")
            if node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-embedded-resource"):
                problems.append(f"{path}: int-or-string excludes preserve-unknown-fields and embedded-resource")
        elif "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            problems.append(f"{path}: no type")
        if node.get("additionalProperties") is False:
            problems.append(f"{path}: additionalProperties: false")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: properties beside additionalProperties")
    return problems


def test_schema_is_structural():
    """What the apiserver demands of a v1 CRD schema: a type on every node, no refs, no unions but
    int-or-string's."""
    assert structural_problems(crd_schema()) == []


@pytest.mark.parametrize("node, problem", [
    ({"anyOf": [{"type": "integer"}, {"type": "string"}]}, "not structural"),  # no x-kubernetes-int-or-string
    ({"x-kubernetes-int-or-string": True, "anyOf": [{"type": "string"}, {"type": "integer"}]}, "not structural"),
    ({"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 3}]},
     "not structural"),
    ({"x-kubernetes-int-or-string": True, "type": "string"}, "no type beside it"),
    ({"x-kubernetes-int-or-string": True, "x-kubernetes-preserve-unknown-fields": True}, "excludes"),
    ({"maxLength": 3}, "no type"),
])
def test_the_structural_check_refuses_what_the_apiserver_refuses(node, problem):
    schema = {"type": "object", "properties": {"spec": {"type": "object", "properties": {"q": node}}}}
    assert any(problem in p for p in structural_problems(schema)), structural_problems(schema)
    assert structural_problems({"type": "object", "properties": {"q": {
        "x-kubernetes-int-or-string": True, "anyOf": INT_OR_STRING_ANY_OF, "pattern": "^a$"}}}) == []


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


# --------------------------------------------------------------------------- serving.resources quantities

# controller-gen's pattern for resource.Quantity, as in the generated CRDs of cert-manager, Karpenter
# and every kubebuilder operator with `resources.limits`.
CONTROLLER_GEN_QUANTITY = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
                           r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")


def _resources_schema() -> dict[str, Any]:
    return crd_schema()["properties"]["spec"]["properties"]["serving"]["properties"]["resources"]


def test_resources_are_requests_and_limits_of_int_or_string_quantities():
    resources = _resources_schema()
    assert resources["type"] == "object" and set(resources["properties"]) == {"requests", "limits"}
    assert "x-kubernetes-preserve-unknown-fields" not in resources
    for name in ("requests", "limits"):
        resource_list = resources["properties"][name]
        assert resource_list["type"] == "object" and resource_list["maxProperties"] == 16
        quantity = resource_list["additionalProperties"]
        assert quantity == {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "pattern": CONTROLLER_GEN_QUANTITY.replace(r"^(\+|-)?", r"^\+?", 1),
            "maxLength": 64,
            "minimum": 0,
        }


QUANTITY_CORPUS = ["0", "1", "2", "+1", "-1", "-0.5", "500m", "1.5", ".5", "1.", "1Gi", "1G", "1Ki", "1k", "1K",
                   "1e3", "1E3", "1e-3", "1.5e+3", "1E", "1Ei", "100Mi", "1m", "1n", "1u", "", "lots", "1Gb", "1 Gi",
                   "Gi", "1e", "1ki", "1.2.3", "1Gi ", " 1", "--1", "+-1", "1Mi\n", "1i", "0x10", "½"]


@pytest.mark.parametrize("text", QUANTITY_CORPUS)
def test_the_quantity_pattern_is_controller_gens_for_non_negative_quantities(text):
    ours = _resources_schema()["properties"]["requests"]["additionalProperties"]["pattern"]
    # `$` is the end of the text in RE2 (the apiserver), as \Z is in Python.
    expected = bool(re.search(CONTROLLER_GEN_QUANTITY[:-1] + r"\Z", text)) and not text.startswith("-")
    assert bool(re.search(ours[:-1] + r"\Z", text)) == expected


def resources(**lists: Any) -> dict[str, Any]:
    return with_(serving={"resources": lists})


ACCEPTED_RESOURCES = [
    {"requests": {"cpu": "500m"}},
    {"requests": {"cpu": 2}},
    {"requests": {"memory": "1Gi"}},
    {"limits": {"nvidia.com/gpu": 1}},
    {"requests": {"cpu": "1.5"}},
    {"requests": {"cpu": 0, "memory": "0"}, "limits": {"memory": "64Mi", "ephemeral-storage": "1e9"}},
    {"requests": {"cpu": "+1", "hugepages-2Mi": "100Mi"}},
    {"requests": {}, "limits": {}},
    {"requests": {f"example.com/r{i}": 1 for i in range(16)}},
    {"limits": {"memory": "1" * 64}},
]


@pytest.mark.parametrize("lists", ACCEPTED_RESOURCES)
def test_kubernetes_quantities_are_accepted_by_schema_and_models_alike(lists):
    spec = resources(**lists)
    assert schema_errors(endpoint(spec)) == []
    assert ModelEndpointSpec.model_validate(spec).serving.resources.to_api() == lists


REFUSED_RESOURCES = [
    pytest.param({"requests": {"cpu": "lots"}}, "spec.serving.resources.requests.cpu", id="lots"),
    pytest.param({"limits": {"memory": "1Gb"}}, "spec.serving.resources.limits.memory", id="1Gb"),
    pytest.param({"requests": {"cpu": "-1"}}, "spec.serving.resources.requests.cpu", id="negative-string"),
    pytest.param({"requests": {"cpu": -1}}, "spec.serving.resources.requests.cpu", id="negative-int"),
    pytest.param({"limits": {"cpu": ""}}, "spec.serving.resources.limits.cpu", id="empty"),
    pytest.param({"limits": {"cpu": " 1"}}, "spec.serving.resources.limits.cpu", id="leading-space"),
    pytest.param({"limits": {"memory": "1Mi\n"}}, "spec.serving.resources.limits.memory", id="trailing-newline"),
    pytest.param({"requests": {"cpu": 1.5}}, "spec.serving.resources.requests.cpu", id="float"),
    pytest.param({"requests": {"cpu": True}}, "spec.serving.resources.requests.cpu", id="bool"),
    pytest.param({"requests": {"cpu": None}}, "spec.serving.resources.requests.cpu", id="null"),
    pytest.param({"requests": {"cpu": {"value": 1}}}, "spec.serving.resources.requests.cpu", id="object"),
    pytest.param({"requests": {"cpu": ["1"]}}, "spec.serving.resources.requests.cpu", id="list"),
    pytest.param({"limits": {"memory": "1" * 65}}, "spec.serving.resources.limits.memory", id="too-long"),
    pytest.param({"requests": {f"example.com/r{i}": 1 for i in range(17)}}, "spec.serving.resources.requests",
                 id="too-many"),
    pytest.param({"requests": ["cpu"]}, "spec.serving.resources.requests", id="list-not-map"),
    pytest.param({"limits": "1Gi"}, "spec.serving.resources.limits", id="string-not-map"),
]


@pytest.mark.parametrize("lists, field", REFUSED_RESOURCES)
def test_a_bad_quantity_is_refused_by_schema_and_models_naming_the_field(lists, field):
    spec = resources(**lists)
    errors = schema_errors(endpoint(spec))
    assert any(e.startswith(field + ":") for e in errors), errors
    with pytest.raises(ValidationError) as raised:
        ModelEndpointSpec.model_validate(spec)
    locations = {"spec." + ".".join(str(part) for part in error["loc"]) for error in raised.value.errors()}
    assert field in locations, raised.value.errors()


def test_an_int_or_string_node_must_have_exactly_the_structural_union():
    with pytest.raises(ValueError, match="int-or-string"):
        structural({"x-kubernetes-int-or-string": True, "anyOf": [{"type": "string"}]})
    with pytest.raises(ValueError, match="int-or-string"):
        structural({"x-kubernetes-int-or-string": True, "type": "string",
                    "anyOf": [{"type": "integer"}, {"type": "string"}]})


@pytest.mark.parametrize("pattern, python", [
    (r"^a$", r"^a\Z"),
    (r"^/\S*$", r"^/\S*\Z"),
    (r"^a\$$", r"^a\$\Z"),
    (r"^[$]$", r"^[$]\Z"),
    (r"^[]$]x$", r"^[]$]x\Z"),
    (r"^[^]$]$", r"^[^]$]\Z"),
    (r"^(a|b$)", r"^(a|b\Z)"),
])
def test_schema_patterns_are_matched_with_re2s_end_of_text(pattern, python):
    assert re2_end_of_text(pattern) == python
