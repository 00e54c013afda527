"""Pure builders of the objects an endpoint owns: slot Deployments, slot Services, the endpoint Service,
and each slot's PodDisruptionBudget and (with autoscaling) HorizontalPodAutoscaler.

Every object carries the endpoint, slot and revision labels and an owner reference to its
ModelEndpoint, so ``kubectl delete mep`` deletes everything and ``kubectl get all -l`` finds it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any
from urllib.parse import urlsplit

from .api import API_VERSION, KIND, ModelEndpointSpec, default_serving_image, keys_secret_name

LABEL_ENDPOINT = "slotkeeper.io/endpoint"
LABEL_SLOT = "slotkeeper.io/slot"
LABEL_REVISION = "slotkeeper.io/revision"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
# On autoscalers and disruption budgets: a hash of the spec slotkeeper rendered, so a pass compares
# what it wants with what it wrote, not with the apiserver's defaulted copy.
ANNOTATION_CONFIG = "slotkeeper.io/config"
DEFAULT_MAX_UNAVAILABLE = 1
MANAGED_BY = "slotkeeper"
# The endpoint Service selects this slot before any revision is ready: it matches no pod.
NO_SLOT = "none"
SERVICE_PORT = 80
PVC_MOUNT_ROOT = "/mnt/models"
CACHE_DIR = "/var/cache/slotkeeper"
DEFAULT_SERVICE_ACCOUNT = "default"
# The serving image keeps answering this long after SIGTERM (SLOTKEEPER_SHUTDOWN_DELAY_SECONDS), then
# drains; requests in flight get DRAIN_SECONDS more. 5 + 25 is Kubernetes' own default grace period.
DEFAULT_SHUTDOWN_DELAY_SECONDS = 5
DRAIN_SECONDS = 25
# A keyed endpoint's pods mount its keys Secret here (read-only, group-readable only: 0440 with the
# image's group as fsGroup); the serving image reads SLOTKEEPER_KEYS_DIR. The key is never in env.
KEYS_DIR = "/var/run/slotkeeper/keys"
KEYS_VOLUME = "keys"
KEYS_FILE_MODE = 0o440
SERVING_GROUP = 10001  # the serving image's group (serving-image/Dockerfile)
KEY_NAMES = ("primary", "secondary")


def slot_object_name(endpoint: str, slot: str) -> str:
    return f"{endpoint}-{slot}"


def endpoint_url(endpoint: str, namespace: str) -> str:
    return f"http://{endpoint}.{namespace}.svc.cluster.local"


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    meta = owner["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _labels(endpoint: str, slot: str | None = None, revision: str | None = None) -> dict[str, str]:
    labels = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_ENDPOINT: endpoint}
    if slot:
        labels[LABEL_SLOT] = slot
    if revision:
        labels[LABEL_REVISION] = revision
    return labels


def slot_selector(endpoint: str, slot: str | None) -> dict[str, str]:
    """The endpoint Service's selector: one slot, or (slot=None) every slot of the endpoint (canary)."""
    selector = {LABEL_ENDPOINT: endpoint}
    if slot is not None:
        selector[LABEL_SLOT] = slot
    return selector


def _metadata(owner: dict[str, Any], name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner["metadata"]["namespace"],
        "labels": labels,
        "ownerReferences": [owner_reference(owner)],
    }


