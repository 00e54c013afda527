"""Canary steps judged by what the cluster shows: after every step, each slot's share of the ready
Pods the endpoint Service selects (what kube-proxy routes by) equals ``status.traffic``.

A status computed from what the operator meant to write passed before while the Service kept
selecting one slot (a JSON merge patch cannot drop the ``slot`` key); this test sees the pods.
"""

from __future__ import annotations

from controllers import deployment_controller, selected_shares
from kmock_cluster import MODELENDPOINTS, eventually
from test_operator import FAST_CHECKS, NEW_MODEL, SLOT, selector, status

STEPS = [{"setWeight": 20}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}, {"setWeight": 80}, {"pause": {}}]
CANARY = {
    "model": {"name": "credit", "uri": "file:///models/credit/1/model.joblib"},
    "serving": {"replicas": 2},
    "strategy": {"canary": {"steps": STEPS}},
    "checks": FAST_CHECKS,
}


async def promote(k8s, token: str) -> None:
    await k8s.patch(MODELENDPOINTS, "credit", {"metadata": {"annotations": {"slotkeeper.io/promote": token}}},
                    namespace="default")


async def test_every_canary_step_moves_the_traffic_status_reports(operator, k8s):
    async with deployment_controller(k8s):
        await k8s.create_endpoint("credit", CANARY, namespace="default")
        await eventually(lambda: status(k8s).get("phase") == "Healthy", timeout=10, message="first revision")
        await eventually(lambda: selected_shares(k8s, "credit") == {"blue": 100, "green": 0})
        # The switch shows in status.traffic once the watches have shown it: a pass later.
        await eventually(lambda: status(k8s)["traffic"] == {"blue": 100, "green": 0})

        await k8s.patch_endpoint("credit", {"model": NEW_MODEL}, namespace="default")
        # R=2: setWeight 20 is 1 candidate pod beside 2 (33 %), 50 is 2 and 2, 80 is 2 beside 1 (67 %).
        for step, expected in enumerate(({"blue": 67, "green": 33}, {"blue": 50, "green": 50},
                                         {"blue": 33, "green": 67})):
            def paused_here():
                rollout = status(k8s).get("rollout") or {}
                return status(k8s).get("phase") == "Paused" and rollout.get("canaryStep") == 2 * step + 1
            await eventually(paused_here, timeout=10, message=f"paused after weight step {step + 1}")
            await eventually(lambda: selected_shares(k8s, "credit") == expected,
                             message=f"step {step + 1}: the Service's ready pods give {expected}")
            await eventually(lambda: status(k8s).get("traffic") == selected_shares(k8s, "credit"),
                             message=f"step {step + 1}: status.traffic reports what the pods give")
            assert SLOT not in selector(k8s)  # both slots selected
            await promote(k8s, f"t{step}")

        await eventually(lambda: status(k8s).get("activeSlot") == "green" and status(k8s).get("phase") == "Healthy",
                         timeout=10, message="promoted to green")
        await eventually(lambda: selected_shares(k8s, "credit") == {"blue": 0, "green": 100})
        await eventually(lambda: status(k8s)["traffic"] == {"blue": 0, "green": 100})
