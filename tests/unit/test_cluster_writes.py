"""What the cluster layer sends to the apiserver for each action: the method, the API path, the body,
the patch content type and the query parameters (server-side apply with ``force`` and slotkeeper's
field manager; merge patches of a single number; a JSON patch that replaces the selector), and the
finalizer removal guarded by a ``test`` op. The HTTP client is replaced by a recorder; what the
apiserver does with these requests is pinned by tests/contract/, the HTTP client by test_kube_api.py."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from slotkeeper.actions import ApplyDeployment, CreateService, EmitEvent, ScaleDeployment, SwitchTraffic
from slotkeeper.cluster import Cluster, merge_patch
from slotkeeper.kube_api import ApiError, KubeApi

DEPLOYMENT = {"apiVersion": "apps/v1", "kind": "Deployment",
              "metadata": {"name": "credit-green", "namespace": "ml", "labels": {"slotkeeper.io/slot": "green"}},
              "spec": {"replicas": 3}}
SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "credit-blue", "namespace": "ml"},
           "spec": {"selector": {"slotkeeper.io/endpoint": "credit", "slotkeeper.io/slot": "blue"}}}
APPLY = {"content_type": "application/apply-patch+yaml", "params": {"fieldManager": "slotkeeper", "force": "true"}}
MERGE = {"content_type": "application/merge-patch+json", "params": {"fieldManager": "slotkeeper"}}
JSON_PATCH = {"content_type": "application/json-patch+json", "params": {"fieldManager": "slotkeeper"}}


class RecordingApi(KubeApi):
    """The HTTP client, recording (method, path, body, options) instead of sending."""

    def __init__(self, error: ApiError | None = None) -> None:
        super().__init__(kopf.ConnectionInfo(server="https://apiserver.example"))
        self.calls: list[tuple] = []
        self.error = error

    async def request(self, method: str, path: str, body: Any = None, **options: Any) -> Any:
        self.calls.append((method, path, body, options))
        if self.error is not None:
            raise self.error
        return None


def recording_cluster(error: ApiError | None = None) -> tuple[Cluster, list]:
    api = RecordingApi(error)
    return Cluster(api), api.calls


async def apply(action, error: ApiError | None = None) -> tuple[list, list]:
    cluster, calls = recording_cluster(error)
    events: list = []
    await cluster.apply("ml", "credit", action, lambda **event: events.append(event))
    return calls, events


async def test_a_deployment_is_server_side_applied_under_its_own_name_with_force():
    calls, events = await apply(ApplyDeployment(slot="green", body=DEPLOYMENT))
    assert calls == [("PATCH", "/apis/apps/v1/namespaces/ml/deployments/credit-green", DEPLOYMENT, APPLY)]
    assert events == []


async def test_a_scale_is_a_merge_patch_of_the_replica_count_of_the_slot_deployment():
    calls, _ = await apply(ScaleDeployment(slot="blue", replicas=0))
    assert calls == [("PATCH", "/apis/apps/v1/namespaces/ml/deployments/credit-blue", {"spec": {"replicas": 0}}, MERGE)]


async def test_a_service_is_server_side_applied_under_its_own_name_with_force():
    calls, _ = await apply(CreateService(body=SERVICE))
    assert calls == [("PATCH", "/api/v1/namespaces/ml/services/credit-blue", SERVICE, APPLY)]


async def test_the_traffic_switch_replaces_the_endpoint_selector_with_a_json_patch():
    both = {"slotkeeper.io/endpoint": "credit"}
    calls, _ = await apply(SwitchTraffic(selector=both))
    assert calls == [("PATCH", "/api/v1/namespaces/ml/services/credit",
                      [{"op": "replace", "path": "/spec/selector", "value": both}], JSON_PATCH)]


async def test_an_event_is_posted_with_its_type_reason_and_message_and_nothing_is_sent():
    calls, events = await apply(EmitEvent(type="Warning", reason="RolledBack", message="reverted to revision abc"))
    assert calls == []
    assert events == [{"type": "Warning", "reason": "RolledBack", "message": "reverted to revision abc"}]


async def test_errors_of_a_write_reach_the_reconcile_loop():
    refused = ApiError(status=409, reason="Conflict")
    with pytest.raises(ApiError) as raised:
        await apply(ScaleDeployment(slot="blue", replicas=2), error=refused)
    assert raised.value is refused


async def test_the_status_is_a_merge_patch_of_the_status_subresource():
    cluster, calls = recording_cluster()
    await cluster.patch_status("ml", "credit", {"phase": "Healthy", "rollout": None})
    assert calls == [("PATCH", "/apis/slotkeeper.io/v1alpha1/namespaces/ml/modelendpoints/credit/status",
                      {"status": {"phase": "Healthy", "rollout": None}}, MERGE)]


def test_a_cluster_from_credentials_sends_with_them_and_the_default_timeouts():
    info = kopf.ConnectionInfo(server="https://apiserver.example", token="t")
    cluster = Cluster(info)
    assert isinstance(cluster.api, KubeApi) and cluster.connection is info
    assert (cluster.request_timeout, cluster.api.max_connections) == ((5, 30), 32)
    custom = Cluster(info, max_workers=2, request_timeout=(1, 3))
    assert (custom.request_timeout, custom.api.max_connections) == ((1, 3), 2)


def test_a_cluster_from_an_official_client_configuration_takes_its_server_and_token():
    """How tests hand in their API double (memo.kube_config); the official client is not needed for it."""
    configuration = type("Configuration", (), {
        "host": "http://127.0.0.1:1234", "ssl_ca_cert": None, "verify_ssl": True, "username": "", "password": "",
        "cert_file": None, "key_file": None,
        "get_api_key_with_prefix": lambda self, key: "Bearer abc" if key == "BearerToken" else None})()
    cluster = Cluster(configuration)
    assert (cluster.connection.server, cluster.connection.token, cluster.connection.scheme) == \
        ("http://127.0.0.1:1234", "abc", "Bearer")


# ------------------------------------------------------------------------------ remove_finalizer

FINALIZERS = ["other.io/keep", "slotkeeper.io/cleanup", "later.io/keep"]


async def test_the_finalizer_is_removed_by_a_json_patch_that_first_tests_the_list_it_was_read_with():
    cluster, calls = recording_cluster()
    await cluster.remove_finalizer("ml", "credit", FINALIZERS, "slotkeeper.io/cleanup")
    assert calls == [("PATCH", "/apis/slotkeeper.io/v1alpha1/namespaces/ml/modelendpoints/credit",
                      [{"op": "test", "path": "/metadata/finalizers", "value": FINALIZERS},
                       {"op": "replace", "path": "/metadata/finalizers", "value": ["other.io/keep", "later.io/keep"]}],
                      JSON_PATCH)]


@pytest.mark.parametrize("status", [404, 409, 422], ids=["gone", "conflict", "list-changed"])
async def test_a_vanished_endpoint_or_a_changed_list_is_left_to_the_next_event(status):
    cluster, calls = recording_cluster(ApiError(status=status))
    await cluster.remove_finalizer("ml", "credit", FINALIZERS, "slotkeeper.io/cleanup")
    assert len(calls) == 1


@pytest.mark.parametrize("status", [400, 403, 405, 408, 410, 421, 423, 429, 500, 503])
async def test_other_refusals_of_the_finalizer_removal_are_raised(status):
    cluster, _ = recording_cluster(ApiError(status=status))
    with pytest.raises(ApiError):
        await cluster.remove_finalizer("ml", "credit", FINALIZERS, "slotkeeper.io/cleanup")


# ----------------------------------------------------------------------------------- merge_patch


@pytest.mark.parametrize("old, new, patch", [
    ({"a": 1, "b": 2}, {"a": 1, "b": 2}, {}),
    ({"a": 1, "b": 2}, {"a": 1}, {"b": None}),
    ({"a": 1}, {"a": 1, "c": [1]}, {"c": [1]}),
    ({"a": 1}, {"a": 2}, {"a": 2}),
    ({"r": {"x": 1, "y": 2}}, {"r": {"x": 1, "y": 3}}, {"r": {"y": 3}}),
    ({"r": {"x": 1, "y": 2}}, {"r": {"x": 1}}, {"r": {"y": None}}),
    ({"r": {"x": 1}}, {"r": [1, 2]}, {"r": [1, 2]}),
    ({"r": [1, 2]}, {"r": {"x": 1}}, {"r": {"x": 1}}),
    ({"l": [1, 2]}, {"l": [1]}, {"l": [1]}),
    ({"a": None}, {"a": 0}, {"a": 0}),
    ({}, {"a": {"b": 1}}, {"a": {"b": 1}}),
    ("text", {"a": 1}, {"a": 1}),
    ({"a": 1}, "text", "text"),
])
def test_merge_patch_is_the_minimal_rfc_7386_patch(old, new, patch):
    assert merge_patch(old, new) == patch


async def test_an_action_without_its_io_is_a_type_error_naming_it():
    cluster, calls = recording_cluster()
    with pytest.raises(TypeError, match="unknown action 'Teleport'"):
        await cluster.apply("ml", "credit", "Teleport", lambda **_: None)
    assert calls == []


async def test_reads_and_deletes_carry_no_field_manager():
    from slotkeeper.actions import DeleteAutoscaler

    calls, _ = await apply(DeleteAutoscaler(slot="green"))
    assert calls == [("DELETE", "/apis/autoscaling/v2/namespaces/ml/horizontalpodautoscalers/credit-green", None,
                      {"content_type": "application/json", "params": None})]
    cluster, calls = recording_cluster()
    assert await cluster.read_keys("ml", "credit-keys") == ()
    assert calls == [("GET", "/api/v1/namespaces/ml/secrets/credit-keys", None,
                      {"content_type": "application/json", "params": None})]
