"""Every CEL rule of the generated CRD, found by walking it (a new rule is picked up by itself), is
compiled and evaluated by the conformant implementation (``common-expression-language``) on objects
it must accept and objects it must refuse. Plus what else the apiserver checks of the rules when the
CRD is created and a Python test can check: messages, reason, fieldPath, the fields a rule names, the
functions it calls, and cost bounds (``maxLength``/``maxItems``) for the cost estimator."""

from __future__ import annotations

import copy
import math
import re
from typing import Any, Iterator, NamedTuple

import cel
import pytest
from pydantic import ValidationError

from slotkeeper.api import ModelSource

from .cel_helpers import (
    CelRule, all_rules, compile_rule, crd_schema, evaluate_rule, openapi_errors, schema_errors, with_defaults,
)

RULES = list(all_rules(crd_schema()))


def rule_id(rule: CelRule) -> str:
    return f"{rule.path}: {rule.message}"


def endpoint(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "slotkeeper.io/v1alpha1", "kind": "ModelEndpoint",
            "metadata": {"name": "credit", "namespace": "ml"}, "spec": spec}


CPU = {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
MEMORY = {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "1Gi"}}}
REQUEST_RATE = {"type": "Pods", "pods": {"metric": {"name": "slotkeeper_requests_per_second"},
                                         "target": {"type": "AverageValue", "averageValue": 50}}}

# An endpoint that reaches every node carrying a rule (but the canary steps: see CANARY).
BASE: dict[str, Any] = {
    "model": {"name": "credit", "uri": "file:///models/credit/7/model.joblib"},
    "serving": {"env": [{"name": "LOG_LEVEL", "value": "info"}],
                "autoscaling": {"minReplicas": 2, "maxReplicas": 10, "metrics": [CPU, REQUEST_RATE]}},
    "strategy": {"blueGreen": {}},
    "checks": {
        "validation": [{"name": "smoke", "request": {"inputs": []},
                        "expect": {"status": 200, "outputs": [{"name": "predict", "shape": [1]}]}}],
        "metrics": [{"name": "errors", "source": "pods", "metric": "error_ratio", "max": 0.05}],
    },
}
CANARY = {"canary": {"steps": [{"setWeight": 0}, {"setWeight": 10}, {"pause": {"seconds": 60}}, {"pause": {}}]}}
PODS = {"name": "errors", "source": "pods", "metric": "error_ratio", "max": 0.05}
PROMETHEUS = {"name": "p95", "source": "prometheus", "address": "http://prometheus:9090",
              "query": "histogram_quantile(0.95, rate(x[5m]))", "max": 0.5}
WEB = {"name": "accuracy", "source": "web", "url": "https://status.example.com/api", "jsonPath": "data.value",
       "min": 0.9}


def at(path: str, value: Any) -> dict[str, Any]:
    """BASE with the value at a dotted path (numbers index lists) replaced."""
    spec = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node: Any = spec
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[int(last) if isinstance(node, list) else last] = value
    return spec


def metric(**fields: Any) -> dict[str, Any]:
    return at("checks.metrics", [{key: value for key, value in fields.items() if value is not None}])


def without(check: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in check.items() if key not in keys}


PVC_MESSAGE = "a pvc:// uri names a claim and a path in it: pvc://<claim>/<path>"


def autoscaling(**fields: Any) -> dict[str, Any]:
    return at("serving.autoscaling", {"maxReplicas": 10, "metrics": [CPU], **fields})


def cpu_target(**target: Any) -> dict[str, Any]:
    return autoscaling(metrics=[{"type": "Resource", "resource": {"name": "cpu", "target": target}}])

