"""The thin I/O layer: carries out the decision's actions and status patches on the Kubernetes API.

Requests go through :class:`~slotkeeper.kube_api.KubeApi` (aiohttp on the event loop, kopf's
credentials; kube_api.py says why not the official client). Answers are not kept: the operator only
needs to know a write succeeded. :meth:`Cluster.request` is the one generic request for new kinds
of writes (a Lease, a CronJob): method, API path, body, content type and query parameters.

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

import base64
import logging
import secrets
from typing import Any, Callable, Mapping

from .actions import (Action, ApplyAutoscaler, ApplyCronJob, ApplyDeployment, ApplyDisruptionBudget, ApplyRoute,
                      CreateJob, CreateKeysSecret, CreateService, DeleteAutoscaler, DeleteCronJob, DeleteRoute,
                      EmitEvent, HandOverReplicas, ScaleDeployment, SwitchTraffic)
from .api import GROUP, PLURAL, VERSION
from .kube_api import MAX_CONNECTIONS, REQUEST_TIMEOUT, ApiError, KubeApi, api_path
from .render import KEY_NAMES, render_keys_secret, slot_object_name

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
FIELD_MANAGER = "slotkeeper"
HANDOVER_MANAGER = "slotkeeper-handover"
KEY_BYTES = 32  # random bytes per generated key (43 URL-safe characters)

# (content type, query parameters) of each kind of write
APPLY = (APPLY_PATCH, {"fieldManager": FIELD_MANAGER, "force": "true"})
MERGE = (MERGE_PATCH, {"fieldManager": FIELD_MANAGER})
JSON = (JSON_PATCH, {"fieldManager": FIELD_MANAGER})
HANDOVER = (APPLY_PATCH, {"fieldManager": HANDOVER_MANAGER})  # no force: a moved count is a 409
CREATE = ("application/json", {"fieldManager": FIELD_MANAGER})

DEPLOYMENTS = ("apps", "v1", "deployments")
SERVICES = ("", "v1", "services")
SECRETS = ("", "v1", "secrets")
AUTOSCALERS = ("autoscaling", "v2", "horizontalpodautoscalers")
DISRUPTION_BUDGETS = ("policy", "v1", "poddisruptionbudgets")
JOBS = ("batch", "v1", "jobs")
CRONJOBS = ("batch", "v1", "cronjobs")
ENDPOINTS = (GROUP, VERSION, PLURAL)
HTTPROUTES = ("gateway.networking.k8s.io", "v1", "httproutes")

log = logging.getLogger(__name__)


class GatewayAPIMissing(Exception):
    """The cluster does not serve HTTPRoutes (gateway.networking.k8s.io/v1): the Gateway API CRDs
    are not installed."""


class Cluster:
    """``api``: a :class:`KubeApi`, or what :func:`slotkeeper.client_config.as_connection` takes (a
    ``kopf.ConnectionInfo``; tests: an official client ``Configuration`` or ``ApiClient``)."""

    def __init__(self, api: Any, max_workers: int = MAX_CONNECTIONS,
                 request_timeout: tuple[float, float] = REQUEST_TIMEOUT) -> None:
        if not isinstance(api, KubeApi):
            from .client_config import as_connection
            api = KubeApi(as_connection(api), request_timeout=request_timeout, max_connections=max_workers)
        self.api = api
        self.request_timeout = api.request_timeout

    @property
    def connection(self) -> Any:
        """The ``kopf.ConnectionInfo`` the requests are sent with (also for checks through the apiserver)."""
        return self.api.connection

    async def request(self, method: str, resource: tuple[str, str, str], namespace: str | None = None,
                      name: str | None = None, body: Any = None, *, subresource: str | None = None,
                      write: tuple[str, Mapping[str, str]] = CREATE) -> Any:
        """One request about ``resource`` (group, version, plural); ``write``: APPLY, MERGE, JSON,
        HANDOVER or CREATE (content type and query parameters). The parsed answer; errors raise ApiError."""
        content_type, params = write
        writes = method in ("POST", "PUT", "PATCH")  # a field manager is a write's (none on GET or DELETE)
        return await self.api.request(method, api_path(*resource, namespace, name, subresource), body,
                                      content_type=content_type, params=params if writes else None)

    async def read_keys(self, namespace: str, secret: str) -> tuple[str, ...]:
        """The keys in the Secret (``primary``, ``secondary``; those present and not empty). A missing
        Secret or one without keys is an empty tuple; other API errors are raised, without the body."""
        try:
            body = await self.request("GET", SECRETS, namespace, secret)
        except ApiError as error:
            if error.status == 404:
                return ()
            raise ApiError(status=error.status, reason=error.reason) from None  # no body, no key
        data = (body or {}).get("data") or {}
        keys = []
        for name in KEY_NAMES:
            try:
                value = base64.b64decode(data.get(name) or "", validate=True).decode().strip()
            except (ValueError, UnicodeDecodeError):
                continue
            if value:
                keys.append(value)
        return tuple(keys)

    async def aclose(self) -> None:
        await self.api.close()

    async def _delete(self, resource: tuple[str, str, str], namespace: str, name: str) -> None:
        try:
            await self.request("DELETE", resource, namespace, name)
        except ApiError as error:
            if error.status != 404:  # gone already: what was asked
                raise

    # ------------------------------------------------------------------------------------ actions
    async def apply(self, namespace: str, endpoint: str, action: Action, post_event: Callable[..., None]) -> None:
        if isinstance(action, ApplyDeployment):
            await self.request("PATCH", DEPLOYMENTS, namespace, action.body["metadata"]["name"], action.body,
                               write=APPLY)
        elif isinstance(action, ScaleDeployment):
            await self.request("PATCH", DEPLOYMENTS, namespace, slot_object_name(endpoint, action.slot),
                               {"spec": {"replicas": action.replicas}}, write=MERGE)
        elif isinstance(action, HandOverReplicas):
            name = slot_object_name(endpoint, action.slot)
            body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
                    "spec": {"replicas": action.replicas}}
            await self.request("PATCH", DEPLOYMENTS, namespace, name, body, write=HANDOVER)
        elif isinstance(action, ApplyAutoscaler):
            await self.request("PATCH", AUTOSCALERS, namespace, action.body["metadata"]["name"], action.body,
                               write=APPLY)
        elif isinstance(action, DeleteAutoscaler):
            await self._delete(AUTOSCALERS, namespace, slot_object_name(endpoint, action.slot))
        elif isinstance(action, ApplyDisruptionBudget):
            await self.request("PATCH", DISRUPTION_BUDGETS, namespace, action.body["metadata"]["name"], action.body,
                               write=APPLY)
        elif isinstance(action, CreateService):
            await self.request("PATCH", SERVICES, namespace, action.body["metadata"]["name"], action.body, write=APPLY)
        elif isinstance(action, SwitchTraffic):
            await self.request("PATCH", SERVICES, namespace, endpoint,
                               [{"op": "replace", "path": "/spec/selector", "value": action.selector}], write=JSON)
        elif isinstance(action, CreateKeysSecret):
            owner = {"metadata": {"name": endpoint, "namespace": namespace, "uid": action.owner_uid}}
            body = render_keys_secret(owner, action.name,
                                      {name: secrets.token_urlsafe(KEY_BYTES) for name in KEY_NAMES})
            try:
                await self.request("POST", SECRETS, namespace, body=body)
            except ApiError as error:
                if error.status != 409:  # it exists: never overwrite a key someone rotated
                    raise ApiError(status=error.status, reason=error.reason) from None
        elif isinstance(action, ApplyRoute):
            try:
                await self.request("PATCH", HTTPROUTES, namespace, action.body["metadata"]["name"], action.body,
                                   write=APPLY)
            except ApiError as error:
                if error.status == 404:  # an apply creates: 404 is a resource the API does not serve
                    group, version, plural = HTTPROUTES
                    raise GatewayAPIMissing(f"{group}/{version} {plural} is not served by this cluster") from error
                raise
        elif isinstance(action, CreateJob):
            try:
                await self.request("POST", JOBS, namespace, body=action.body)
            except ApiError as error:
                if error.status != 409:  # made already (a pass that crashed before its status write)
                    raise
        elif isinstance(action, ApplyCronJob):
            await self.request("PATCH", CRONJOBS, namespace, action.body["metadata"]["name"], action.body,
                               write=APPLY)
        elif isinstance(action, DeleteCronJob):
            await self._delete(CRONJOBS, namespace, action.name)
        elif isinstance(action, DeleteRoute):
            await self._delete(HTTPROUTES, namespace, action.name)  # 404 also: HTTPRoutes not served
        elif isinstance(action, EmitEvent):
            post_event(type=action.type, reason=action.reason, message=action.message)
        else:  # pragma: no cover - a new action type without its I/O is a programming error
            raise TypeError(f"unknown action {action!r}")

    async def remove_finalizer(self, namespace: str, name: str, finalizers: list[str], finalizer: str) -> None:
        """Drop one finalizer; the ``test`` op makes it a no-op (422) if the list changed meanwhile."""
        patch = [{"op": "test", "path": "/metadata/finalizers", "value": finalizers},
                 {"op": "replace", "path": "/metadata/finalizers", "value": [f for f in finalizers if f != finalizer]}]
        try:
            await self.request("PATCH", ENDPOINTS, namespace, name, patch, write=JSON)
        except ApiError as error:
            if error.status not in (404, 409, 422):  # gone, or changed: the next event tries again
                raise

    # ------------------------------------------------------------------------------------- status
    async def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        await self.request("PATCH", ENDPOINTS, namespace, name, {"status": patch}, subresource="status", write=MERGE)


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
