"""Candidate operator changes, applied by the launcher (BENCH_TWEAKS=name,name) without editing the
operator, so that the benchmark can measure them before the lead applies them for real.
Each docstring says what the change to the operator would be.
"""

from __future__ import annotations

import json
import logging
import sys
import types
from typing import Any


def quiet_logs() -> None:
    """handlers.configure(): logging.getLogger("kopf.objects").setLevel(logging.WARNING) (done in cf6c15f).

    kopf logs "Handler 'x' succeeded." at INFO for every watch event the indexes and on.event
    handlers see: 11 lines per endpoint created, none of them news.
    """
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)


def release_conn() -> None:
    """cluster.Cluster._call: drain and release each response (done in cf6c15f).

    Unread, a urllib3 response keeps its connection checked out until it is garbage-collected, so
    every call opens (and later closes) a new TCP connection: against a real apiserver, a TLS
    handshake per write.
    """
    from slotkeeper import cluster

    def released(method):
        def call(*args: Any, **kwargs: Any) -> Any:
            response = method(*args, **kwargs)
            if hasattr(response, "release_conn"):
                response.drain_conn()
                response.release_conn()
            return response
        return call

    original = cluster.Cluster._call

    async def _call(self, method, *args: Any, **kwargs: Any) -> Any:
        return await original(self, released(method), *args, **kwargs)

    cluster.Cluster._call = _call


def no_kubernetes() -> None:
    """cluster.py on aiohttp (already a dependency) instead of the official client; no `kubernetes`
    package in the operator's environment at all.

    `import kopf` imports the whole of kubernetes.client when it is installed (kopf/_cogs/helpers/
    thirdparty.py probes it for V1ObjectMeta): ~35 MiB of RSS for five calls. Here the five calls
    cluster.py makes are sent with aiohttp (same URLs, bodies and content types; the same Cluster
    code around them: 404 -> create, 409 -> patch) and `kubernetes` is a stub. Must run before
    kopf or slotkeeper is imported. (The real change also needs credentials: kopf's own login
    handlers give a ConnectionInfo with server, token and CA for an aiohttp session.)
    """
    class ApiException(Exception):
        def __init__(self, status: int = 0, reason: str | None = None, body: Any = None, **_: Any) -> None:
            super().__init__(f"({status}) Reason: {reason}")
            self.status, self.reason, self.body = status, reason, body

    class Configuration:
        def __init__(self, host: str = "") -> None:
            self.host = host

    class ApiClient:
        def __init__(self, configuration: Configuration | None = None) -> None:
            self.configuration = configuration

    class Api:  # each method returns the request it stands for: (method, path, body, options)
        def __init__(self, api_client: ApiClient | None = None) -> None:
            self.api_client = api_client

    class CoreV1Api(Api):
        def create_namespaced_service(self, namespace, body, **options):
            return "POST", f"/api/v1/namespaces/{namespace}/services", body, options

        def patch_namespaced_service(self, name, namespace, body, **options):
            return "PATCH", f"/api/v1/namespaces/{namespace}/services/{name}", body, options

    class AppsV1Api(Api):
        def create_namespaced_deployment(self, namespace, body, **options):
            return "POST", f"/apis/apps/v1/namespaces/{namespace}/deployments", body, options

        def patch_namespaced_deployment(self, name, namespace, body, **options):
            return "PATCH", f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}", body, options

    class CustomObjectsApi(Api):
        def patch_namespaced_custom_object_status(self, group, version, namespace, plural, name, body, **options):
            return "PATCH", f"/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}/status", body, options

    class ConfigException(Exception):
        pass

    kubernetes = types.ModuleType("kubernetes")
    client = types.ModuleType("kubernetes.client")
    exceptions = types.ModuleType("kubernetes.client.exceptions")
    config = types.ModuleType("kubernetes.config")
    for value in (ApiClient, Configuration, CoreV1Api, AppsV1Api, CustomObjectsApi):
        setattr(client, value.__name__, value)
    exceptions.ApiException = client.ApiException = ApiException
    config.ConfigException = ConfigException
    client.exceptions, kubernetes.client, kubernetes.config = exceptions, client, config
    sys.modules.update({"kubernetes": kubernetes, "kubernetes.client": client,
                        "kubernetes.client.exceptions": exceptions, "kubernetes.config": config})

    import aiohttp
    from slotkeeper import cluster

    async def _call(self, method, *args: Any, **kwargs: Any) -> Any:
        verb, path, body, options = method(*args, **kwargs)
        session = self.__dict__.get("session")
        if session is None:
            session = self.__dict__["session"] = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(sock_connect=self.request_timeout[0], total=self.request_timeout[1]))
        headers = {"Content-Type": options.get("_content_type") or "application/json"}
        url = self.api_client.configuration.host + path
        async with session.request(verb, url, data=json.dumps(body), headers=headers) as response:
            text = await response.text()
            if response.status >= 400:
                raise ApiException(status=response.status, reason=response.reason, body=text)
            return text

    cluster.Cluster._call = _call


def gc_freeze() -> None:
    """handlers.configure(): gc.collect(); gc.freeze() at startup, once everything is imported.

    A full collection walks every tracked object; what the imports created (~155,000 objects, 95,000
    of them from the kubernetes client) never becomes garbage. Frozen, they are not walked again, and
    the event loop's full-collection pauses get shorter by that much.
    """
    import gc

    import kopf

    @kopf.on.startup(id="gc_freeze")
    def freeze(**_: Any) -> None:
        gc.collect()
        gc.freeze()


def no_selectors() -> None:
    """The operator before it sent label selectors: handlers.configure() without the
    settings.watching.label_selectors of OWNED_RESOURCES, so kopf lists and watches every Deployment,
    Pod and Service of the cluster and the handlers' `labels=OWNED` filter them client-side.

    For contrast (run.py --unrelated), not a recommendation. A startup handler registered after
    handlers.configure() (so it runs after it) removes every label selector configure() set.
    """
    import kopf
    import slotkeeper.handlers  # noqa: F401  (registers configure(), so it runs before the handler below)

    @kopf.on.startup(id="no_selectors")
    def drop_label_selectors(settings: kopf.OperatorSettings, **_: Any) -> None:
        for key in list(settings.watching.label_selectors):
            del settings.watching.label_selectors[key]


ALL = {f.__name__: f for f in (no_kubernetes, quiet_logs, release_conn, gc_freeze, no_selectors)}  # in this order


def apply(names: list[str]) -> None:
    for name, tweak in ALL.items():
        if name in names:
            tweak()
    unknown = set(names) - set(ALL)
    if unknown:
        raise SystemExit(f"unknown tweaks: {sorted(unknown)}; known: {sorted(ALL)}")
