"""What the cluster layer sends to the apiserver for each action: the client method, its arguments, the
body, the patch content type and the field manager (server-side apply with ``force``; merge patches of a
single number; a JSON patch that replaces the selector), and the finalizer removal guarded by a ``test``
op. The official client's API objects are replaced by recorders; what the apiserver does with these
requests is pinned by tests/contract/."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from kubernetes.client import ApiClient, AppsV1Api, Configuration, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from slotkeeper.actions import ApplyDeployment, CreateService, EmitEvent, ScaleDeployment, SwitchTraffic
from slotkeeper.cluster import Cluster, merge_patch

DEPLOYMENT = {"apiVersion": "apps/v1", "kind": "Deployment",
              "metadata": {"name": "credit-green", "namespace": "ml", "labels": {"slotkeeper.io/slot": "green"}},
              "spec": {"replicas": 3}}
SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "credit-blue", "namespace": "ml"},
           "spec": {"selector": {"slotkeeper.io/endpoint": "credit", "slotkeeper.io/slot": "blue"}}}
APPLY = {"_content_type": "application/apply-patch+yaml", "field_manager": "slotkeeper", "force": True}
MERGE = {"_content_type": "application/merge-patch+json", "field_manager": "slotkeeper"}
JSON_PATCH = {"_content_type": "application/json-patch+json", "field_manager": "slotkeeper"}
# Every call: the raw response (never deserialised) and the operator's own timeouts.
RAW = {"_preload_content": False, "_request_timeout": (5, 30)}


class Response:
    """The urllib3 response a ``_preload_content=False`` call returns."""

    def __init__(self) -> None:
        self.drained = self.released = False

    def drain_conn(self) -> None:
        self.drained = True

    def release_conn(self) -> None:
        assert self.drained, "released before the body was read: the connection cannot be reused"
        self.released = True


class Recorder:
    """Stands in for one of the client's API objects: records (method, args, kwargs, thread name)."""

    def __init__(self, calls: list, error: ApiException | None = None) -> None:
        self.calls, self.error = calls, error
        self.responses: list[Response] = []

    def __getattr__(self, method: str):
        def call(*args: Any, **kwargs: Any) -> Response:
            self.calls.append((method, args, kwargs, threading.current_thread().name))
            if self.error is not None:
                raise self.error
            response = Response()
            self.responses.append(response)
            return response
        return call


def recording_cluster(error: ApiException | None = None) -> tuple[Cluster, list]:
    cluster = Cluster(ApiClient(Configuration()))
    calls: list = []
    cluster.apps = Recorder(calls, error)
    cluster.core = Recorder(calls, error)
    cluster.custom = Recorder(calls, error)
    return cluster, calls


def sent(calls: list) -> list[tuple]:
    """The calls without the thread names."""
    return [(method, args, kwargs) for method, args, kwargs, _ in calls]


async def apply(action, error: ApiException | None = None) -> tuple[list, list]:
    cluster, calls = recording_cluster(error)
    events: list = []
    try:
        await cluster.apply("ml", "credit", action, lambda **event: events.append(event))
    finally:
        cluster.close()
    return sent(calls), events


async def test_a_deployment_is_server_side_applied_under_its_own_name_with_force():
    calls, events = await apply(ApplyDeployment(slot="green", body=DEPLOYMENT))
    assert calls == [("patch_namespaced_deployment", ("credit-green", "ml", DEPLOYMENT), {**APPLY, **RAW})]
    assert events == []


async def test_a_scale_is_a_merge_patch_of_the_replica_count_of_the_slot_deployment():
    calls, _ = await apply(ScaleDeployment(slot="blue", replicas=0))
    assert calls == [("patch_namespaced_deployment", ("credit-blue", "ml", {"spec": {"replicas": 0}}),
                      {**MERGE, **RAW})]


async def test_a_service_is_server_side_applied_under_its_own_name_with_force():
    calls, _ = await apply(CreateService(body=SERVICE))
    assert calls == [("patch_namespaced_service", ("credit-blue", "ml", SERVICE), {**APPLY, **RAW})]


async def test_the_traffic_switch_replaces_the_endpoint_selector_with_a_json_patch():
    both = {"slotkeeper.io/endpoint": "credit"}
    calls, _ = await apply(SwitchTraffic(selector=both))
    assert calls == [("patch_namespaced_service",
                      ("credit", "ml", [{"op": "replace", "path": "/spec/selector", "value": both}]),
                      {**JSON_PATCH, **RAW})]


async def test_an_event_is_posted_with_its_type_reason_and_message_and_nothing_is_sent():
    calls, events = await apply(EmitEvent(type="Warning", reason="RolledBack", message="reverted to revision abc"))
    assert calls == []
    assert events == [{"type": "Warning", "reason": "RolledBack", "message": "reverted to revision abc"}]