# (where the rule sits, its message) -> (specs it accepts, specs it refuses). Every spec passes the
# OpenAPI part of the schema, so a refusal is the rule's own.
EXAMPLES: dict[tuple[str, str], tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {
    ("spec.model", PVC_MESSAGE): (
        [at("model.uri", uri) for uri in (
            "file:///models/credit/7/model.joblib", "https://example.com/m.joblib", "http://files/m",
            "pvc://models/credit/7/model.joblib", "pvc://my.claim-1/m", "pvc://a/b", "pvc://0/score.py")],
        [at("model.uri", uri) for uri in (
            "pvc://models", "pvc://models/", "pvc:///model.joblib", "pvc://Models/m", "pvc://-models/m",
            "pvc://models-/m", "pvc://mo_dels/m")],
    ),
    ("spec.serving.env[*]", "set either value or valueFrom, not both"): (
        [at("serving.env", env) for env in (
            [{"name": "A", "value": "1"}], [{"name": "A", "value": ""}], [{"name": "A"}],
            [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}])],
        [at("serving.env", env) for env in (
            [{"name": "A", "value": "1", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
            [{"name": "A", "value": "ok"}, {"name": "B", "value": "", "valueFrom": {}}])],
    ),
    ("spec.strategy.canary.steps[*]", "each canary step sets exactly one of setWeight or pause"): (
        [at("strategy", CANARY), at("strategy", {"canary": {"steps": [{"pause": {}}]}})],
        [at("strategy", {"canary": {"steps": steps}}) for steps in (
            [{"setWeight": 10, "pause": {}}], [{}], [{"setWeight": 10}, {"setWeight": 0, "pause": {"seconds": 5}}])],
    ),
    ("spec.strategy", "strategy sets exactly one of blueGreen or canary"): (
        [at("strategy", {"blueGreen": {}}), at("strategy", {"blueGreen": {"autoPromote": False}}),
         at("strategy", CANARY)],
        [at("strategy", {}), at("strategy", {"blueGreen": {}, **CANARY})],
    ),
    ("spec.checks.validation[*].expect.outputs[*]", "an expected output names data, shape or both"): (
        [at("checks.validation.0.expect.outputs", outputs) for outputs in (
            [{"name": "p", "data": [0.1]}], [{"name": "p", "shape": [1, 2]}], [{"name": "p", "data": []}],
            [{"name": "p", "data": [1.0, 2.0], "shape": [2]}])],
        [at("checks.validation.0.expect.outputs", outputs) for outputs in (
            [{"name": "p"}], [{"name": "ok", "shape": [1]}, {"name": "p", "tolerance": 0.1}])],
    ),
    ("spec.checks.metrics[*]", "a pods check names its metric"): (
        [metric(**PODS), metric(**PROMETHEUS), metric(**WEB)],
        [metric(**without(PODS, "metric"))],
    ),
    ("spec.checks.metrics[*]", "a prometheus check names its address and query"): (
        [metric(**PROMETHEUS), metric(**PODS), metric(**WEB)],
        [metric(**without(PROMETHEUS, "address")), metric(**without(PROMETHEUS, "query")),
         metric(**without(PROMETHEUS, "address", "query"))],
    ),
    ("spec.checks.metrics[*]", "a web check names its url and jsonPath"): (
        [metric(**WEB), metric(**PODS), metric(**PROMETHEUS)],
        [metric(**without(WEB, "url")), metric(**without(WEB, "jsonPath"))],
    ),
    ("spec.checks.metrics[*]", "a metric check sets min, max or both"): (
        [metric(**PODS), metric(**{**PODS, "min": 0.0}), metric(**without({**PODS, "min": 1}, "max"))],
        [metric(**without(PODS, "max")), metric(**without(WEB, "min"))],
    ),
    ("spec.serving.autoscaling", "minReplicas must not exceed maxReplicas"): (
        [autoscaling(minReplicas=2, maxReplicas=10), autoscaling(minReplicas=3, maxReplicas=3),
         autoscaling(maxReplicas=1), autoscaling(maxReplicas=5)],  # minReplicas defaults to 1
        [autoscaling(minReplicas=5, maxReplicas=4), autoscaling(minReplicas=2, maxReplicas=1)],
    ),
    ("spec.serving.autoscaling.metrics[*]", "a Resource metric sets resource, a Pods metric sets pods"): (
        [autoscaling(metrics=[CPU]), autoscaling(metrics=[REQUEST_RATE]), autoscaling(metrics=[CPU, MEMORY, REQUEST_RATE])],
        [autoscaling(metrics=[{"type": "Resource", "pods": REQUEST_RATE["pods"]}]),
         autoscaling(metrics=[{"type": "Pods", "resource": CPU["resource"]}]),
         autoscaling(metrics=[{"type": "Resource"}]), autoscaling(metrics=[{"type": "Pods"}]),
         autoscaling(metrics=[CPU, {**CPU, "pods": REQUEST_RATE["pods"]}])],
    ),
    ("spec.serving.autoscaling.metrics[*].resource.target",
     "a Utilization target sets averageUtilization, an AverageValue target sets averageValue"): (
        [cpu_target(type="Utilization", averageUtilization=80), cpu_target(type="AverageValue", averageValue="500m"),
         cpu_target(type="AverageValue", averageValue=2), autoscaling(metrics=[MEMORY])],
        [cpu_target(type="Utilization"), cpu_target(type="AverageValue"),
         cpu_target(type="Utilization", averageValue="500m"), cpu_target(type="AverageValue", averageUtilization=80),
         cpu_target(type="Utilization", averageUtilization=80, averageValue="1")],
    ),
    ("spec.checks.metrics[*]", "min must not exceed max"): (
        [metric(**{**PODS, "min": 0, "max": 1}), metric(**{**PODS, "min": 1, "max": 1.0}),
         metric(**{**PODS, "min": 1, "max": 1.5}), metric(**PODS), metric(**WEB)],
        [metric(**{**PODS, "min": 2, "max": 1}), metric(**{**PODS, "min": 0.5, "max": 0.05}),
         metric(**{**PODS, "min": 2, "max": 1.5})],
    ),
    ("spec.auth", "secretName needs mode: key"): (
        [at("auth", {"mode": "key"}), at("auth", {"mode": "key", "secretName": "credit-own-keys"}),
         at("auth", {"mode": "none"})],
        [at("auth", {"mode": "none", "secretName": "credit-own-keys"})],
    ),
}


def as_monitor(spec: dict[str, Any]) -> dict[str, Any]:
    """A checks.metrics example as the same check in spec.monitor.checks (the same model, the same rules)."""
    spec = copy.deepcopy(spec)
    spec["monitor"] = {"checks": spec["checks"].pop("metrics")}
    return spec


EXAMPLES.update({
    ("spec.monitor.checks[*]", message): ([as_monitor(s) for s in accepted], [as_monitor(s) for s in refused])
    for (path, message), (accepted, refused) in list(EXAMPLES.items()) if path == "spec.checks.metrics[*]"
})


def parents(*refs: dict[str, Any]) -> dict[str, Any]:
    return at("traffic", {"gatewayAPI": {"parentRefs": list(refs)}})


GATEWAY = {"name": "public"}
MESH = {"group": "", "kind": "Service", "name": "credit"}
EXAMPLES.update({
    ("spec.traffic.gatewayAPI.parentRefs[*]", 'a Service parent is in the core group: group ""'): (
        [parents(MESH), parents(GATEWAY), parents(GATEWAY, {**MESH, "port": 80})],
        [parents({**MESH, "group": "gateway.networking.k8s.io"}), parents({"kind": "Service", "name": "credit"}),
         parents(GATEWAY, {**MESH, "group": "core"})],
    ),
    ("spec.traffic.gatewayAPI.parentRefs[*]", "a Gateway parent is in the group gateway.networking.k8s.io"): (
        [parents(GATEWAY), parents({**GATEWAY, "kind": "Gateway", "group": "gateway.networking.k8s.io"}),
         parents(MESH)],
        [parents({**GATEWAY, "group": ""}), parents(MESH, {**GATEWAY, "group": "networking.istio.io"})],
    ),
})

NIGHTLY = {"name": "nightly", "input": "pvc://data/in", "output": "pvc://data/out", "schedule": "0 2 * * *"}
ADHOC = {"name": "adhoc", "input": "https://files.example.com/rows.csv", "output": "file:///out"}
EXAMPLES.update({
    ("spec.batch", "batch job names are unique"): (
        [at("batch", {"jobs": jobs}) for jobs in ([NIGHTLY], [NIGHTLY, ADHOC], [ADHOC, {**NIGHTLY, "name": "hourly"}])],
        [at("batch", {"jobs": jobs}) for jobs in ([NIGHTLY, NIGHTLY], [ADHOC, NIGHTLY, {**ADHOC, "schedule": "@daily"}])],
    ),
})


def nodes_at(obj: dict[str, Any], path: str) -> Iterator[tuple[str, Any]]:
    """The values at a rule path ('spec.checks.metrics[*]') in ``obj``, with their concrete paths."""
    found: list[tuple[str, Any]] = [("", obj)]
    for segment in path.split("."):
        name, stars = segment.split("[", 1)[0], segment.count("[*]")
        found = [(f"{where}.{name}".lstrip("."), node[name]) for where, node in found
                 if isinstance(node, dict) and node.get(name) is not None]
        for _ in range(stars):
            found = [(f"{where}[{index}]", item) for where, node in found for index, item in enumerate(node)]
    yield from found


def test_the_crd_has_rules_to_check():
    assert len(RULES) >= 10


def test_every_example_names_a_rule_the_crd_has():
    """A renamed or removed rule leaves no examples behind that test nothing."""
    assert set(EXAMPLES) - {(rule.path, rule.message) for rule in RULES} == set()


@pytest.mark.parametrize("rule", RULES, ids=rule_id)
def test_rule_accepts_and_refuses_its_examples(rule: CelRule):
    key = (rule.path, rule.message)
    assert key in EXAMPLES, (f"no examples for the CEL rule at {rule.path} ({rule.rule!r}): add specs it "
                             f"accepts and specs it refuses to EXAMPLES in {__name__}")
    accepted, refused = EXAMPLES[key]
    assert accepted and refused, f"{rule_id(rule)}: needs at least one accepted and one refused example"
    schema = crd_schema()
    for spec in accepted:
        obj = endpoint(spec)
        assert openapi_errors(obj) == [], spec
        nodes = list(nodes_at(with_defaults(schema, obj), rule.path))
        assert nodes, f"the example does not reach {rule.path}: {spec}"
        for where, node in nodes:
            assert evaluate_rule(rule.rule, rule.schema, node) is True, f"{where}: {rule.rule!r} refused {node}"
        assert schema_errors(obj) == [], spec
    for spec in refused:
        obj = endpoint(spec)
        assert openapi_errors(obj) == [], f"refused by the OpenAPI schema, not by the rule: {spec}"
        nodes = list(nodes_at(with_defaults(schema, obj), rule.path))
        verdicts = {where: evaluate_rule(rule.rule, rule.schema, node) for where, node in nodes}
        assert False in verdicts.values(), f"{rule.rule!r} accepted every {rule.path} of {spec}"
        errors = schema_errors(obj)
        for where, verdict in verdicts.items():
            assert (f"{where}: {rule.message}" in errors) == (not verdict), (where, errors)


# -------------------------------------------------------------------------- the rule the apiserver refused

# The rule as it was when a 1.28.7 apiserver refused the CRD ("Syntax error: token recognition error").
OLD_PVC_RULE = r"!self.uri.startsWith('pvc://') || self.uri.matches('^pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?/\S+$')"


def test_the_pvc_rule_written_the_old_way_is_refused_by_the_compiler():
    with pytest.raises(ValueError, match="token recognition error"):
        compile_rule(OLD_PVC_RULE)


def test_no_rule_is_the_old_pvc_rule():
    assert OLD_PVC_RULE not in {rule.rule for rule in RULES}


def _pvc_rule() -> CelRule:
    (rule,) = [rule for rule in RULES if rule.message == PVC_MESSAGE]
    return rule


@pytest.mark.parametrize("uri", [
    "pvc://models/credit/7/model.joblib", "pvc://a/b", "pvc://a.b-c/d/e", "pvc://models", "pvc://models/",
    "pvc:///m", "pvc://Models/m", "pvc://-a/m", "pvc://a-/m", "pvc://a_b/m", "pvc://a/b/", "pvc://a//b",
    "file:///m", "https://x/y",
])
def test_the_pvc_rule_and_the_operator_agree(uri):
    """The CEL rule and the pydantic validator that mirrors it say the same of ASCII uris (RE2's \\S is
    ASCII-only, Python's and Rust's are Unicode: non-ASCII whitespace is where they could differ)."""
    rule = _pvc_rule()
    model = {"name": "credit", "uri": uri}
    try:
        ModelSource.model_validate(model)
        operator_accepts = True
    except ValidationError:
        operator_accepts = False
    assert evaluate_rule(rule.rule, rule.schema, model) is operator_accepts


# ------------------------------------------------------------- what the apiserver checks of each rule

REASONS = {"FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate"}
# The fields of a ValidationRule a 1.28 apiserver knows (reason and fieldPath since 1.28; optionalOldSelf
# only from 1.29 with CRDValidationRatcheting, and a 1.28 apiserver refuses it as an unknown field).
VALIDATION_KEYS = {"rule", "message", "messageExpression", "reason", "fieldPath"}


@pytest.mark.parametrize("rule", RULES, ids=rule_id)
def test_rule_message_reason_and_field_path_are_valid(rule: CelRule):
    """apiextensions validation of x-kubernetes-validations entries; we also require a message (the
    apiserver's default is "failed rule: <the rule>", which tells a user nothing)."""
    validation = rule.validation
    assert set(validation) <= VALIDATION_KEYS, validation
    assert rule.rule.strip(), "rule is not specified"
    message = validation.get("message")
    expression = validation.get("messageExpression")
    assert message or expression, f"{rule.path}: {rule.rule!r} has neither message nor messageExpression"
    if message is not None:
        assert message.strip(), "message must be non-empty if specified"
        assert not re.search(r"[\n\r]", message), "message must not contain line breaks"
    if expression is not None:
        assert expression.strip(), "messageExpression must be non-empty if specified"
        compile_rule(expression)
    if "reason" in validation:
        assert validation["reason"] in REASONS, validation["reason"]
    if "fieldPath" in validation:
        assert resolve_field_path(rule.schema, validation["fieldPath"]) is not None, validation["fieldPath"]


def resolve_field_path(schema: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The schema node a rule's fieldPath (".a.b" or ".a['b.c']", no list indexes) names, or None."""
    node, rest = schema, path
    if not rest:
        return None
    while rest:
        step = re.match(r"\.([A-Za-z_][A-Za-z0-9_]*)|\['([^']+)'\]", rest)
        if step is None:
            return None
        name, rest = step.group(1) or step.group(2), rest[step.end():]
        properties = node.get("properties") or {}
        if name in properties:
            node = properties[name]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return None
    return node


# CEL's reserved words: a property with such a name is `__name__` in a rule.
CEL_RESERVED = {"true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function",
                "if", "import", "let", "loop", "package", "namespace", "return", "var", "void", "while"}
_ESCAPES = {"__underscores__": "__", "__dot__": ".", "__dash__": "-", "__slash__": "/"}


def _unescape(name: str) -> str:
    match = re.fullmatch(r"__([a-z]+)__", name)
    if match and match.group(1) in CEL_RESERVED:
        return match.group(1)
    for escaped, plain in _ESCAPES.items():
        name = name.replace(escaped, plain)
    return name


_STRING_LITERAL = r"[rR]'[^']*'|[rR]\"[^\"]*\"|'(?:\\.|[^'\\])*'|\"(?:\\.|[^\"\\])*\""


class Ref(NamedTuple):
    """A field selection on ``self``: ``self.a.b.matches(...)`` is names ('a', 'b'), method 'matches';
    ``has(self.a)`` is a presence test (costs 1, reads nothing); ``self.a != 'x'`` compares with a
    literal (cel-go bounds that cost by the shorter side, the literal)."""

    names: tuple[str, ...]
    method: str | None
    presence: bool
    literal_comparison: bool = False


def field_refs(rule: str) -> list[Ref]:
    """The selections on ``self`` in a rule (a light parse, for the static checks below; selections on
    comprehension variables are not followed)."""
    code = re.sub(_STRING_LITERAL, "''", rule)
    refs = []
    for match in re.finditer(r"(?<![\w.])(has\(\s*)?self((?:\s*\.\s*[A-Za-z_]\w*)*)(\s*\()?", code):
        names = re.findall(r"[A-Za-z_]\w*", match.group(2))
        method = names.pop() if match.group(3) and names else None
        after, before = code[match.end():], code[:match.start()]
        presence = bool(match.group(1)) and method is None and after.lstrip().startswith(")")
        literal_comparison = method is None and not match.group(3) and bool(
            re.match(r"\s*[!=]=\s*''", after) or re.search(r"''\s*[!=]=\s*$", before))
        refs.append(Ref(tuple(names), method, presence, literal_comparison))
    return refs


def resolve(rule: CelRule, names: tuple[str, ...]) -> dict[str, Any] | None:
    """The schema node ``self.<names>`` is, or None when a name is not a declared property."""
    node = rule.schema
    for name in names:
        properties = node.get("properties") or {}
        if _unescape(name) not in properties:
            return None
        node = properties[_unescape(name)]
    return node


@pytest.mark.parametrize("rule", RULES, ids=rule_id)
def test_rule_names_only_declared_fields(rule: CelRule):
    """cel-go type-checks a rule against the schema when the CRD is created and refuses a field that is
    not declared (or not accessible: inside x-kubernetes-preserve-unknown-fields); cel-rust does not,
    so check it here. A field named like a CEL keyword must be written escaped (`__namespace__`)."""
    refs = field_refs(rule.rule)
    assert refs, f"{rule.rule!r} does not use self"
    for ref in refs:
        for index, name in enumerate(ref.names):
            assert name not in CEL_RESERVED, f"{rule.rule!r}: `{name}` is reserved in CEL; write __{name}__"
            parent = resolve(rule, ref.names[:index])
            assert resolve(rule, ref.names[:index + 1]) is not None, (
                f"{rule.path}: {rule.rule!r} selects `{name}`, which is not a declared property there "
                f"(declared: {sorted((parent or {}).get('properties') or {})})")


def test_field_refs_reads_selections_methods_and_presence_tests():
    assert field_refs("!self.uri.startsWith('pvc://') || self.uri.matches(r'^a\\S$')") == [
        Ref(("uri",), "startsWith", False), Ref(("uri",), "matches", False)]
    assert field_refs("has(self.a) != has(self.b.c) && self.d <= 'self.e'") == [
        Ref(("a",), None, True), Ref(("b", "c"), None, True), Ref(("d",), None, False)]
    assert field_refs("size(self) > 0") == [Ref((), None, False)]
    assert field_refs("self.source != 'pods' || 'web' == self.kind || self.a == self.b") == [
        Ref(("source",), None, False, True), Ref(("kind",), None, False, True), Ref(("a",), None, False),
        Ref(("b",), None, False)]


# What the Kubernetes 1.28 CRD validation environment has: CEL's standard library (operators by their
# overload names, macros expanded), the strings extension (v0), and Kubernetes' lists, regex and URL
# libraries. quantity() (1.29+), sets (1.29+), ip()/cidr() (1.30+), format() and semver are not there.
K8S_128_FUNCTIONS = {
    "!_", "-_", "_+_", "_-_", "_*_", "_/_", "_%_", "_==_", "_!=_", "_<_", "_<=_", "_>_", "_>=_", "_&&_", "_||_",
    "_?_:_", "_[_]", "@in", "@not_strictly_false",
    "size", "matches", "startsWith", "endsWith", "contains", "int", "uint", "double", "string", "bytes", "bool",
    "timestamp", "duration", "dyn", "type", "getFullYear", "getMonth", "getDate", "getDayOfMonth", "getDayOfWeek",
    "getDayOfYear", "getHours", "getMinutes", "getSeconds", "getMilliseconds",
    "charAt", "indexOf", "lastIndexOf", "lowerAscii", "upperAscii", "replace", "split", "substring", "trim", "join",
    "isSorted", "sum", "min", "max", "find", "findAll",
    "url", "isURL", "getScheme", "getHost", "getHostname", "getPort", "getEscapedPath", "getQuery",
}


@pytest.mark.parametrize("rule", RULES, ids=rule_id)
def test_rule_calls_only_functions_the_apiserver_has(rule: CelRule):
    unknown = set(compile_rule(rule.rule).functions()) - K8S_128_FUNCTIONS
    assert not unknown, (f"{rule.rule!r} calls {sorted(unknown)}, not in the Kubernetes 1.28 CEL environment "
                         f"(if it is, add it here and, if cel-rust lacks it, to cel_helpers.EXTENSION_FUNCTIONS)")


_REGEX_CALL = re.compile(r"\.\s*(?:matches|find|findAll)\s*\(\s*(" + _STRING_LITERAL + r")")


@pytest.mark.parametrize("rule", RULES, ids=rule_id)
def test_rule_regexes_are_valid_re2(rule: CelRule):
    """The apiserver compiles a literal regex when the CRD is created (RE2: no look-arounds, no
    back-references); cel-rust's regex crate refuses the same constructs. Checked on its own, so a
    regex behind a short-circuit that no example reaches is still compiled."""
    for literal in _REGEX_CALL.findall(rule.rule):
        try:
            cel.evaluate(f"''.matches({literal})")
        except Exception as error:  # noqa: BLE001
            pytest.fail(f"{rule.path}: {literal} in {rule.rule!r} is not a valid RE2 regex: {error}")


def _patterns(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                yield path, value
            elif key != "x-kubernetes-validations":
                yield from _patterns(value, f"{path}/{key}")


def test_every_schema_pattern_is_valid_re2():
    """`pattern` is a Go (RE2) regex in the apiserver too, refused when the CRD is created if it does
    not compile there."""
    patterns = list(_patterns(crd_schema()))
    assert patterns
    for path, pattern in patterns:
        try:
            cel.evaluate("''.matches(pattern)", {"pattern": pattern})
        except Exception as error:  # noqa: BLE001
            pytest.fail(f"{path}: {pattern!r} is not a valid RE2 regex: {error}")


# ----------------------------------------------------------------------------------------------- cost

STATIC_ESTIMATED_COST_LIMIT = 10_000_000  # per rule, times how often it can run (apiextensions validation)
STATIC_ESTIMATED_CRD_COST_LIMIT = 100_000_000  # all rules of the CRD together
MAX_REQUEST_BYTES = 3 * 1024 * 1024  # what the estimator assumes for a string or list without a bound


def rules_with_cardinality(schema: dict[str, Any], path: str = "", cardinality: int | None = 1
                           ) -> Iterator[tuple[CelRule, int | None]]:
    """Each rule with how many times it can run on one object: the product of the maxItems /
    maxProperties of the lists and maps above it (None: unbounded)."""
    for validation in schema.get("x-kubernetes-validations", []):
        yield CelRule(path.lstrip(".") or "<root>", validation["rule"], validation.get("message"), schema,
                      validation), cardinality
    for name, child in (schema.get("properties") or {}).items():
        yield from rules_with_cardinality(child, f"{path}.{name}", cardinality)
    for key, bound in (("items", "maxItems"), ("additionalProperties", "maxProperties")):
        if isinstance(schema.get(key), dict):
            limit = schema.get(bound)
            inner = None if cardinality is None or limit is None else cardinality * limit
            yield from rules_with_cardinality(schema[key], f"{path}[*]", inner)


def rough_cost(rule: CelRule) -> int:
    """A coarse worst-case estimate with cel-go's cost factors (checker/cost.go) for what our rules do:
    1 per identifier, select, presence test and call; `matches`: ceil(0.1 * (length + 1)) *
    ceil(0.25 * regex length); comparing with a literal: ceil(0.1 * literal length); other string
    functions and comparisons: ceil(0.1 * length); reading a list or map: 100 per item (a generous
    bound for a comprehension's body). A string without maxLength counts as the largest request."""
    functions = compile_rule(rule.rule).functions()
    literals = [len(literal) for literal in re.findall(_STRING_LITERAL, rule.rule)]
    cost = len(functions)
    for ref in field_refs(rule.rule):
        cost += 1 + len(ref.names)
        node = resolve(rule, ref.names) or {}
        if ref.presence:
            continue
        if node.get("type") == "string":
            length = node.get("maxLength", MAX_REQUEST_BYTES)
            if ref.literal_comparison:
                cost += math.ceil(0.1 * max(literals, default=1))
            elif ref.method == "matches":
                cost += math.ceil(0.1 * (length + 1)) * math.ceil(0.25 * max(literals, default=1))
            else:
                cost += math.ceil(0.1 * length)
        elif node.get("type") == "array":
            cost += node.get("maxItems", 0) * 100
        elif node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
            cost += node.get("maxProperties", 0) * 100
    return cost


@pytest.mark.parametrize("rule, cardinality", list(rules_with_cardinality(crd_schema())),
                         ids=[rule_id(rule) for rule, _ in rules_with_cardinality(crd_schema())])
def test_rule_cost_is_bounded(rule: CelRule, cardinality: int | None):
    """The apiserver estimates each rule's worst case from the schema and refuses the CRD when it is over
    budget; a list without maxItems above a rule, or a string/list without maxLength/maxItems that a rule
    reads, is estimated from the largest request (3 MiB). So: every such bound is set."""
    assert cardinality is not None, f"{rule.path}: a list or map above this rule has no maxItems/maxProperties"
    for ref in field_refs(rule.rule):
        node = resolve(rule, ref.names) or {}
        name = ".".join(("self",) + ref.names)
        if ref.presence:  # has() reads no content
            continue
        kind = node.get("type")
        if kind == "string" and not ref.literal_comparison:
            assert "maxLength" in node, f"{rule.path}: {rule.rule!r} reads {name}: no maxLength"
        elif kind == "array":
            assert "maxItems" in node, f"{rule.path}: {rule.rule!r} reads {name}: no maxItems"
        elif kind == "object" and isinstance(node.get("additionalProperties"), dict):
            assert "maxProperties" in node, f"{rule.path}: {rule.rule!r} reads {name}: no maxProperties"
    assert rough_cost(rule) * cardinality < STATIC_ESTIMATED_COST_LIMIT


def test_all_rules_together_are_within_the_crd_cost_budget():
    total = sum(rough_cost(rule) * (cardinality or 0) for rule, cardinality in rules_with_cardinality(crd_schema()))
    assert 0 < total < STATIC_ESTIMATED_CRD_COST_LIMIT
