"""Evaluate a CRD schema the way an apiserver would, without one: JSON schema (OpenAPI v3.0 is
draft 4 for our purposes) plus every ``x-kubernetes-validations`` CEL rule, with cel-python."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterator

import celpy
import jsonschema

from slotkeeper.crd import render_crd


def crd_schema() -> dict[str, Any]:
    return render_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@lru_cache(maxsize=None)
def compile_rule(rule: str) -> celpy.Runner:
    environment = celpy.Environment()
    return environment.program(environment.compile(rule))


def all_rules(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, str, str]]:
    for rule in schema.get("x-kubernetes-validations", []):
        yield path, rule["rule"], rule["message"]
    for name, child in (schema.get("properties") or {}).items():
        yield from all_rules(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from all_rules(schema["items"], f"{path}[*]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from all_rules(schema["additionalProperties"], f"{path}[*]")


def cel_errors(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Messages of the CEL rules ``value`` breaks, as '<path>: <message>' like the apiserver says."""
    errors = []
    if value is None:
        return errors
    for rule in schema.get("x-kubernetes-validations", []):
        result = compile_rule(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)})
        if result is not True and not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            errors.append(f"{path.lstrip('.') or '<root>'}: {rule['message']}")
    if isinstance(value, dict):
        for name, child in (schema.get("properties") or {}).items():
            if name in value:
                errors += cel_errors(child, value[name], f"{path}.{name}")
        if isinstance(schema.get("additionalProperties"), dict):
            for key, item in value.items():
                errors += cel_errors(schema["additionalProperties"], item, f"{path}.{key}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            errors += cel_errors(schema["items"], item, f"{path}[{index}]")
    return errors


def schema_errors(obj: dict[str, Any]) -> list[str]:
    """Every reason the apiserver would refuse ``obj`` (a whole ModelEndpoint), as readable strings."""
    schema = crd_schema()
    validator = jsonschema.Draft4Validator(schema)
    errors = [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in validator.iter_errors(obj)
    ]
    if errors:  # the apiserver runs CEL only on objects that passed the schema
        return errors
    return cel_errors(schema, obj)
