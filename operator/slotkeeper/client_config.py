"""Which cluster to talk to, decided as kubectl decides it, for slotkeeper's client and kopf's alike."""

from __future__ import annotations

import os

import kopf
import kubernetes
from kubernetes.client import ApiClient


def load_configuration(kubeconfig: str | None = None, context: str | None = None) -> kubernetes.client.Configuration:
    """The client configuration kubectl would use: ``--kubeconfig``/``--context``, else ``$KUBECONFIG``,
    else the pod's service account, else ``~/.kube/config``."""
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


def build_api_client(kubeconfig: str | None = None, context: str | None = None) -> ApiClient:
    return ApiClient(load_configuration(kubeconfig, context))




def connection_info(configuration: kubernetes.client.Configuration) -> kopf.ConnectionInfo:
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
