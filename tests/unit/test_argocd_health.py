"""The Argo CD health check for ModelEndpoint, run for real in Lua 5.1 (what Argo CD's gopher-lua
speaks) over a table of status objects, the way Argo CD calls it: ``obj`` is the live object and the
script returns ``{status, message}``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51  # Lua 5.1, like Argo CD's gopher-lua


ROOT = Path(__file__).resolve().parents[2]
HEALTH_LUA = ROOT / "manifests" / "argocd" / "health.lua"
CM_PATCH = ROOT / "manifests" / "argocd" / "argocd-cm-patch.yaml"
HEALTH_KEY = "resource.customizations.health.slotkeeper.io_ModelEndpoint"


def run_health_check(obj: dict[str, Any], script: str | None = None) -> dict[str, str]:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(script if script is not None else HEALTH_LUA.read_text())
    return {key: result[key] for key in ("status", "message")}


def condition(type: str, status: str, reason: str, message: str) -> dict[str, Any]:
    return {"type": type, "status": status, "reason": reason, "message": message,
            "observedGeneration": 3, "lastTransitionTime": "2026-11-21T09:00:00Z"}


def endpoint(status: dict[str, Any] | None, generation: int = 3) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "slotkeeper.io/v1alpha1", "kind": "ModelEndpoint",
        "metadata": {"name": "credit", "namespace": "ml", "generation": generation},
        "spec": {"model": {"name": "credit", "uri": "file:///models/credit/7/model.joblib"}},
    }
    if status is not None:
        obj["status"] = status
    return obj


READY = condition("Ready", "True", "StableRevisionServing", "revision 5d8f9c: 2 ready in slot blue")
NOT_READY = condition("Ready", "False", "NoReadyReplicas", "slot blue (revision 5d8f9c) has no ready replica")
ROLLING = condition("Progressing", "True", "Analysing", "revision a41b2e takes traffic; analysis until 09:05")
AWAITING = condition("Progressing", "True", "AwaitingPromotion", "revision a41b2e is ready in slot green; promote it")
ROLLED_BACK = condition("RolledBack", "True", "PodFailure",
                        "revision a41b2e in slot green: pod credit-green-x: CrashLoopBackOff: back-off")
DEGRADED = condition("Degraded", "True", "NoReadyReplicas", "slot blue (revision 5d8f9c) has no ready replica")

CASES = [
    pytest.param(endpoint(None), "Progressing", "Waiting for the operator", id="no-status"),
    pytest.param(endpoint({}), "Progressing", "Waiting for the operator", id="empty-status"),
    pytest.param(endpoint({"phase": "Healthy", "conditions": [READY]}), "Progressing", "Waiting for the operator",
                 id="status-without-observed-generation"),
    pytest.param(endpoint({"observedGeneration": 2, "phase": "Healthy", "conditions": [READY]}, generation=3),
                 "Progressing", "Waiting for the operator", id="stale-observed-generation"),
    pytest.param(endpoint({"observedGeneration": 3, "phase": "Healthy", "conditions": [READY]}),
                 "Healthy", READY["message"], id="healthy"),
    pytest.param(endpoint({"observedGeneration": 3, "phase": "Healthy"}), "Healthy", "Serving the stable revision",
                 id="healthy-without-conditions"),
    pytest.param(endpoint({"observedGeneration": 4, "phase": "Healthy", "conditions": [READY]}, generation=3),
                 "Healthy", READY["message"], id="observed-generation-ahead"),
    pytest.param(endpoint({"observedGeneration": 3, "phase": "Progressing", "conditions": [READY, ROLLING]}),
                 "Progressing", ROLLING["message"], id="progressing"),
    pytest.param(endpoint({"observedGeneration": 3, "phase": "Pending"}), "Progressing", "Rolling out", id="pending"),
    pytest.param(endpoint({"observedGeneration": 3, "phase": "Paused", "conditions": [READY, AWAITING]}),
                 "Suspended", AWAITING["message"], id="paused-awaiting-promotion"),
    pytest.param(endpoint({"observedGeneration": 3, "phase": "Paused"}), "Suspended", "Paused", id="paused"),
    pytest.param(endpoint({"observedGeneration": 3, "phase": "RolledBack", "conditions": [READY, ROLLED_BACK]}),
                 "Degraded", ROLLED_BACK["message"], id="rolled-back-says-why"),
    pytest.param(endpoint({"observedGeneration": 3, "phase": "Degraded", "conditions": [NOT_READY, DEGRADED]}),
                 "Degraded", DEGRADED["message"], id="degraded"),
    pytest.param(endpoint({"observedGeneration": 3, "phase": "Degraded", "conditions": [NOT_READY]}),
                 "Degraded", NOT_READY["message"], id="degraded-falls-back-to-ready-message"),
    pytest.param(endpoint({"observedGeneration": 3, "conditions": [READY]}), "Progressing",
                 "Waiting for the operator", id="no-phase"),
    pytest.param(endpoint({"observedGeneration": 3, "phase": "Exploded"}), "Unknown", "Unknown phase Exploded",
                 id="unknown-phase"),
]


@pytest.mark.parametrize(("obj", "health", "message"), CASES)
def test_health_check_maps_status_to_argocd_health(obj, health, message):
    assert run_health_check(obj) == {"status": health, "message": message}


def test_health_check_tolerates_an_object_without_generation():
    obj = endpoint({"observedGeneration": 1, "phase": "Healthy"})
    del obj["metadata"]["generation"]
    assert run_health_check(obj)["status"] == "Healthy"


def test_argocd_cm_patch_carries_health_lua_verbatim():
    patch = yaml.safe_load(CM_PATCH.read_text())
    assert patch["kind"] == "ConfigMap"
    assert patch["metadata"] == {"name": "argocd-cm", "namespace": "argocd"}
    assert patch["data"][HEALTH_KEY] == HEALTH_LUA.read_text(), "argocd-cm-patch.yaml differs from health.lua"


def test_argocd_cm_patch_script_runs():
    script = yaml.safe_load(CM_PATCH.read_text())["data"][HEALTH_KEY]
    obj = endpoint({"observedGeneration": 3, "phase": "RolledBack", "conditions": [READY, ROLLED_BACK]})
    assert run_health_check(obj, script)["status"] == "Degraded"
