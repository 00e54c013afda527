"""How the operator reaches a slot's Service and a pod's port, for validation requests and ``pods`` scrapes.

Two ways, one interface (:class:`SlotAccess`), chosen once at start-up:

- :class:`InCluster` (mode ``direct``): plain HTTP to ``http://<name>-<slot>.<ns>.svc:80`` and to
  ``http://<podIP>:<port>``. Needs the cluster's DNS and pod network, so only works in a pod.
- :class:`ApiServerProxy` (mode ``apiserver-proxy``): the same requests through the apiserver's proxy
  subresources, with the operator's own API credentials::

      {server}/api/v1/namespaces/{ns}/services/{name}-{slot}:http/proxy/{path}   (POST: verb create on services/proxy)
      {server}/api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/{path}             (GET: verb get on pods/proxy)

  Works wherever the API works, e.g. ``slotkeeper run`` on a laptop.

:func:`choose_mode` picks one (pure): an explicit ``direct`` / ``apiserver-proxy`` wins; ``auto`` means
``direct`` in a pod (``KUBERNETES_SERVICE_HOST`` set and the service-account token mounted) and
``apiserver-proxy`` anywhere else. :func:`make_slot_access` turns the choice into an access object.

Prometheus and web checks are not routed: their URL is the user's, used as written. Outside the
cluster it must be reachable from where the operator runs (a ``kubectl port-forward``, an ingress);
:func:`outside_cluster_hint` says so in their Inconclusive message when it names a ``.svc`` host.

A reply that comes back through the proxy is either the backend's own answer, passed through
unchanged, or the apiserver's: a ``Status`` object (``kind: Status``) when it could not or would not
forward the request (no ready endpoints, dial error, pod without an address, 403 without RBAC).
:func:`apiserver_refusal` tells the second kind apart, so it is reported like a connection error
and never read as the model's answer or the pod's metrics.

Credentials: those of the operator's own requests (``slotkeeper run``: the ``kopf.ConnectionInfo``
of kube_api.KubeApi, whose token a 401 renews), or of an official ``kubernetes`` client
``Configuration`` (its bearer token refreshed through its own hook): client certificates, the CA. They travel only to the apiserver, per request
(never as session defaults, so Prometheus and web checks never see them), redirects are not
followed, and no repr or message contains them.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Protocol, Sequence
from urllib.parse import quote, urlsplit

from ..render import SERVICE_PORT, slot_object_name

AccessMode = Literal["direct", "apiserver-proxy"]
DIRECT: AccessMode = "direct"
APISERVER_PROXY: AccessMode = "apiserver-proxy"
AUTO = "auto"
MODES = (AUTO, DIRECT, APISERVER_PROXY)  # the values of ``slotkeeper run --slot-access``

SERVICE_HOST_ENV = "KUBERNETES_SERVICE_HOST"
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
SLOT_SERVICE_PORT_NAME = "http"  # render.slot_service names its one port so (port 80 -> container "http")
CLUSTER_DNS_SUFFIXES = (".svc", ".svc.cluster.local")
LOCAL_RUN_RBAC = "manifests/rbac/local-run/"


# ----------------------------------------------------------------------------- choosing (pure)


def choose_mode(override: str, *, service_host: str | None, token_file_exists: bool) -> AccessMode:
    """``direct`` or ``apiserver-proxy``. ``override`` is one of :data:`MODES`; ``auto`` means direct
    exactly when the process runs in a pod: ``KUBERNETES_SERVICE_HOST`` is set and the service-account
    token file exists (the two facts ``kubernetes.config.load_incluster_config`` relies on)."""
    if override not in MODES:
        raise ValueError(f"slot access must be one of {', '.join(MODES)}, not {override!r}")
    if override != AUTO:
        return override  # type: ignore[return-value]
    return DIRECT if service_host and token_file_exists else APISERVER_PROXY


def detect_mode(override: str = AUTO, environ: Mapping[str, str] | None = None,
                token_file: str = SERVICE_ACCOUNT_TOKEN) -> AccessMode:
    """:func:`choose_mode` with the facts read from this process's environment and filesystem."""
    environ = os.environ if environ is None else environ
    return choose_mode(override, service_host=environ.get(SERVICE_HOST_ENV),
                       token_file_exists=os.path.isfile(token_file))


