"""The thin I/O layer: carries out the decision's actions and status patches with the official client.

The official ``kubernetes`` client is synchronous; calls run in a small thread pool of their own so
the operator's event loop never blocks. Responses are not deserialised into client models
(``_preload_content=False``): the operator only needs to know a call succeeded.

Idempotency lives here, in one place (like crate-operator's kubeapi helpers): a create that meets
409 AlreadyExists becomes a patch, a patch that meets 404 becomes a create. Every other error is
raised to the reconcile loop, which retries with back-off and decides again from what it observes.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from kubernetes.client import ApiClient, AppsV1Api, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from .actions import Action, ApplyDeployment, CreateService, EmitEvent, ScaleDeployment, SwitchTraffic
from .api import GROUP, PLURAL, VERSION
from .render import slot_object_name

MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT = (5, 30)  # connect, read (seconds)

log = logging.getLogger(__name__)


class Cluster:
    def __init__(self, api_client: ApiClient, max_workers: int = 8,
                 request_timeout: tuple[float, float] = REQUEST_TIMEOUT) -> None:
        self.api_client = api_client
        self.request_timeout = request_timeout
        self.core = CoreV1Api(api_client)
        self.apps = AppsV1Api(api_client)
        self.custom = CustomObjectsApi(api_client)
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="slotkeeper-api")

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
            await self._apply_deployment(namespace, action.body)
        elif isinstance(action, ScaleDeployment):
            name = slot_object_name(endpoint, action.slot)
            await self._call(self.apps.patch_namespaced_deployment, name, namespace,
                             {"spec": {"replicas": action.replicas}}, _content_type=MERGE_PATCH)
        elif isinstance(action, CreateService):
            await self._create_service(namespace, action.body)
        elif isinstance(action, SwitchTraffic):
            await self._call(self.core.patch_namespaced_service, endpoint, namespace,
                             {"spec": {"selector": action.selector}}, _content_type=MERGE_PATCH)
        elif isinstance(action, EmitEvent):
            post_event(type=action.type, reason=action.reason, message=action.message)
        else:  # pragma: no cover - a new action type without its I/O is a programming error
            raise TypeError(f"unknown action {action!r}")

    async def _apply_deployment(self, namespace: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        patch = {"metadata": {"labels": body["metadata"]["labels"]}, "spec": body["spec"]}
        try:
            await self._call(self.apps.patch_namespaced_deployment, name, namespace, patch, _content_type=MERGE_PATCH)
        except ApiException as error:
            if error.status != 404:
                raise
            try:
                await self._call(self.apps.create_namespaced_deployment, namespace, body)
            except ApiException as create_error:
                if create_error.status != 409:
                    raise
                await self._call(self.apps.patch_namespaced_deployment, name, namespace, patch,
                                 _content_type=MERGE_PATCH)

    async def _create_service(self, namespace: str, body: dict[str, Any]) -> None:
        try:
            await self._call(self.core.create_namespaced_service, namespace, body)
        except ApiException as error:
            if error.status != 409:
                raise
            # It exists already (we raced our own watch): make sure it selects what we wanted.
            await self._call(self.core.patch_namespaced_service, body["metadata"]["name"], namespace,
                             {"spec": {"selector": body["spec"]["selector"]}}, _content_type=MERGE_PATCH)

    # ------------------------------------------------------------------------------------- status
    async def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        await self._call(self.custom.patch_namespaced_custom_object_status, GROUP, VERSION, namespace, PLURAL, name,
                         {"status": patch}, _content_type=MERGE_PATCH)


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
