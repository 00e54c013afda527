"""The objects an endpoint owns: owner references, labels, selectors, probes, hardening."""

from __future__ import annotations

from slotkeeper.render import (ANNOTATION_CONFIG, LABEL_ENDPOINT, LABEL_REVISION, LABEL_SLOT, NO_SLOT, config_hash,
                               render_endpoint_service, render_slot_autoscaler, render_slot_deployment,
                               render_slot_disruption_budget, render_slot_service, slot_selector)
from slotkeeper.revision import revision_of

from .world import make_spec

OWNER = {"metadata": {"name": "credit", "namespace": "ml", "uid": "uid-1"}}


def deployment(spec=None, slot="green"):
    spec = spec or make_spec()
    return render_slot_deployment(OWNER, spec, slot, revision_of(spec))


def test_every_object_is_owned_by_the_endpoint():
    for body in (deployment(), render_slot_service(OWNER, "blue"),
                 render_endpoint_service(OWNER, slot_selector("credit", NO_SLOT))):
        (ref,) = body["metadata"]["ownerReferences"]
        assert ref == {"apiVersion": "slotkeeper.io/v1alpha1", "kind": "ModelEndpoint", "name": "credit",
                       "uid": "uid-1", "controller": True, "blockOwnerDeletion": True}
        assert body["metadata"]["namespace"] == "ml"


def test_deployment_is_named_and_labelled_by_slot_and_revision():
    spec = make_spec()
    body = deployment(spec)
    assert body["metadata"]["name"] == "credit-green"
    # Never applied: an apply owns what it names, and dropping replicas later would reset them to 1.
    assert "replicas" not in body["spec"]
    # The selector is immutable: slot only, never the revision.
    assert body["spec"]["selector"]["matchLabels"] == {LABEL_ENDPOINT: "credit", LABEL_SLOT: "green"}
    pod_labels = body["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[LABEL_REVISION] == revision_of(spec)
    assert pod_labels[LABEL_SLOT] == "green"


def test_probes_point_at_the_serving_image_health_paths():
    (container,) = deployment()["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def test_model_server_is_configured_through_its_environment():
    spec = make_spec()
    (container,) = deployment(spec)["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SLOTKEEPER_MODEL_URI"] == "file:///models/credit/1/model.joblib"
    assert env["SLOTKEEPER_MODEL_NAME"] == "credit"
    assert env["SLOTKEEPER_MODEL_FORMAT"] == "sklearn"
    assert env["SLOTKEEPER_MODEL_VERSION"] == revision_of(spec)


def test_pvc_uri_mounts_the_claim_read_only():
    spec = make_spec(uri="pvc://models/credit/7/model.joblib")
    pod = deployment(spec)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SLOTKEEPER_MODEL_URI"] == "file:///mnt/models/models/credit/7/model.joblib"
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in pod["volumes"]
    assert {"name": "model", "mountPath": "/mnt/models/models", "readOnly": True} in container["volumeMounts"]


def test_pods_run_restricted():
    pod = deployment()["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_default_image_comes_from_the_operator_environment(monkeypatch):
    monkeypatch.setenv("SLOTKEEPER_DEFAULT_SERVING_IMAGE", "registry.local/serving:dev")
    (container,) = deployment()["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.local/serving:dev"


def test_services_select_their_slot_and_the_endpoint_selects_what_it_is_told():
    assert render_slot_service(OWNER, "blue")["spec"]["selector"] == {LABEL_ENDPOINT: "credit", LABEL_SLOT: "blue"}
    endpoint = render_endpoint_service(OWNER, slot_selector("credit", None))
    assert endpoint["metadata"]["name"] == "credit"
    assert endpoint["spec"]["selector"] == {LABEL_ENDPOINT: "credit"}
    assert endpoint["spec"]["ports"][0]["targetPort"] == "http"


def test_revision_ignores_replicas_and_key_order_but_not_the_model():
    base = make_spec()
    scaled = base.model_copy(update={"serving": base.serving.model_copy(update={"replicas": 9})})
    assert revision_of(base) == revision_of(scaled)
    assert revision_of(base) != revision_of(make_spec(uri="file:///models/credit/2/model.joblib"))
    assert revision_of(base) != revision_of(make_spec(serving={"replicas": 2, "image": "other:1"}))
    assert len(revision_of(base)) == 10


RESOURCES = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi", "nvidia.com/gpu": 1}}


def test_resources_are_rendered_as_written():
    (container,) = deployment(make_spec(serving={"replicas": 2, "resources": RESOURCES}))["spec"]["template"][
        "spec"]["containers"]
    assert container["resources"] == RESOURCES
    assert type(container["resources"]["limits"]["nvidia.com/gpu"]) is int  # not "1": the user's value
    (container,) = deployment()["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == {}


def test_typed_resources_keep_every_revision_as_it_was():
    """The revision hashes from before serving.resources was typed: upgrading the operator must not
    start a rollout of every endpoint."""
    assert revision_of(make_spec()) == "9c802ca3f2"
    assert revision_of(make_spec(serving={"replicas": 2, "resources": {}})) == "9c802ca3f2"
    assert revision_of(make_spec(serving={"replicas": 2, "resources": RESOURCES})) == "a37e295d82"


# ------------------------------------------------------------------ autoscalers, disruption budgets

CPU = {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
AUTOSCALED = make_spec(serving={"replicas": 2, "autoscaling": {"minReplicas": 2, "maxReplicas": 8, "metrics": [CPU]},
                                "disruptionBudget": {"maxUnavailable": "25%"}})


def test_autoscaling_leaves_the_pod_template_as_it_is_restricted_included():
    plain = make_spec(serving={"replicas": 2})
    assert deployment(AUTOSCALED) == deployment(plain)


def test_an_autoscaler_targets_its_slot_with_the_bounds_asked_and_the_users_targets():
    body = render_slot_autoscaler(OWNER, AUTOSCALED, "green", 3, 8)
    assert (body["apiVersion"], body["kind"], body["metadata"]["name"]) == (
        "autoscaling/v2", "HorizontalPodAutoscaler", "credit-green")
    assert body["spec"] == {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "credit-green"},
                            "minReplicas": 3, "maxReplicas": 8, "metrics": [CPU]}
    assert body["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert body["metadata"]["annotations"][ANNOTATION_CONFIG] == config_hash(body["spec"])
    assert render_slot_autoscaler(OWNER, AUTOSCALED, "green", 2, 8)["metadata"]["annotations"] != \
        body["metadata"]["annotations"]  # a new floor is a new config


def test_a_disruption_budget_covers_its_slots_pods():
    body = render_slot_disruption_budget(OWNER, AUTOSCALED, "blue")
    assert (body["apiVersion"], body["kind"], body["metadata"]["name"]) == ("policy/v1", "PodDisruptionBudget",
                                                                            "credit-blue")
    assert body["spec"] == {"maxUnavailable": "25%", "selector": {"matchLabels": {LABEL_ENDPOINT: "credit",
                                                                                   LABEL_SLOT: "blue"}}}
    assert render_slot_disruption_budget(OWNER, make_spec(), "blue")["spec"]["maxUnavailable"] == 1
