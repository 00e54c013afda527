"""Which cluster to talk to, decided as kubectl decides it, for slotkeeper's requests and kopf's alike.

Two readers of the same rules (``--kubeconfig``/``--context``, else ``$KUBECONFIG``, else the pod's
service account, else ``~/.kube/config``):

* :func:`load_connection`, for ``slotkeeper run``: a ``kopf.ConnectionInfo`` read without the
  official ``kubernetes`` package, so the operator process never loads it (kube_api.py says why).
  It reads the kubeconfig fields kubectl uses for a server, a CA, a client certificate, a token (or
  token file) or basic auth, and a proxy. A user that authenticates with an ``exec`` plugin or an
  ``auth-provider`` (a laptop against EKS or GKE) is handed to the official loader instead: that
  works as before and costs the official client's memory, only then.
* :func:`load_configuration`, for the CLI's other commands: the official client's configuration.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import kopf
import yaml

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = "~/.kube/config"


class ConfigError(Exception):
    """No usable cluster configuration (no kubeconfig, not in a pod, or an unknown context)."""


def load_connection(kubeconfig: str | None = None, context: str | None = None) -> kopf.ConnectionInfo:
    """kopf's credentials, as :func:`load_configuration` would find them, without the official client."""
    kubeconfig = kubeconfig or os.environ.get("KUBECONFIG")
    if not kubeconfig and not context:
        in_pod = in_cluster_connection()
        if in_pod is not None:
            return in_pod
    return kubeconfig_connection(kubeconfig or DEFAULT_KUBECONFIG, context)


def in_cluster_connection(root: Path = SERVICE_ACCOUNT, environ: Any = None) -> kopf.ConnectionInfo | None:
    """The pod's service account (as ``kubernetes.config.load_incluster_config``: the service host and
    port from the environment, the token and CA from the mounted files); None outside a pod. The token
    is read on each call: kube_api.KubeApi logs in again on a 401, which picks up a rotated token."""
    environ = os.environ if environ is None else environ
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    token_file = root / "token"
    if not host or not port or not token_file.exists():
        return None
    if ":" in host:  # IPv6
        host = f"[{host}]"
    namespace = root / "namespace"
    return kopf.ConnectionInfo(
        server=f"https://{host}:{port}", ca_path=str(root / "ca.crt"), token=token_file.read_text().strip(),
        default_namespace=namespace.read_text().strip() if namespace.exists() else None)


def kubeconfig_connection(paths: str, context: str | None = None) -> kopf.ConnectionInfo:
    """From kubeconfig files (``:``-separated, the first value of each name wins, as kubectl merges
    them); paths in a file are relative to that file."""
    current: str | None = None
    contexts: dict[str, dict] = {}
    clusters: dict[str, tuple[dict, Path]] = {}
    users: dict[str, tuple[dict, Path]] = {}
    for path in (Path(p).expanduser() for p in paths.split(os.pathsep) if p):
        if not path.exists():
            continue
        config = yaml.safe_load(path.read_text()) or {}
        current = current or config.get("current-context")
        for item in config.get("contexts") or []:
            contexts.setdefault(item["name"], item.get("context") or {})
        for item in config.get("clusters") or []:
            clusters.setdefault(item["name"], (item.get("cluster") or {}, path.parent))
        for item in config.get("users") or []:
            users.setdefault(item["name"], (item.get("user") or {}, path.parent))
    name = context or current
    if not name or name not in contexts:
        raise ConfigError(f"kubeconfig {paths}: context {name!r} not found" if name else
                          f"no kubeconfig at {paths} and not in a pod (no current-context)")
    chosen = contexts[name]
    cluster, cluster_dir = clusters.get(chosen.get("cluster"), ({}, Path()))
    user, user_dir = users.get(chosen.get("user"), ({}, Path()))
    if user.get("exec") or user.get("auth-provider"):
        return connection_info(load_configuration(paths, context))  # the official client's plugins
    if not cluster.get("server"):
        raise ConfigError(f"kubeconfig {paths}: context {name!r} has no cluster server")

    def file(entry: dict, key: str, base: Path) -> str | None:
        return str(base / Path(entry[key]).expanduser()) if entry.get(key) else None

    def data(entry: dict, key: str) -> str | None:  # base64 as in the kubeconfig: kopf decodes it
        return entry.get(key) or None

    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(file(user, "tokenFile", user_dir) or "").read_text().strip()
    return kopf.ConnectionInfo(
        server=cluster["server"], insecure=bool(cluster.get("insecure-skip-tls-verify")) or None,
        ca_path=file(cluster, "certificate-authority", cluster_dir), ca_data=data(cluster, "certificate-authority-data"),
        certificate_path=file(user, "client-certificate", user_dir), certificate_data=data(user, "client-certificate-data"),
        private_key_path=file(user, "client-key", user_dir), private_key_data=data(user, "client-key-data"),
        token=token or None, username=user.get("username"), password=user.get("password"),
        proxy_url=cluster.get("proxy-url"), default_namespace=chosen.get("namespace"),
    )


def as_connection(config: Any) -> kopf.ConnectionInfo:
    """A ``kopf.ConnectionInfo`` as it is, else from an official client ``Configuration`` or
    ``ApiClient`` (tests hand in their API double's that way)."""
    if isinstance(config, kopf.ConnectionInfo):
        return config
    return connection_info(getattr(config, "configuration", config))


# ----------------------------------------------------------------- with the official client


def load_configuration(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """The official client's configuration kubectl would use: ``--kubeconfig``/``--context``, else
    ``$KUBECONFIG``, else the pod's service account, else ``~/.kube/config``."""
    import kubernetes

    configuration = kubernetes.client.Configuration()
    kubeconfig = kubeconfig or os.environ.get("KUBECONFIG")  # read now: the client reads it at import
    if kubeconfig or context:
        kubernetes.config.load_kube_config(config_file=kubeconfig, context=context,
                                           client_configuration=configuration)
        return configuration
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=configuration)
    return configuration


def build_api_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    from kubernetes.client import ApiClient

    return ApiClient(load_configuration(kubeconfig, context))


def connection_info(configuration: Any) -> kopf.ConnectionInfo:
    """kopf's credentials from the official client's configuration (as kopf's own fallback login does)."""
    header = configuration.get_api_key_with_prefix("BearerToken") or \
        configuration.get_api_key_with_prefix("authorization")
    scheme, _, token = (header or "").rpartition(" ")
    return kopf.ConnectionInfo(
        server=configuration.host, ca_path=configuration.ssl_ca_cert, insecure=not configuration.verify_ssl,
        username=configuration.username or None, password=configuration.password or None,
        scheme=scheme or None, token=token or None,
        certificate_path=configuration.cert_file, private_key_path=configuration.key_file,
    )
