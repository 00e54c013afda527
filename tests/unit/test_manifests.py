"""The install manifests, read as plain YAML (no kubectl, no cluster): least-privilege RBAC, a
restricted operator Deployment, images that agree with the Makefile, a CRD copy that matches the
models, kustomizations that list files that exist, and example ModelEndpoints the API would accept."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import yaml

from slotkeeper.api import DEFAULT_SERVING_IMAGE, ModelEndpointSpec
from slotkeeper.crd import CRD_FILE_NAME, render_crd, render_crd_yaml

from .cel_helpers import cel_errors, crd_schema

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
NAMESPACE = "slotkeeper-system"
OPERATOR = "slotkeeper-operator"
OPERATOR_IMAGE_NAME = "ghcr.io/slotkeeper/operator"
SERVING_IMAGE_NAME = "ghcr.io/slotkeeper/serving"
LIVENESS_ARG = "--liveness=http://0.0.0.0:8080/healthz"
METRICS_ARG = "--metrics-bind-address=:8081"

# Every API call the operator makes, and nothing else: (apiGroup, resource) -> verbs, exactly.
ALLOWED = {
    ("slotkeeper.io", "modelendpoints"): {"get", "list", "watch", "patch"},
    ("slotkeeper.io", "modelendpoints/status"): {"get", "patch"},
    # blockOwnerDeletion under OwnerReferencesPermissionEnforcement (OpenShift); no request of ours.
    ("slotkeeper.io", "modelendpoints/finalizers"): {"update"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch"},
    ("", "services"): {"get", "list", "watch", "create", "patch"},
    ("autoscaling", "horizontalpodautoscalers"): {"get", "list", "watch", "create", "patch", "delete"},
    ("policy", "poddisruptionbudgets"): {"get", "list", "watch", "create", "patch"},
    ("gateway.networking.k8s.io", "httproutes"): {"list", "watch", "create", "patch", "delete"},
    # The quality monitor's Job: created once per episode (409: made already), watched for its outcome.
    ("batch", "jobs"): {"list", "watch", "create"},
    ("batch", "cronjobs"): {"create", "patch", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    # Endpoint keys: create <name>-keys when missing, get one Secret when a validation request needs
    # its key. No list or watch (no Secret cache), no patch (a key is never overwritten).
    ("", "secrets"): {"get", "create"},
    ("", "events"): {"create"},
    ("events.k8s.io", "events"): {"create"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
}
CLUSTER_SCOPED = {("apiextensions.k8s.io", "customresourcedefinitions")}
# Leader election, in the operator's namespace only (a Role of its own, in both installs): read the
# Lease, create it once, update it (renew, take over, release). Nothing else.
LEADER_ELECTION = "slotkeeper-operator-leader-election"
LEADER_ELECTION_ALLOWED = {("coordination.k8s.io", "leases"): {"get", "create", "update"}}


# ------------------------------------------------------------------------------------------ helpers


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifest(relative: str, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [doc for doc in load_docs(MANIFESTS / relative)
             if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} in {relative}, found {len(found)}"
    return found[0]


def kustomizations() -> list[Path]:
    return sorted(MANIFESTS.rglob("kustomization.yaml"))


def makefile_variables() -> dict[str, str]:
    """`NAME ?= value` / `NAME := value` / `NAME = value` lines of the Makefile, $(VAR) expanded."""
    raw: dict[str, str] = {}
    for line in (ROOT / "Makefile").read_text().splitlines():
        match = re.match(r"^([A-Z_]+)\s*[?:]?=\s*(.*?)\s*$", line)
        if match:
            raw.setdefault(match.group(1), match.group(2))

    def expand(value: str) -> str:
        return re.sub(r"\$\(([A-Z_]+)\)", lambda m: expand(raw[m.group(1)]), value)

    return {name: expand(value) for name, value in raw.items() if "$(if" not in value and "$(wildcard" not in value}


def split_image(image: str) -> tuple[str, str]:
    name, _, tag = image.rpartition(":")
    assert name and "/" not in tag, f"{image} has no tag"
    return name, tag


def images_entry(kustomization: str, name: str) -> dict[str, Any]:
    entries = [e for e in yaml.safe_load((MANIFESTS / kustomization).read_text()).get("images", []) if e["name"] == name]
    assert len(entries) == 1, f"{kustomization} has {len(entries)} images entries for {name}"
    return entries[0]


def operator_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def rule_grants(rules: list[dict[str, Any]]) -> Iterator[tuple[tuple[str, str], set[str], dict[str, Any]]]:
    for rule in rules:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                yield (group, resource), set(rule["verbs"]), rule


def examples() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted((MANIFESTS / "examples").rglob("*.yaml")):
        for doc in load_docs(path):
            if doc.get("kind") == "ModelEndpoint":
                found.append((f"{path.relative_to(MANIFESTS)}:{doc['metadata']['name']}", doc))
    return found


# --------------------------------------------------------------------------------- kustomizations


@pytest.mark.parametrize("kustomization", kustomizations(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_kustomization_lists_files_that_exist(kustomization: Path):
    spec = yaml.safe_load(kustomization.read_text())
    base = kustomization.parent
    for resource in spec.get("resources", []):
        target = (base / resource).resolve()
        assert target.exists(), f"{kustomization}: resource {resource} does not exist"
        if target.is_dir():
            assert (target / "kustomization.yaml").is_file(), f"{resource} is a directory without kustomization.yaml"
        else:
            assert load_docs(target), f"{resource} holds no object"
    for generator in spec.get("configMapGenerator", []) + spec.get("secretGenerator", []):
        for entry in generator.get("files", []):
            assert (base / entry.split("=", 1)[-1]).is_file(), f"{kustomization}: file {entry} does not exist"
    for patch in spec.get("patches", []):
        if "path" in patch:
            assert (base / patch["path"]).is_file(), f"{kustomization}: patch {patch['path']} does not exist"
        else:
            assert "patch" in patch, f"{kustomization}: a patch with neither path nor patch"


def test_every_manifest_file_is_listed_by_some_kustomization():
    listed = set()
    for kustomization in kustomizations():
        for resource in yaml.safe_load(kustomization.read_text()).get("resources", []):
            listed.add((kustomization.parent / resource).resolve())
    # Files meant to be applied on their own, not through kustomize:
    standalone = {"argocd", "examples"}
    for path in MANIFESTS.rglob("*.yaml"):
        relative = path.relative_to(MANIFESTS)
        if path.name == "kustomization.yaml" or relative.parts[0] in standalone:
            continue
        assert path.resolve() in listed, f"{relative} is in no kustomization"


# ------------------------------------------------------------------------------------------ the CRD


def test_crd_copy_is_identical_to_the_rendered_crd():
    copy = MANIFESTS / "crd" / CRD_FILE_NAME
    assert copy.read_text() == render_crd_yaml(), "manifests/crd/ is stale: run `make crd`"
    assert yaml.safe_load(copy.read_text()) == render_crd()


def test_crd_copy_matches_crds_directory():
    committed = ROOT / "crds" / CRD_FILE_NAME
    if not committed.exists():
        pytest.skip("crds/ has no CRD yet")
    assert (MANIFESTS / "crd" / CRD_FILE_NAME).read_text() == committed.read_text(), "run `make crd`"


# ------------------------------------------------------------------------------------------- RBAC


def test_cluster_role_grants_exactly_what_the_operator_uses():
    role = manifest("rbac/cluster_role.yaml", "ClusterRole", OPERATOR)
    granted: dict[tuple[str, str], set[str]] = {}
    for key, verbs, rule in rule_grants(role["rules"]):
        assert key in ALLOWED, f"{key} is not something the operator uses"
        assert verbs == ALLOWED[key], f"{key}: verbs {sorted(verbs)}, the operator uses {sorted(ALLOWED[key])}"
        assert not ({"resourceNames", "nonResourceURLs"} & rule.keys())
        assert key not in granted, f"{key} granted twice"
        granted[key] = verbs
    assert granted.keys() == ALLOWED.keys(), f"missing: {sorted(ALLOWED.keys() - granted.keys())}"


def test_namespaced_role_grants_the_same_minus_cluster_scoped_resources():
    role = manifest("overlays/namespaced/role.yaml", "Role", OPERATOR)
    granted = {}
    for key, verbs, rule in rule_grants(role["rules"]):
        assert key in ALLOWED and key not in CLUSTER_SCOPED, f"{key} does not belong in a Role"
        assert verbs == ALLOWED[key], f"{key}: verbs {sorted(verbs)}, the operator uses {sorted(ALLOWED[key])}"
        granted[key] = verbs
    assert granted.keys() == ALLOWED.keys() - CLUSTER_SCOPED


def test_leader_election_is_a_role_in_the_operator_namespace_with_only_the_verbs_it_uses():
    role = manifest("operator/leader_election_role.yaml", "Role", LEADER_ELECTION)
    granted = {key: verbs for key, verbs, rule in rule_grants(role["rules"])}
    assert granted == LEADER_ELECTION_ALLOWED
    binding = manifest("operator/leader_election_role.yaml", "RoleBinding", LEADER_ELECTION)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": LEADER_ELECTION}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": OPERATOR}]
    # Leases are nowhere in the cluster-wide rules (the operator may not touch other namespaces' Leases).
    cluster_role = manifest("rbac/cluster_role.yaml", "ClusterRole", OPERATOR)
    assert not [key for key, _, _ in rule_grants(cluster_role["rules"]) if key[1] == "leases"]


def test_no_wildcards_anywhere_in_rbac():
    for path in [MANIFESTS / "rbac" / "cluster_role.yaml", MANIFESTS / "overlays" / "namespaced" / "role.yaml",
                 MANIFESTS / "operator" / "leader_election_role.yaml"]:
        for doc in load_docs(path):
            for rule in doc.get("rules", []):  # bindings have none
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule.get(field, []), f"{path.name}: wildcard in {field}"


def test_bindings_give_the_roles_to_the_operator_service_account():
    account = manifest("operator/service_account.yaml", "ServiceAccount", OPERATOR)
    cluster_binding = manifest("rbac/cluster_role_binding.yaml", "ClusterRoleBinding", OPERATOR)
    assert cluster_binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": OPERATOR}
    assert cluster_binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                            "namespace": NAMESPACE}]
    binding = manifest("overlays/namespaced/role_binding.yaml", "RoleBinding", OPERATOR)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": OPERATOR}
    # No namespace: kustomize fills in the overlay's.
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": OPERATOR}]
    deployment = manifest("operator/deployment.yaml", "Deployment", OPERATOR)
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == OPERATOR


def test_base_namespace_matches_bindings_and_enforces_restricted_pod_security():
    base = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert base["namespace"] == NAMESPACE
    namespace = manifest("namespace.yaml", "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# ------------------------------------------------------------------------------ the operator Deployment


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    return manifest("operator/deployment.yaml", "Deployment", OPERATOR)


def test_two_replicas_elect_a_leader_and_roll_one_at_a_time(deployment):
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    assert "--leader-elect" in operator_container(deployment)["args"]
    env = {e["name"]: e for e in operator_container(deployment)["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}  # the identity


def test_replicas_prefer_different_nodes_and_a_drain_keeps_one(deployment):
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (term,) = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()
    budget = manifest("operator/disruption_budget.yaml", "PodDisruptionBudget", OPERATOR)
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_pod_meets_the_restricted_pod_security_standard(deployment):
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert isinstance(pod["securityContext"]["runAsUser"], int) and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    context = operator_container(deployment)["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert not context.get("privileged")


def test_liveness_probe_reaches_kopfs_liveness_endpoint(deployment):
    container = operator_container(deployment)
    assert LIVENESS_ARG in container["args"]
    probe = container["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert probe["path"] == "/healthz"
    assert ports.get(probe["port"], probe["port"]) == 8080


def test_resources_are_requested_and_memory_is_limited(deployment):
    resources = operator_container(deployment)["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert "memory" in resources["limits"]


def test_environment_names_pod_namespace_and_default_serving_image(deployment):
    env = {e["name"]: e for e in operator_container(deployment)["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["SLOTKEEPER_DEFAULT_SERVING_IMAGE"]["value"] == makefile_variables()["SERVING_IMAGE"]


def test_writable_tmp_on_a_read_only_root(deployment):
    pod = deployment["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in operator_container(deployment)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_namespaced_overlay_watches_only_its_own_namespace():
    overlay = yaml.safe_load((MANIFESTS / "overlays" / "namespaced" / "kustomization.yaml").read_text())
    assert "../../operator" in overlay["resources"]
    assert not any(r.rstrip("/") in ("../..", "../../rbac", "../../crd") for r in overlay["resources"])
    (patch,) = [p for p in overlay["patches"] if p.get("target", {}).get("kind") == "Deployment"]
    (operation,) = yaml.safe_load(patch["patch"])
    assert operation["path"] == "/spec/template/spec/containers/0/args"
    assert operation["value"] == ["--namespace=$(POD_NAMESPACE)", LIVENESS_ARG, METRICS_ARG, "--leader-elect"]


# ---------------------------------------------------------------------------------------- images


def test_makefile_images_default_to_the_published_names():
    variables = makefile_variables()
    assert split_image(variables["OPERATOR_IMAGE"])[0] == OPERATOR_IMAGE_NAME
    assert variables["SERVING_IMAGE"] == DEFAULT_SERVING_IMAGE


def test_operator_image_tag_comes_from_the_makefile(deployment):
    name, tag = split_image(makefile_variables()["OPERATOR_IMAGE"])
    entry = images_entry("operator/kustomization.yaml", OPERATOR_IMAGE_NAME)
    assert (entry.get("newName", entry["name"]), entry["newTag"]) == (name, tag)
    assert operator_container(deployment)["image"] == OPERATOR_IMAGE_NAME, "the tag belongs in images:, not here"


def test_demo_serving_image_tag_comes_from_the_makefile():
    name, tag = split_image(makefile_variables()["SERVING_IMAGE"])
    entry = images_entry("examples/demo/kustomization.yaml", SERVING_IMAGE_NAME)
    assert (entry.get("newName", entry["name"]), entry["newTag"]) == (name, tag)


def _images_in(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key in ("containers", "initContainers"):
            for container in node.get(key, []) if isinstance(node.get(key), list) else []:
                yield container["image"]
        for value in node.values():
            yield from _images_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from _images_in(value)


def test_manifests_reference_only_the_two_images_untagged():
    for path in MANIFESTS.rglob("*.yaml"):
        for doc in load_docs(path):
            if doc.get("kind") == "CustomResourceDefinition":
                continue
            if doc.get("kind") == "ModelEndpoint":  # a retraining Job runs the user's own image
                doc = {**doc, "spec": {k: v for k, v in doc["spec"].items() if k != "monitor"}}
            for image in _images_in(doc):
                assert image in (OPERATOR_IMAGE_NAME, SERVING_IMAGE_NAME), (
                    f"{path.relative_to(MANIFESTS)}: image {image}: name it untagged and tag it with images:")


# -------------------------------------------------------------------------------------- examples


def test_examples_cover_each_strategy_and_check_source():
    specs = [ModelEndpointSpec.model_validate(doc["spec"]) for _, doc in examples()]
    assert any(s.strategy.blue_green for s in specs)
    assert any(s.strategy.canary and any(m.source == "pods" for m in s.checks.metrics) for s in specs)
    assert any(m.source == "prometheus" for s in specs for m in s.checks.metrics)
    assert any(s.model.format == "score-py" for s in specs)
    assert any(s.serving.autoscaling and {m.type for m in s.serving.autoscaling.metrics} == {"Resource", "Pods"}
               and s.serving.disruption_budget for s in specs)
    assert any(s.monitor and any(c.source == "prometheus" for c in s.monitor.checks)
               and s.monitor.on_failure.job and s.monitor.on_failure.revert_to == "previous" for s in specs)
    assert any(s.batch and any(j.schedule for j in s.batch.jobs) and any(not j.schedule for j in s.batch.jobs)
               for s in specs)


@pytest.mark.parametrize(("where", "endpoint"), examples(), ids=[where for where, _ in examples()])
def test_example_is_accepted_by_the_crd_schema_and_the_models(where, endpoint):
    schema = crd_schema()
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft4Validator(schema).iter_errors(endpoint)]
    assert errors == []
    assert cel_errors(schema, endpoint) == []
    ModelEndpointSpec.model_validate(endpoint["spec"])


def test_demo_endpoint_names_a_model_the_file_server_serves():
    endpoint = manifest("examples/demo/endpoint.yaml", "ModelEndpoint", "demo")
    uri = endpoint["spec"]["model"]["uri"]
    assert uri.startswith("http://model-files/")
    assert (MANIFESTS / "examples" / "demo" / "models" / uri.rsplit("/", 1)[1]).is_file()


def _load_model(file: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(compile((MANIFESTS / "examples" / "demo" / "models" / file).read_text(), file, "exec"), namespace)
    return namespace


@pytest.mark.parametrize(("file", "weight"), [("score-v1.py", 0.5), ("score-v2.py", 0.6)])
def test_demo_models_score_rows_like_an_azureml_entry_script(file, weight):
    model = _load_model(file)
    model["init"]()
    assert model["run"](json.dumps({"data": [[1, 2, 3], [0, 0, 1]]})) == {"predict": [6 * weight, weight]}


def test_demo_broken_model_fails_to_load_and_errors_model_fails_requests():
    with pytest.raises(RuntimeError):
        _load_model("broken.py")["init"]()
    errors = _load_model("errors.py")
    errors["init"]()
    with pytest.raises(RuntimeError):
        errors["run"](json.dumps({"data": [[1, 2, 3]]}))


# ---------------------------------------------------------------- with kustomize, where kubectl exists


@pytest.fixture(scope="module")
def kustomize():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the kustomize builds are checked from the YAML alone")

    def build(relative: str) -> list[dict[str, Any]]:
        result = subprocess.run([kubectl, "kustomize", str(MANIFESTS / relative)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return build


def test_kustomize_builds_the_cluster_wide_install(kustomize):
    objects = {(o["kind"], o["metadata"]["name"]): o for o in kustomize(".")}
    assert set(objects) == {
        ("Namespace", NAMESPACE), ("CustomResourceDefinition", "modelendpoints.slotkeeper.io"),
        ("ServiceAccount", OPERATOR), ("ClusterRole", OPERATOR), ("ClusterRoleBinding", OPERATOR),
        ("Deployment", OPERATOR), ("Service", f"{OPERATOR}-metrics"), ("PodDisruptionBudget", OPERATOR), ("Role", LEADER_ELECTION),
        ("RoleBinding", LEADER_ELECTION),
    }
    # The leader-election Role and its binding live in the operator's namespace, for its account.
    assert objects[("Role", LEADER_ELECTION)]["metadata"]["namespace"] == NAMESPACE
    assert objects[("RoleBinding", LEADER_ELECTION)]["subjects"] == [
        {"kind": "ServiceAccount", "name": OPERATOR, "namespace": NAMESPACE}]
    deployment = objects[("Deployment", OPERATOR)]
    assert deployment["metadata"]["namespace"] == NAMESPACE
    assert operator_container(deployment)["image"] == makefile_variables()["OPERATOR_IMAGE"]


def test_kustomize_builds_the_namespaced_install(kustomize):
    objects = kustomize("overlays/namespaced")
    namespace = yaml.safe_load((MANIFESTS / "overlays" / "namespaced" / "kustomization.yaml").read_text())["namespace"]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == [
        ("Deployment", OPERATOR), ("PodDisruptionBudget", OPERATOR), ("Role", OPERATOR), ("Role", LEADER_ELECTION),
        ("RoleBinding", OPERATOR), ("RoleBinding", LEADER_ELECTION), ("Service", f"{OPERATOR}-metrics"),
        ("ServiceAccount", OPERATOR)]
    assert {o["metadata"]["namespace"] for o in objects} == {namespace}
    for binding in [o for o in objects if o["kind"] == "RoleBinding"]:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": OPERATOR, "namespace": namespace}]
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    container = operator_container(deployment)
    assert container["args"][0] == "--namespace=$(POD_NAMESPACE)"
    assert container["image"] == makefile_variables()["OPERATOR_IMAGE"]


def test_kustomize_builds_the_demo(kustomize):
    objects = kustomize("examples/demo")
    (configmap,) = [o for o in objects if o["kind"] == "ConfigMap"]
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["volumes"][0]["configMap"]["name"] == configmap["metadata"]["name"]
    assert pod["containers"][0]["image"] == makefile_variables()["SERVING_IMAGE"]
    assert {"score-v1.py", "score-v2.py", "broken.py", "errors.py"} <= configmap["data"].keys()