def outside_cluster_hint(url: str, mode: str) -> str | None:
    """Advice for a Prometheus/web check that could not be reached, when the operator runs outside the
    cluster (``apiserver-proxy``) and the URL names a cluster-internal ``.svc`` host; None otherwise."""
    if mode != APISERVER_PROXY:
        return None
    try:
        split = urlsplit(url)
        host, port = (split.hostname or "").rstrip("."), split.port
    except ValueError:
        return None
    if not host.endswith(CLUSTER_DNS_SUFFIXES):
        return None
    labels = host.split(".")
    forward = ""
    if len(labels) >= 3:  # <service>.<namespace>.svc[.cluster.local]
        remote = port or (443 if split.scheme == "https" else 80)
        forward = f" (e.g. `kubectl -n {labels[1]} port-forward svc/{labels[0]} {remote}:{remote}` and " \
                  f"{split.scheme}://localhost:{remote} as the check's address)"
    return (f"the operator runs outside the cluster, where {host} does not resolve: "
            f"make it reachable from where the operator runs{forward}")


# ---------------------------------------------------------------------------- URLs (pure)


def slot_service_url(namespace: str, endpoint: str, slot: str) -> str:
    """The slot Service's in-cluster base URL (mode ``direct``)."""
    return f"http://{slot_object_name(endpoint, slot)}.{namespace}.svc:{SERVICE_PORT}"


def pod_url(ip: str, port: int | str) -> str:
    """A pod's base URL by its address (mode ``direct``); IPv6 addresses get brackets."""
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}"


def join_path(base_url: str, path: str) -> str:
    """``base_url`` + ``/`` + ``path``; ``path`` is already percent-encoded and may carry a query."""
    return f"{base_url.rstrip('/')}/{path.lstrip('/')}"


def service_proxy_url(server: str, namespace: str, service: str, port: int | str, path: str) -> str:
    """``{server}/api/v1/namespaces/{ns}/services/{service}:{port}/proxy/{path}``.

    ``server`` may carry a path prefix (Rancher, some gateways), kept as is. Namespace, name and port
    (a number or a port name) are percent-encoded each; ``path`` is already encoded and may carry a
    query string, which the apiserver hands on to the backend."""
    return join_path(f"{_api_base(server, namespace)}/services/{_q(service)}:{_q(port)}/proxy", path)


def pod_proxy_url(server: str, namespace: str, pod: str, port: int | str, path: str) -> str:
    """``{server}/api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/{path}``, encoded as service_proxy_url."""
    return join_path(f"{_api_base(server, namespace)}/pods/{_q(pod)}:{_q(port)}/proxy", path)


def _api_base(server: str, namespace: str) -> str:
    return f"{server.rstrip('/')}/api/v1/namespaces/{_q(namespace)}"


def _q(part: int | str) -> str:
    return quote(str(part), safe="")


# ------------------------------------------------------------------------- replies (pure)


def apiserver_refusal(status: int, text: str) -> str | None:
    """Why the apiserver did not forward a proxied request, read from its reply; None when the reply is
    the backend's own answer (any status), which the proxy passes through unchanged.

    The apiserver answers for itself with a ``v1`` ``Status`` object whose ``status`` is ``Failure``:
    503 "no endpoints available for service ..." or "error trying to reach service: dial tcp ...",
    400 "address not allowed" (a pod without an IP yet), 404 for a missing Service or pod, 401/403."""
    if status < 400:
        return None
    try:
        body = json.loads(text)
    except ValueError:
        return None
    if not (isinstance(body, dict) and body.get("kind") == "Status" and body.get("apiVersion") == "v1"
            and body.get("status") == "Failure"):
        return None
    reason, message = str(body.get("reason") or ""), str(body.get("message") or "")
    refusal = f"the Kubernetes API proxy answered {status}" + (f" {reason}" if reason else "") + \
              (f": {message[:200]}" if message else "")
    if status == 401:
        refusal += " (the apiserver did not accept the operator's credentials)"
    elif status == 403:
        refusal += f" (the operator's identity needs the proxy permissions in {LOCAL_RUN_RBAC})"
    return refusal


# -------------------------------------------------------------------------- request targets