def model_location(uri: str) -> tuple[str, dict[str, Any] | None, dict[str, Any] | None]:
    """The URI the server loads, plus the volume and mount a ``pvc://claim/path`` URI needs."""
    parts = urlsplit(uri)
    if parts.scheme != "pvc":
        return uri, None, None
    claim = parts.netloc
    mount_path = f"{PVC_MOUNT_ROOT}/{claim}"
    volume = {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
    mount = {"name": "model", "mountPath": mount_path, "readOnly": True}
    return f"file://{mount_path}{parts.path}", volume, mount


def render_slot_deployment(owner: dict[str, Any], spec: ModelEndpointSpec, slot: str, revision: str,
                           replicas: int | None = None) -> dict[str, Any]:
    """The slot's Deployment, to be server-side applied.

    ``replicas`` only for the apply that creates it. Later applies never name them: replicas change
    by a separate write (ScaleDeployment, a merge patch) or by the slot's HorizontalPodAutoscaler,
    and an apply keeping them would fight the autoscaler. A field an apply stops naming is removed by
    the apiserver (replicas reset to 1) unless another manager owns it too, so before the first apply
    without them the decision hands them over (HandOverReplicas)."""
    endpoint = owner["metadata"]["name"]
    serving = spec.serving
    uri, model_volume, model_mount = model_location(spec.model.uri)
    env = [
        {"name": "SLOTKEEPER_MODEL_URI", "value": uri},
        {"name": "SLOTKEEPER_MODEL_NAME", "value": spec.model.name},
        {"name": "SLOTKEEPER_MODEL_FORMAT", "value": spec.model.format},
        {"name": "SLOTKEEPER_MODEL_VERSION", "value": revision},
        {"name": "SLOTKEEPER_PORT", "value": str(serving.port)},
        {"name": "SLOTKEEPER_CACHE_DIR", "value": CACHE_DIR},
        *(var.to_api() for var in serving.env),
    ]
    if serving.grpc_port is not None:
        env.append({"name": "SLOTKEEPER_GRPC_PORT", "value": str(serving.grpc_port)})
    if serving.shutdown_delay_seconds is not None:
        env.append({"name": "SLOTKEEPER_SHUTDOWN_DELAY_SECONDS", "value": str(serving.shutdown_delay_seconds)})
    shutdown_delay = DEFAULT_SHUTDOWN_DELAY_SECONDS if serving.shutdown_delay_seconds is None \
        else serving.shutdown_delay_seconds
    # The root filesystem is read-only: the model cache and /tmp are emptyDirs.
    volumes = [{"name": "cache", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]
    mounts = [{"name": "cache", "mountPath": CACHE_DIR}, {"name": "tmp", "mountPath": "/tmp"}]
    if model_volume and model_mount:
        volumes.append(model_volume)
        mounts.append(model_mount)
    keys_secret = keys_secret_name(endpoint, spec.auth)
    if keys_secret is not None:
        env.append({"name": "SLOTKEEPER_KEYS_DIR", "value": KEYS_DIR})
        # No `items`: the kubelet updates a whole-Secret volume in place (subPath or items would not
        # pick up a rotation for every layout); `optional: false`: a pod never starts without keys.
        volumes.append({"name": KEYS_VOLUME, "secret": {"secretName": keys_secret, "defaultMode": KEYS_FILE_MODE,
                                                        "optional": False}})
        mounts.append({"name": KEYS_VOLUME, "mountPath": KEYS_DIR, "readOnly": True})

    container: dict[str, Any] = {
        "name": "model",
        "image": serving.image or default_serving_image(),
        "ports": [{"name": "http", "containerPort": serving.port, "protocol": "TCP"},
                  *([{"name": "grpc", "containerPort": serving.grpc_port, "protocol": "TCP"}]
                    if serving.grpc_port is not None else [])],
        "env": env,
        "resources": serving.resources.to_api(),
        "readinessProbe": {
            "httpGet": {"path": serving.readiness_path, "port": "http"},
            "periodSeconds": 2, "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": serving.liveness_path, "port": "http"},
            "periodSeconds": 10, "failureThreshold": 3,
        },
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if serving.image_pull_policy:
        container["imagePullPolicy"] = serving.image_pull_policy

    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "automountServiceAccountToken": False,
        # Always explicit: the apiserver refills an omitted serviceAccountName from the deprecated
        # serviceAccount twin, so dropping the field from the spec could never take the old one away.
        "serviceAccountName": serving.service_account_name or DEFAULT_SERVICE_ACCOUNT,
        # SIGTERM comes when the pod leaves the Service's endpoints, before every node has seen that:
        # the server answers through the delay, then drains; the kubelet must not kill it sooner.
        "terminationGracePeriodSeconds": shutdown_delay + DRAIN_SECONDS,
    }
    if keys_secret is not None:  # the mounted key files (0440) belong to this group
        pod_spec["securityContext"]["fsGroup"] = SERVING_GROUP

    pod_labels = _labels(endpoint, slot, revision)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner, slot_object_name(endpoint, slot), pod_labels),
        "spec": {
            **({"replicas": replicas} if replicas is not None else {}),
            "revisionHistoryLimit": 2,
            # The selector is immutable, so it names the slot, never the revision.
            "selector": {"matchLabels": slot_selector(endpoint, slot)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(serving.port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def _service(owner: dict[str, Any], name: str, labels: dict[str, str], selector: dict[str, str],
             grpc_port: int | None = None) -> dict[str, Any]:
    ports = [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}]
    if grpc_port is not None:  # the serving port number, to the container port named grpc
        ports.append({"name": "grpc", "port": grpc_port, "targetPort": "grpc", "protocol": "TCP",
                      "appProtocol": "grpc"})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, name, labels),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": ports,
        },
    }


def render_slot_service(owner: dict[str, Any], slot: str, grpc_port: int | None = None) -> dict[str, Any]:
    """A slot's own address: for previews and the validation requests sent before traffic moves.
    With ``grpc_port`` (spec.serving.grpcPort) it also carries a ``grpc`` port."""
    endpoint = owner["metadata"]["name"]
    return _service(owner, slot_object_name(endpoint, slot), _labels(endpoint, slot), slot_selector(endpoint, slot),
                    grpc_port)


