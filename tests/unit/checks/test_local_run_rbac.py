"""manifests/rbac/local-run/: exactly the proxy permissions the apiserver-proxy access mode uses, and
nothing of the install refers to it (the in-cluster operator neither needs nor gets them)."""

from __future__ import annotations

from pathlib import Path

import yaml

from slotkeeper.checks.access import pod_proxy_url, service_proxy_url

ROOT = Path(__file__).resolve().parents[3]
LOCAL_RUN = ROOT / "manifests" / "rbac" / "local-run"
# The HTTP method of each proxied request (validation.send_validation POSTs; scrape._scrape_one GETs) and
# the verb Kubernetes authorizes it as: POST -> create, GET -> get.
USED = {("", "services/proxy"): {"create"}, ("", "pods/proxy"): {"get"}}


def test_the_local_run_role_grants_exactly_the_proxy_verbs():
    (role,) = [doc for doc in yaml.safe_load_all((LOCAL_RUN / "cluster_role.yaml").read_text()) if doc]
    assert (role["kind"], role["metadata"]["name"]) == ("ClusterRole", "slotkeeper-operator-local-run")
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert not rule.get("resourceNames"), "pod names change with every rollout: resourceNames cannot list them"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    assert grants == USED


def test_the_urls_name_those_subresources():
    assert "/services/credit-green:http/proxy/" in service_proxy_url("https://k", "ml", "credit-green", "http", "x")
    assert "/pods/p:8080/proxy/" in pod_proxy_url("https://k", "ml", "p", 8080, "x")


def test_no_kustomization_of_the_install_includes_local_run():
    assert yaml.safe_load((LOCAL_RUN / "kustomization.yaml").read_text())["resources"] == ["cluster_role.yaml"]
    for kustomization in (ROOT / "manifests").rglob("kustomization.yaml"):
        if LOCAL_RUN in kustomization.parents or kustomization.parent == LOCAL_RUN:
            continue
        for resource in yaml.safe_load(kustomization.read_text()).get("resources", []):
            target = (kustomization.parent / resource).resolve()
            assert target != LOCAL_RUN and LOCAL_RUN not in target.parents, f"{kustomization} includes {resource}"
