"""The thin I/O layer: carries out the decision's actions and status patches with the official client.

The official ``kubernetes`` client is synchronous; calls run in a small thread pool of their own so
the operator's event loop never blocks. Responses are not deserialised into client models
(``_preload_content=False``): the operator only needs to know a call succeeded.

How it writes, and why (each is what the apiserver does with it, pinned by tests/contract/):

* Deployments, Services, HorizontalPodAutoscalers and PodDisruptionBudgets are **server-side
  applied** with slotkeeper's own field manager: one idempotent request creates or converges the
  object, and a field the spec no longer renders is removed (a JSON merge patch can only add and
  change keys). Bodies go as JSON (valid YAML 1.2): a YAML body would let the apiserver read a label
  value like ``y`` as a boolean.
* The traffic switch replaces ``spec.selector`` with a JSON patch: a merge patch would merge the
  maps and keep the ``slot`` key, so the canary's both-slots selector would still pick one slot.
* Replica changes are merge patches of a single number, never part of an apply: the apply would
  own ``spec.replicas``, and an apply that later leaves them out (because an autoscaler has them
  now) would make the apiserver reset them to 1. A Deployment whose replicas an older slotkeeper
  applied gets them handed over first: an apply of ``spec.replicas`` alone, at the count it has, by
  the field manager ``slotkeeper-handover`` and without ``force`` (a count that moved meanwhile is a
  409, and the next pass looks again).
* The quality monitor's Job is **created** under a deterministic name, never patched: a 409 means
  this episode's Job exists already.
* A scheduled batch job's CronJob is **server-side applied** (its job template re-rendered when
  the stable revision changes) and deleted when the schedule leaves the spec (404: gone already).
* An autoscaler is deleted when its slot stops serving; deleting one that is gone is no error.
* A keyed endpoint's Secret ``<name>-keys`` is **created**, never applied or patched: a 409 means it
  exists (made earlier, rotated by ``slotkeeper regenerate-key``, or brought by the user) and it is
  left alone. Its keys are generated here, at the create, and go nowhere else. The keys are read
  with a targeted ``get`` of that one Secret when a validation request needs them: no Secret is
  watched or listed, and a key is never logged (errors name the Secret and the status code only).

Every error is raised to the reconcile loop, which retries with back-off and decides again from
what it observes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from kubernetes.client import (ApiClient, AppsV1Api, AutoscalingV2Api, BatchV1Api, CoreV1Api, CustomObjectsApi,
                               PolicyV1Api)
from kubernetes.client.exceptions import ApiException

from .actions import (Action, ApplyAutoscaler, ApplyCronJob, ApplyDeployment, ApplyDisruptionBudget, ApplyRoute,
                      CreateJob, CreateKeysSecret, CreateService, DeleteAutoscaler, DeleteCronJob, DeleteRoute,
                      EmitEvent, HandOverReplicas, ScaleDeployment, SwitchTraffic)
from .api import GROUP, PLURAL, VERSION
from .render import KEY_NAMES, render_keys_secret, slot_object_name

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
FIELD_MANAGER = "slotkeeper"
HANDOVER_MANAGER = "slotkeeper-handover"
REQUEST_TIMEOUT = (5, 30)  # connect, read (seconds)
KEY_BYTES = 32  # random bytes per generated key (43 URL-safe characters)

APPLY = {"_content_type": APPLY_PATCH, "field_manager": FIELD_MANAGER, "force": True}
MERGE = {"_content_type": MERGE_PATCH, "field_manager": FIELD_MANAGER}
JSON = {"_content_type": JSON_PATCH, "field_manager": FIELD_MANAGER}
HANDOVER = {"_content_type": APPLY_PATCH, "field_manager": HANDOVER_MANAGER}  # no force: a moved count is a 409

HTTPROUTES = ("gateway.networking.k8s.io", "v1", "httproutes")

log = logging.getLogger(__name__)


class GatewayAPIMissing(Exception):
    """The cluster does not serve HTTPRoutes (gateway.networking.k8s.io/v1): the Gateway API CRDs
    are not installed."""


class Cluster:
    def __init__(self, api_client: ApiClient, max_workers: int = 8,
                 request_timeout: tuple[float, float] = REQUEST_TIMEOUT) -> None:
        self.api_client = api_client
        self.request_timeout = request_timeout
        self.core = CoreV1Api(api_client)
        self.apps = AppsV1Api(api_client)
        self.autoscaling = AutoscalingV2Api(api_client)
        self.policy = PolicyV1Api(api_client)
        self.custom = CustomObjectsApi(api_client)
        self.batch = BatchV1Api(api_client)
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="slotkeeper-api")

    async def _read(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A GET whose JSON body is returned (parsed here, never logged)."""
        kwargs.setdefault("_preload_content", False)
        kwargs.setdefault("_request_timeout", self.request_timeout)

        def call() -> Any:
            response = method(*args, **kwargs)
            try:
                return json.loads(response.data)
            finally:
                response.release_conn()

        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    async def read_keys(self, namespace: str, secret: str) -> tuple[str, ...]:
        """The keys in the Secret (``primary``, ``secondary``; those present and not empty). A missing
        Secret or one without keys is an empty tuple; other API errors are raised, without the body."""
        try:
            body = await self._read(self.core.read_namespaced_secret, secret, namespace)
        except ApiException as error:
            if error.status == 404:
                return ()
            raise ApiException(status=error.status, reason=error.reason) from None  # no body, no key
        data = body.get("data") or {}
        keys = []
        for name in KEY_NAMES:
            try:
                value = base64.b64decode(data.get(name) or "", validate=True).decode().strip()
            except (ValueError, UnicodeDecodeError):
                continue
            if value:
                keys.append(value)
        return tuple(keys)

    async def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("_preload_content", False)
        kwargs.setdefault("_request_timeout", self.request_timeout)

        def call() -> None:
            response = method(*args, **kwargs)
            # Unread, a response keeps its connection checked out: every call would open a new one
            # (a TLS handshake per write against a real apiserver).
            response.drain_conn()
            response.release_conn()

        await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------------------------ actions
    async def apply(self, namespace: str, endpoint: str, action: Action, post_event: Callable[..., None]) -> None:
        if isinstance(action, ApplyDeployment):
            await self._call(self.apps.patch_namespaced_deployment, action.body["metadata"]["name"], namespace,
                             action.body, **APPLY)
        elif isinstance(action, ScaleDeployment):
            name = slot_object_name(endpoint, action.slot)
            await self._call(self.apps.patch_namespaced_deployment, name, namespace,
                             {"spec": {"replicas": action.replicas}}, **MERGE)
        elif isinstance(action, HandOverReplicas):
            name = slot_object_name(endpoint, action.slot)
            body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
                    "spec": {"replicas": action.replicas}}
            await self._call(self.apps.patch_namespaced_deployment, name, namespace, body, **HANDOVER)
        elif isinstance(action, ApplyAutoscaler):
            await self._call(self.autoscaling.patch_namespaced_horizontal_pod_autoscaler,
                             action.body["metadata"]["name"], namespace, action.body, **APPLY)
        elif isinstance(action, DeleteAutoscaler):
            try:
                await self._call(self.autoscaling.delete_namespaced_horizontal_pod_autoscaler,
                                 slot_object_name(endpoint, action.slot), namespace)
            except ApiException as error:
                if error.status != 404:  # gone already: what was asked
                    raise
        elif isinstance(action, ApplyDisruptionBudget):
            await self._call(self.policy.patch_namespaced_pod_disruption_budget,
                             action.body["metadata"]["name"], namespace, action.body, **APPLY)
        elif isinstance(action, CreateService):
            await self._call(self.core.patch_namespaced_service, action.body["metadata"]["name"], namespace,
                             action.body, **APPLY)
        elif isinstance(action, SwitchTraffic):
            await self._call(self.core.patch_namespaced_service, endpoint, namespace,
                             [{"op": "replace", "path": "/spec/selector", "value": action.selector}], **JSON)
        elif isinstance(action, CreateKeysSecret):
            owner = {"metadata": {"name": endpoint, "namespace": namespace, "uid": action.owner_uid}}
            body = render_keys_secret(owner, action.name,
                                      {name: secrets.token_urlsafe(KEY_BYTES) for name in KEY_NAMES})
            try:
                await self._call(self.core.create_namespaced_secret, namespace, body, field_manager=FIELD_MANAGER)
            except ApiException as error:
                if error.status != 409:  # it exists: never overwrite a key someone rotated
                    raise ApiException(status=error.status, reason=error.reason) from None
        elif isinstance(action, ApplyRoute):
            group, version, plural = HTTPROUTES
            try:
                await self._call(self.custom.patch_namespaced_custom_object, group, version, namespace, plural,
                                 action.body["metadata"]["name"], action.body, **APPLY)
            except ApiException as error:
                if error.status == 404:  # an apply creates: 404 is a resource the API does not serve
                    raise GatewayAPIMissing(f"{group}/{version} {plural} is not served by this cluster") from error
                raise
        elif isinstance(action, CreateJob):
            try:
                await self._call(self.batch.create_namespaced_job, namespace, action.body, field_manager=FIELD_MANAGER)
            except ApiException as error:
                if error.status != 409:  # made already (a pass that crashed before its status write)
                    raise
        elif isinstance(action, ApplyCronJob):
            await self._call(self.batch.patch_namespaced_cron_job, action.body["metadata"]["name"], namespace,
                             action.body, **APPLY)
        elif isinstance(action, DeleteCronJob):
            try:
                await self._call(self.batch.delete_namespaced_cron_job, action.name, namespace)
            except ApiException as error:
                if error.status != 404:  # gone already: what was asked
                    raise
        elif isinstance(action, DeleteRoute):
            group, version, plural = HTTPROUTES
            try:
                await self._call(self.custom.delete_namespaced_custom_object, group, version, namespace, plural,
                                 action.name)
            except ApiException as error:
                if error.status != 404:  # gone already (or HTTPRoutes not served): what was asked
                    raise
        elif isinstance(action, EmitEvent):
            post_event(type=action.type, reason=action.reason, message=action.message)
        else:  # pragma: no cover - a new action type without its I/O is a programming error
            raise TypeError(f"unknown action {action!r}")

    async def remove_finalizer(self, namespace: str, name: str, finalizers: list[str], finalizer: str) -> None:
        """Drop one finalizer; the ``test`` op makes it a no-op (422) if the list changed meanwhile."""
        patch = [{"op": "test", "path": "/metadata/finalizers", "value": finalizers},
                 {"op": "replace", "path": "/metadata/finalizers", "value": [f for f in finalizers if f != finalizer]}]
        try:
            await self._call(self.custom.patch_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name,
                             patch, **JSON)
        except ApiException as error:
            if error.status not in (404, 409, 422):  # gone, or changed: the next event tries again
                raise

    # ------------------------------------------------------------------------------------- status
    async def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        await self._call(self.custom.patch_namespaced_custom_object_status, GROUP, VERSION, namespace, PLURAL, name,
                         {"status": patch}, **MERGE)


def merge_patch(old: Any, new: Any) -> Any:
    """The RFC 7386 JSON merge patch that turns ``old`` into ``new`` (removed keys become null)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value)
    return patch