@dataclass(frozen=True)
class Target:
    """Where one request goes and what it needs to get there. ``headers`` may hold credentials: they are
    kept out of the repr, and ``url`` never contains any, so messages may name it."""
    url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    ssl: ssl.SSLContext | bool = True  # aiohttp's: True = default verification
    server_hostname: str | None = None  # TLS SNI and hostname check, when not the URL's host
    proxy: str | None = None  # an HTTP(S) proxy in front of the apiserver (kubeconfig proxy-url)
    proxy_headers: Mapping[str, str] | None = field(default=None, repr=False)
    through_apiserver: bool = False  # the apiserver may answer for itself: see apiserver_refusal

    def request_options(self) -> dict[str, Any]:
        """Keyword arguments for ``aiohttp.ClientSession.request`` (besides method, url and timeout)."""
        options: dict[str, Any] = {}
        if self.headers:
            options["headers"] = dict(self.headers)
        if self.ssl is not True:
            options["ssl"] = self.ssl
        if self.server_hostname:
            options["server_hostname"] = self.server_hostname
        if self.proxy:
            options["proxy"] = self.proxy
            if self.proxy_headers:
                options["proxy_headers"] = dict(self.proxy_headers)
        if self.through_apiserver:
            # aiohttp drops Authorization on cross-origin redirects, but the credentials have no
            # business following a redirect anywhere: the backend's 3xx is its answer.
            options["allow_redirects"] = False
        return options


class SlotAccess(Protocol):
    """How the checks reach the candidate's slot Service and pods."""

    mode: AccessMode

    async def slot_target(self, namespace: str, endpoint: str, slot: str, path: str) -> Target:
        """The request target for ``path`` (encoded, may carry a query) on a slot's Service."""
        ...

    async def pod_targets(self, namespace: str, pods: Sequence[tuple[str, str]], port: int,
                          path: str) -> list[tuple[str, Target]]:
        """(pod name, target) for ``path`` on ``port`` of each (pod name, pod IP)."""
        ...


@dataclass(frozen=True)
class InCluster:
    """Mode ``direct``: cluster DNS names and pod IPs, as a process in a pod sees them."""
    slot_url: Callable[[str, str, str], str] = slot_service_url  # (namespace, endpoint, slot) -> base URL
    mode: AccessMode = field(default=DIRECT, init=False)

    async def slot_target(self, namespace: str, endpoint: str, slot: str, path: str) -> Target:
        return Target(join_path(self.slot_url(namespace, endpoint, slot), path))

    async def pod_targets(self, namespace: str, pods: Sequence[tuple[str, str]], port: int,
                          path: str) -> list[tuple[str, Target]]:
        return [(name, Target(join_path(pod_url(ip, port), path))) for name, ip in pods]