def render_endpoint_service(owner: dict[str, Any], selector: dict[str, str],
                            grpc_port: int | None = None) -> dict[str, Any]:
    """The address clients call. Its selector is the traffic switch."""
    endpoint = owner["metadata"]["name"]
    return _service(owner, endpoint, _labels(endpoint), selector, grpc_port)


def config_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:10]


def _with_config(body: dict[str, Any]) -> dict[str, Any]:
    body["metadata"]["annotations"] = {ANNOTATION_CONFIG: config_hash(body["spec"])}
    return body


def render_slot_autoscaler(owner: dict[str, Any], spec: ModelEndpointSpec, slot: str,
                           min_replicas: int, max_replicas: int) -> dict[str, Any]:
    """The slot's HorizontalPodAutoscaler (autoscaling/v2) with these bounds: the decision chooses
    them (the user's, or a floor or pin while a rollout needs one); targets and behavior are the user's."""
    autoscaling = spec.serving.autoscaling
    assert autoscaling is not None
    endpoint = owner["metadata"]["name"]
    name = slot_object_name(endpoint, slot)
    hpa_spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
        "minReplicas": min_replicas,
        "maxReplicas": max_replicas,
        "metrics": [metric.to_api() for metric in autoscaling.metrics],
    }
    if autoscaling.behavior is not None:
        hpa_spec["behavior"] = autoscaling.behavior.to_api()
    return _with_config({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(owner, name, _labels(endpoint, slot)),
        "spec": hpa_spec,
    })


def render_slot_disruption_budget(owner: dict[str, Any], spec: ModelEndpointSpec, slot: str) -> dict[str, Any]:
    """The slot's PodDisruptionBudget: a node drain evicts at most maxUnavailable of its pods at once."""
    endpoint = owner["metadata"]["name"]
    budget = spec.serving.disruption_budget
    max_unavailable = DEFAULT_MAX_UNAVAILABLE if budget is None else budget.max_unavailable
    return _with_config({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(owner, slot_object_name(endpoint, slot), _labels(endpoint, slot)),
        "spec": {"maxUnavailable": max_unavailable, "selector": {"matchLabels": slot_selector(endpoint, slot)}},
    })


def render_keys_secret(owner: dict[str, Any], name: str, keys: dict[str, str]) -> dict[str, Any]:
    """The keys Secret the operator creates for a keyed endpoint (only when none exists: it is created,
    never applied, so a key someone rotated is never put back). ``data`` is base64, as the API stores
    it; ``stringData`` would be write-only and merged by the apiserver."""
    endpoint = owner["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(owner, name, _labels(endpoint)),
        "type": "Opaque",
        "data": {key: base64.b64encode(value.encode()).decode() for key, value in keys.items()},
    }


# ------------------------------------------------------------------------------- Gateway API

HTTPROUTE_API_VERSION = "gateway.networking.k8s.io/v1"


def render_http_route(owner: dict[str, Any], traffic: Any, weights: dict[str, int],
                      mirror: tuple[str, int] | None = None) -> dict[str, Any]:
    """The endpoint's HTTPRoute (``traffic`` is the spec's GatewayAPITraffic): one rule sending to both
    slot Services with exact ``weights`` (percent; a slot at 0 gets no request), and, with ``mirror``
    (slot, percent), a RequestMirror filter copying that share of the requests to the slot's Service
    (the gateway discards the copy's answer). Named like the endpoint, owned by it."""
    endpoint = owner["metadata"]["name"]
    parents = []
    for parent in traffic.parent_refs:
        ref: dict[str, Any] = {"group": parent.group, "kind": parent.kind, "name": parent.name}
        if parent.namespace is not None:
            ref["namespace"] = parent.namespace
        if parent.section_name is not None:
            ref["sectionName"] = parent.section_name
        if parent.port is not None:
            ref["port"] = parent.port
        parents.append(ref)
    rule: dict[str, Any] = {
        "backendRefs": [{"group": "", "kind": "Service", "name": slot_object_name(endpoint, slot),
                         "port": SERVICE_PORT, "weight": int(weights.get(slot, 0))}
                        for slot in ("blue", "green")],
    }
    if traffic.path_prefix is not None:
        rule["matches"] = [{"path": {"type": "PathPrefix", "value": traffic.path_prefix}}]
    if mirror is not None:
        slot, percent = mirror
        rule["filters"] = [{"type": "RequestMirror", "requestMirror": {
            "backendRef": {"group": "", "kind": "Service", "name": slot_object_name(endpoint, slot),
                           "port": SERVICE_PORT},
            "percent": percent}}]
    spec: dict[str, Any] = {"parentRefs": parents, "rules": [rule]}
    if traffic.hostnames:
        spec["hostnames"] = list(traffic.hostnames)
    return _with_config({
        "apiVersion": HTTPROUTE_API_VERSION,
        "kind": "HTTPRoute",
        "metadata": _metadata(owner, endpoint, _labels(endpoint)),
        "spec": spec,
    })