async def test_errors_of_a_write_reach_the_reconcile_loop():
    refused = ApiException(status=409, reason="Conflict")
    with pytest.raises(ApiException) as raised:
        await apply(ScaleDeployment(slot="blue", replicas=2), error=refused)
    assert raised.value is refused


async def test_the_status_is_a_merge_patch_of_the_status_subresource():
    cluster, calls = recording_cluster()
    await cluster.patch_status("ml", "credit", {"phase": "Healthy", "rollout": None})
    cluster.close()
    assert sent(calls) == [("patch_namespaced_custom_object_status",
                            ("slotkeeper.io", "v1alpha1", "ml", "modelendpoints", "credit",
                             {"status": {"phase": "Healthy", "rollout": None}}), {**MERGE, **RAW})]


async def test_each_response_is_read_and_its_connection_released():
    cluster, calls = recording_cluster()
    await cluster.apply("ml", "credit", ScaleDeployment(slot="blue", replicas=1), lambda **_: None)
    await cluster.patch_status("ml", "credit", {"phase": "Healthy"})
    cluster.close()
    responses = cluster.apps.responses + cluster.custom.responses
    assert len(responses) == 2 and all(r.drained and r.released for r in responses)


async def test_calls_run_in_the_operators_own_worker_threads_not_on_the_event_loop():
    cluster, calls = recording_cluster()
    await cluster.patch_status("ml", "credit", {"phase": "Healthy"})
    cluster.close()
    ((*_, thread),) = calls
    assert thread.startswith("slotkeeper-api") and thread != threading.current_thread().name


async def test_timeouts_and_preloading_given_by_the_caller_are_kept():
    cluster, calls = recording_cluster()
    await cluster._call(cluster.custom.get_thing, "x", _request_timeout=(1, 2), _preload_content=True)
    cluster.close()
    assert sent(calls) == [("get_thing", ("x",), {"_request_timeout": (1, 2), "_preload_content": True})]


def test_the_client_objects_share_the_given_api_client_and_the_default_timeouts():
    api_client = ApiClient(Configuration())
    cluster = Cluster(api_client)
    try:
        assert cluster.api_client is api_client
        assert cluster.request_timeout == (5, 30)
        assert isinstance(cluster.core, CoreV1Api) and cluster.core.api_client is api_client
        assert isinstance(cluster.apps, AppsV1Api) and cluster.apps.api_client is api_client
        assert isinstance(cluster.custom, CustomObjectsApi) and cluster.custom.api_client is api_client
        assert cluster._pool._max_workers == 8
    finally:
        cluster.close()
    custom = Cluster(api_client, max_workers=2, request_timeout=(1, 3))
    custom.close()
    assert (custom._pool._max_workers, custom.request_timeout) == (2, (1, 3))


def test_close_neither_waits_for_running_calls_nor_runs_queued_ones():
    cluster = Cluster(ApiClient(Configuration()))
    shutdowns = []
    cluster._pool = type("Pool", (), {"shutdown": lambda self, **kwargs: shutdowns.append(kwargs)})()
    cluster.close()
    assert shutdowns == [{"wait": False, "cancel_futures": True}]


# ------------------------------------------------------------------------------ remove_finalizer

FINALIZERS = ["other.io/keep", "slotkeeper.io/cleanup", "later.io/keep"]


async def test_the_finalizer_is_removed_by_a_json_patch_that_first_tests_the_list_it_was_read_with():
    cluster, calls = recording_cluster()
    await cluster.remove_finalizer("ml", "credit", FINALIZERS, "slotkeeper.io/cleanup")
    cluster.close()
    assert sent(calls) == [("patch_namespaced_custom_object",
                            ("slotkeeper.io", "v1alpha1", "ml", "modelendpoints", "credit",
                             [{"op": "test", "path": "/metadata/finalizers", "value": FINALIZERS},
                              {"op": "replace", "path": "/metadata/finalizers",
                               "value": ["other.io/keep", "later.io/keep"]}]),
                            {**JSON_PATCH, **RAW})]


@pytest.mark.parametrize("status", [404, 409, 422], ids=["gone", "conflict", "list-changed"])
async def test_a_vanished_endpoint_or_a_changed_list_is_left_to_the_next_event(status):
    cluster, calls = recording_cluster(ApiException(status=status))
    await cluster.remove_finalizer("ml", "credit", FINALIZERS, "slotkeeper.io/cleanup")
    cluster.close()
    assert len(calls) == 1


@pytest.mark.parametrize("status", [400, 403, 405, 408, 410, 421, 423, 429, 500, 503])
async def test_other_refusals_of_the_finalizer_removal_are_raised(status):
    cluster, _ = recording_cluster(ApiException(status=status))
    with pytest.raises(ApiException):
        await cluster.remove_finalizer("ml", "credit", FINALIZERS, "slotkeeper.io/cleanup")
    cluster.close()


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
    cluster.close()
    assert calls == []
