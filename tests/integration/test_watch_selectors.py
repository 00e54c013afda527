"""The operator's watches of Deployments, Pods, Services, HorizontalPodAutoscalers and
PodDisruptionBudgets carry a server-side label selector, so
the apiserver sends only slotkeeper's objects: memory and CPU follow the endpoints, not the cluster.
(kopf's ``labels=`` filters on handlers run client-side and send nothing.)"""

from __future__ import annotations

from kmock_cluster import DEPLOYMENTS, HPAS, MODELENDPOINTS, PDBS, PODS, SERVICES
from slotkeeper.owned import OWNED_SELECTOR
from test_operator import healthy_endpoint


def reads(kmock, resource):
    return [r for r in list(kmock) if r.resource == resource and str(r.method).upper().endswith("GET") and not r.name]


async def test_owned_resources_are_listed_and_watched_with_the_label_selector(operator, k8s, kmock):
    await healthy_endpoint(k8s)
    for resource in (DEPLOYMENTS, PODS, SERVICES, HPAS, PDBS):
        found = reads(kmock, resource)
        assert found, f"no list/watch of {resource.plural}"
        assert {r.params.get("labelSelector") for r in found} == {OWNED_SELECTOR}, resource.plural
    # The endpoints themselves are watched whole: every ModelEndpoint is the operator's business.
    assert all(not r.params.get("labelSelector") for r in reads(kmock, MODELENDPOINTS))
