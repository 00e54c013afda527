"""The upstream Gateway API HTTPRoute CRD (v1.6.1, standard channel, in ``../shared/gateway-api/``) as
a validator: its structural schema (draft 4 as the apiserver applies it, with RE2's ``$``) and every
``x-kubernetes-validations`` CEL rule, evaluated by the conformant implementation of cel_helpers.

Every route slotkeeper renders or patches is checked here, so a route the real apiserver refuses
fails a unit test instead of a rollout.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from .cel_helpers import ApiserverValidator, all_rules, cel_errors

REPO_ROOT = Path(__file__).resolve().parents[2]
GATEWAY_API_DIR = REPO_ROOT.parent / "shared" / "gateway-api"
HTTPROUTE_CRD = GATEWAY_API_DIR / "gateway.networking.k8s.io_httproutes.yaml"


@lru_cache(maxsize=None)
def httproute_crd() -> dict[str, Any]:
    return yaml.safe_load(HTTPROUTE_CRD.read_text())


@lru_cache(maxsize=None)
def httproute_schema(version: str = "v1") -> dict[str, Any]:
    (found,) = [v for v in httproute_crd()["spec"]["versions"] if v["name"] == version]
    return found["schema"]["openAPIV3Schema"]


def httproute_rules(version: str = "v1") -> list:
    return list(all_rules(httproute_schema(version)))


def httproute_errors(route: dict[str, Any], version: str = "v1") -> list[str]:
    """Why the apiserver with the upstream CRD would refuse ``route`` (empty: it is accepted)."""
    schema = httproute_schema(version)
    errors = [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
              for e in ApiserverValidator(schema).iter_errors(route)]
    if errors:
        return errors
    return cel_errors(schema, route)
