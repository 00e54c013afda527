"""Evaluate a CRD schema the way an apiserver would, without one: JSON schema (OpenAPI v3.0 is
draft 4 for our purposes) plus every ``x-kubernetes-validations`` CEL rule.

The rules are compiled and evaluated with ``common-expression-language`` (module ``cel``: Python
bindings of cel-rust, a spec-conformant implementation). Its parser refuses what the apiserver's
cel-go refuses, e.g. the invalid escape in ``'...\\S'`` (cel-python, used before, accepted it), and its
``matches`` is RE2-like (Rust's regex crate: no look-arounds, no back-references).

What the apiserver does to ``self`` and this module does too:

- ``self`` is the value at the rule's node, typed by the schema: a ``number`` is a double even when
  the object says ``2``; an ``integer`` is an int.
- fields set to null are absent (``has()`` is false); the schema's defaults are applied first.
- a rule runs only where its node is present in the object, on every item of a list or map.

What differs and is covered elsewhere or refused loudly:

- cel-go type-checks each rule against the schema when the CRD is created (an unknown field fails
  there); cel-rust does not. ``tests/unit/test_cel_rules.py`` checks statically that every field a
  rule names is declared where the rule sits.
- transition rules (``oldSelf``) need the old object: :func:`evaluate_rule` raises for them.
- string formats that become CEL types (date-time, duration, byte) are not converted: raises.
- the Kubernetes extension libraries (strings ``lowerAscii``..., lists, regex ``find``, ``url``,
  ``quantity``...) are not in cel-rust (``cel.stdlib`` has opt-in Python versions of some; not
  registered here). No rule uses one today; a rule that does fails to evaluate here ("Undefined
  variable or function") until a Python implementation is put in :data:`EXTENSION_FUNCTIONS`.
  ``test_cel_rules.py`` also lists which functions the Kubernetes 1.28 environment has.
- Perl classes in regexes (``\\s``, ``\\d``, ``\\w``) are Unicode in Rust's regex and ASCII in RE2:
  evaluate such rules on ASCII input only.
"""

from __future__ import annotations

import copy
import re
from functools import lru_cache
from typing import Any, Callable, Iterator, NamedTuple

import cel
import jsonschema

from slotkeeper.crd import render_crd

# Kubernetes CEL extension functions the rules use, implemented in Python (name -> callable),
# registered in every evaluation. None is needed by the current rules.
EXTENSION_FUNCTIONS: dict[str, Callable[..., Any]] = {}

_CEL_TYPED_FORMATS = {"date-time", "date", "duration", "byte"}


def crd_schema() -> dict[str, Any]:
    return render_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


class CelRule(NamedTuple):
    path: str  # where the rule sits, e.g. "spec.checks.metrics[*]"
    rule: str
    message: str | None
    schema: dict[str, Any]  # the schema node the rule is attached to (the type of `self`)
    validation: dict[str, Any]  # the whole x-kubernetes-validations entry


def _where(path: str) -> str:
    return path.lstrip(".") or "<root>"