class ApiServerProxy:
    """Mode ``apiserver-proxy``: the apiserver's ``services/proxy`` and ``pods/proxy`` subresources.

    ``credentials`` returns the headers that authenticate a request (``Authorization``); it is called
    once per batch of requests, in a worker thread, since the client configuration's refresh hook may
    read a file or run an exec plugin. Build one from the operator's client configuration with
    :meth:`from_configuration`.
    """

    mode: AccessMode = APISERVER_PROXY

    def __init__(self, server: str, *, credentials: Callable[[], Mapping[str, str]] = dict,
                 ssl_context: ssl.SSLContext | bool = True, server_hostname: str | None = None,
                 proxy: str | None = None, proxy_headers: Mapping[str, str] | None = None,
                 service_port: int | str = SLOT_SERVICE_PORT_NAME) -> None:
        if urlsplit(server).scheme not in ("http", "https"):
            raise ValueError(f"the apiserver address must be an http(s) URL, not {server!r}")
        self.server = server.rstrip("/")
        self._credentials = credentials
        self._ssl = ssl_context
        self._server_hostname = server_hostname
        self._proxy, self._proxy_headers = proxy, proxy_headers
        self.service_port = service_port

    @classmethod
    def from_configuration(cls, configuration: Any) -> ApiServerProxy:
        """From a ``kubernetes.client.Configuration`` (kubeconfig or in-cluster): its host, CA, client
        certificate, TLS options, HTTP proxy and API-key authentication (bearer token, refreshed)."""
        proxy = configuration.proxy or None
        if proxy and _bypasses_proxy(configuration):
            proxy = None
        if proxy and urlsplit(proxy).scheme not in ("http", "https"):
            raise ValueError(f"the kubeconfig's proxy-url {proxy!r} is not an HTTP proxy, which is all the "
                             "check requests support; use --slot-access=direct with a way into the cluster")
        return cls(
            configuration.host,
            credentials=lambda: auth_headers(configuration),
            ssl_context=ssl_context_for(configuration),
            server_hostname=getattr(configuration, "tls_server_name", None) or None,
            proxy=proxy,
            proxy_headers=getattr(configuration, "proxy_headers", None) if proxy else None,
        )

    @classmethod
    def from_kube_api(cls, api: Any) -> ApiServerProxy:
        """From the operator's :class:`~slotkeeper.kube_api.KubeApi`: its ``kopf.ConnectionInfo`` (server,
        CA, client certificate, token, proxy), read per request so a token it renewed is used."""
        info = api.connection
        https = urlsplit(info.server).scheme == "https"
        return cls(info.server, credentials=lambda: api.connection.as_http_headers(),
                   ssl_context=info.as_ssl_context() if https else True, proxy=info.proxy_url or None)

    def __repr__(self) -> str:
        return f"ApiServerProxy(server={self.server!r})"

    async def slot_target(self, namespace: str, endpoint: str, slot: str, path: str) -> Target:
        url = service_proxy_url(self.server, namespace, slot_object_name(endpoint, slot), self.service_port, path)
        return self._target(url, await self._headers())

    async def pod_targets(self, namespace: str, pods: Sequence[tuple[str, str]], port: int,
                          path: str) -> list[tuple[str, Target]]:
        if not pods:
            return []
        headers = await self._headers()
        return [(name, self._target(pod_proxy_url(self.server, namespace, name, port, path), headers))
                for name, _ in pods]

    async def _headers(self) -> Mapping[str, str]:
        return dict(await asyncio.to_thread(self._credentials))

    def _target(self, url: str, headers: Mapping[str, str]) -> Target:
        return Target(url, headers=headers, ssl=self._ssl, server_hostname=self._server_hostname,
                      proxy=self._proxy, proxy_headers=self._proxy_headers, through_apiserver=True)


def make_slot_access(mode: str = AUTO, configuration: Any = None, *,
                     slot_url: Callable[[str, str, str], str] | None = None,
                     environ: Mapping[str, str] | None = None,
                     token_file: str = SERVICE_ACCOUNT_TOKEN) -> SlotAccess:
    """The access object for ``mode`` (one of :data:`MODES`; ``auto`` as :func:`detect_mode` decides).

    ``configuration`` is the operator's ``KubeApi`` or a ``kubernetes.client.Configuration``, needed for
    ``apiserver-proxy``; ``slot_url`` replaces the slot Service URL in ``direct`` mode (tests)."""
    chosen = detect_mode(mode, environ, token_file)
    if chosen == DIRECT:
        return InCluster(slot_url) if slot_url is not None else InCluster()
    if configuration is None:
        raise ValueError("slot access through the apiserver proxy needs the Kubernetes client configuration")
    if hasattr(configuration, "connection"):  # the operator's KubeApi (slotkeeper run)
        return ApiServerProxy.from_kube_api(configuration)
    return ApiServerProxy.from_configuration(configuration)


# ------------------------------------------------------------- the client configuration's parts


def auth_headers(configuration: Any) -> dict[str, str]:
    """The headers ``kubernetes.client.ApiClient`` would add for authentication, from the
    configuration's auth settings (the bearer token, after its refresh hook ran)."""
    headers: dict[str, str] = {}
    for setting in configuration.auth_settings().values():
        if setting.get("in") == "header" and setting.get("value"):
            headers[setting["key"]] = setting["value"]
    return headers


def ssl_context_for(configuration: Any) -> ssl.SSLContext | bool:
    """An SSL context like the official client's urllib3 pool: the configured CA (else the system's),
    the client certificate, ``verify_ssl`` and ``assert_hostname``. True for a plain-HTTP apiserver."""
    if urlsplit(configuration.host).scheme != "https":
        return True
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None,
                                         cadata=getattr(configuration, "ca_cert_data", None) or None)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file or None)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif getattr(configuration, "assert_hostname", None) is False:
        context.check_hostname = False
    return context


def _bypasses_proxy(configuration: Any) -> bool:
    no_proxy = getattr(configuration, "no_proxy", None)
    if not no_proxy:
        return False
    try:
        from kubernetes.client.rest import should_bypass_proxies
    except ImportError:  # older clients: no no_proxy support there either
        return False
    return should_bypass_proxies(configuration.host, no_proxy)
