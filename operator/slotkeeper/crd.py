"""Render the ModelEndpoint CustomResourceDefinition from the pydantic models.

Pydantic emits JSON Schema (draft 2020-12); a CRD needs a *structural* OpenAPI v3.0 schema:
no ``$ref``, no ``anyOf`` with ``null``, boolean ``exclusiveMinimum``, no ``additionalProperties: true``, no ``const``
(free-form fields say ``x-kubernetes-preserve-unknown-fields``), and no ``title``. :func:`structural`
does that translation; everything else (ranges, enums, patterns, CEL rules, descriptions, defaults)
passes through unchanged, so the models stay the one source of truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from . import api

CRD_FILE_NAME = f"{api.PLURAL}.{api.GROUP}.yaml"

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Active", "type": "string", "jsonPath": ".status.activeSlot", "description": "The slot with traffic"},
    {"name": "Stable", "type": "string", "jsonPath": ".status.stableRevision"},
    {"name": "Candidate", "type": "string", "jsonPath": ".status.candidateRevision"},
    {"name": "Traffic", "type": "string", "jsonPath": ".status.trafficSummary"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def structural(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Translate one pydantic JSON-schema node (and its children) into a structural CRD schema."""
    defs = schema.get("$defs", {}) if defs is None else defs
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return structural(merged, defs)
    if schema.get("x-kubernetes-int-or-string"):
        # The one union a structural schema allows: `anyOf: [{type: integer}, {type: string}]` and no
        # `type` beside it; value validations (pattern, maxLength, minimum...) sit at this level.
        if schema.get("anyOf") != [{"type": "integer"}, {"type": "string"}] or "type" in schema:
            raise ValueError(f"an int-or-string node has no type and anyOf [integer, string]: {schema}")
        return {k: v for k, v in schema.items() if k != "title"}
    if "anyOf" in schema:
        options = [option for option in schema["anyOf"] if option.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union of {len(options)} types structurally: {schema}")
        rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default") or (k == "default" and v is not None)}
        return structural({**options[0], **rest}, defs)

    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("title", "$defs") or (key == "default" and value is None):
            continue
        if key == "properties":
            out[key] = {name: structural(child, defs) for name, child in value.items()}
        elif key == "items":
            out[key] = structural(value, defs)
        elif key == "additionalProperties":
            if value is True:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif isinstance(value, dict):
                out[key] = structural(value, defs)
            # `false` (extra="forbid") is what pruning does anyway; CRDs reject it beside `properties`.
        elif key == "const":  # JSONSchemaProps has no const: a one-value enum says the same
            out["enum"] = [value]
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        else:
            out[key] = value
    if out.get("x-kubernetes-preserve-unknown-fields") and "type" not in out and "properties" not in out:
        out["type"] = "object"
    return out


def openapi_schema() -> dict[str, Any]:
    """The CRD's openAPIV3Schema for the whole object."""
    spec = structural(api.ModelEndpointSpec.model_json_schema(by_alias=True, mode="validation"))
    status = structural(api.ModelEndpointStatus.model_json_schema(by_alias=True, mode="serialization"))
    status.pop("required", None)  # the operator fills status gradually; kopf may add its own keys
    status["x-kubernetes-preserve-unknown-fields"] = True
    return {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {
                        "type": "string",
                        "maxLength": api.MAX_ENDPOINT_NAME_LENGTH,
                        # Slot Services are named "<name>-blue": the name must be a DNS-1035 label.
                        "pattern": r"^[a-z]([-a-z0-9]*[a-z0-9])?$",
                    },
                },
            },
            "spec": spec,
            "status": status,
        },
    }


def render_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{api.PLURAL}.{api.GROUP}", "labels": {"app.kubernetes.io/part-of": "slotkeeper"}},
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": api.SHORT_NAMES,
                "categories": api.CATEGORIES,
            },
            "versions": [{
                "name": api.VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": openapi_schema()},
            }],
        },
    }


def render_crd_yaml() -> str:
    header = "# Generated by `slotkeeper crd` from operator/slotkeeper/api.py. Do not edit by hand.\n"
    return header + yaml.dump(render_crd(), Dumper=_PlainDumper, sort_keys=False, width=120)


class _PlainDumper(yaml.SafeDumper):
    """No anchors and aliases (&id001, *id001) for the lists pydantic shares between schema nodes."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def write_crd(directory: Path) -> Path:
    path = directory / CRD_FILE_NAME
    path.write_text(render_crd_yaml())
    return path