def all_rules(schema: dict[str, Any], path: str = "") -> Iterator[CelRule]:
    """Every x-kubernetes-validations rule in ``schema``, found by walking it."""
    for validation in schema.get("x-kubernetes-validations", []):
        yield CelRule(_where(path), validation["rule"], validation.get("message"), schema, validation)
    for name, child in (schema.get("properties") or {}).items():
        yield from all_rules(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from all_rules(schema["items"], f"{path}[*]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from all_rules(schema["additionalProperties"], f"{path}[*]")


@lru_cache(maxsize=None)
def compile_rule(rule: str) -> cel.Program:
    """Parse a rule with the conformant implementation; raises ValueError on a syntax error."""
    return cel.compile(rule)


def with_defaults(schema: dict[str, Any], value: Any) -> Any:
    """``value`` with the schema's defaults applied, top-down, as the apiserver does before validating."""
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        out = {}
        for key, item in value.items():
            child = properties.get(key)
            if child is None and isinstance(schema.get("additionalProperties"), dict):
                child = schema["additionalProperties"]
            out[key] = with_defaults(child, item) if child is not None else item
        for key, child in properties.items():
            if key not in out and "default" in child:
                out[key] = with_defaults(child, copy.deepcopy(child["default"]))
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [with_defaults(schema["items"], item) for item in value]
    return value


def to_cel(schema: dict[str, Any], value: Any) -> Any:
    """The value CEL sees for ``value`` under ``schema``: typed as declared, nulls dropped."""
    if schema.get("format") in _CEL_TYPED_FORMATS and schema.get("type") == "string":
        raise NotImplementedError(f"format {schema['format']!r} becomes a CEL type: convert it in cel_helpers")
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else {}
        return {key: to_cel(properties.get(key, additional), item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        return [to_cel(items, item) for item in value if item is not None]
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def evaluate_rule(rule: str, schema: dict[str, Any], value: Any) -> bool:
    """Evaluate one rule with ``self`` bound to ``value`` (typed by ``schema``). Raises on a runtime
    error (as the apiserver refuses the object then) and when the rule does not return a bool."""
    program = compile_rule(rule)
    if "oldSelf" in program.variables():
        raise NotImplementedError(f"transition rule {rule!r}: evaluating oldSelf needs the old object")
    context = cel.Context(variables={"self": to_cel(schema, value)}, functions=dict(EXTENSION_FUNCTIONS))
    result = program.execute(context)
    if not isinstance(result, bool):
        raise TypeError(f"rule {rule!r} returned {result!r}, not a bool")
    return result


def cel_errors(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Messages of the CEL rules ``value`` breaks, as '<path>: <message>' like the apiserver says."""
    return _cel_errors(schema, with_defaults(schema, value), path)


def _cel_errors(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    errors = []
    if value is None:
        return errors
    for validation in schema.get("x-kubernetes-validations", []):
        rule = validation["rule"]
        try:
            passed = evaluate_rule(rule, schema, value)
        except NotImplementedError:
            raise
        except Exception as error:  # noqa: BLE001 - the apiserver refuses the object on any runtime error
            errors.append(f"{_where(path)}: rule {rule!r} failed to evaluate: {type(error).__name__}: {error}")
            continue
        if not passed:
            errors.append(f"{_where(path)}: {validation.get('message') or f'failed rule: {rule}'}")
    if isinstance(value, dict):
        for name, child in (schema.get("properties") or {}).items():
            if name in value:
                errors += _cel_errors(child, value[name], f"{path}.{name}")
        if isinstance(schema.get("additionalProperties"), dict):
            for key, item in value.items():
                errors += _cel_errors(schema["additionalProperties"], item, f"{path}.{key}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            errors += _cel_errors(schema["items"], item, f"{path}[{index}]")
    return errors


def re2_end_of_text(pattern: str) -> str:
    """``pattern`` for Python's ``re`` with RE2's meaning of ``$``: the end of the text. (Python's
    ``$`` also matches before a final newline, so ``'1Mi\\n'`` would pass ``^...$``; the apiserver's
    Go regexp refuses it.) ``$`` escaped or in a character class is left alone."""
    out, index, in_class = [], 0, False
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            out.append(pattern[index:index + 2])
            index += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            # a `]` first in the class (after an optional `^`) is a literal
            lead = "^]" if pattern.startswith("^]", index + 1) else "]" if pattern.startswith("]", index + 1) else ""
            out.append(char + lead)
            index += 1 + len(lead)
            continue
        elif char == "$":
            char = r"\Z"
        out.append(char)
        index += 1
    return "".join(out)


def _re2_pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not re.search(re2_end_of_text(pattern), instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


# Draft 4 as the apiserver applies it: `pattern` with RE2's `$`. The rest is as jsonschema has it,
# which for an int-or-string node (`anyOf: [{type: integer}, {type: string}]` with pattern, maxLength
# and minimum beside it) is what the apiserver does too: a bool or a float is neither type, `pattern`
# and `maxLength` apply to strings only and `minimum` to numbers only.
ApiserverValidator = jsonschema.validators.extend(jsonschema.Draft4Validator, {"pattern": _re2_pattern})


def openapi_errors(obj: dict[str, Any]) -> list[str]:
    """What the OpenAPI part of the schema says about ``obj``, as '<path>: <message>'."""
    validator = ApiserverValidator(crd_schema())
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in validator.iter_errors(obj)
    ]


def schema_errors(obj: dict[str, Any]) -> list[str]:
    """Every reason the apiserver would refuse ``obj`` (a whole ModelEndpoint), as readable strings."""
    errors = openapi_errors(obj)
    if errors:  # the apiserver runs CEL only on objects that passed the schema
        return errors
    return cel_errors(crd_schema(), obj)
