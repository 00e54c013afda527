"""The details of checks/access.py a user meets: the exact words of an apiserver refusal, the hint for a
cluster-only address, the TLS the client configuration asks for (CA, client certificate, hostname
check), HTTP proxies and their headers, credentials on every target, and configurations of older
``kubernetes`` clients that lack some attributes."""

from __future__ import annotations

import json
import ssl
from types import SimpleNamespace

import pytest
from kubernetes.client import Configuration

from slotkeeper.checks.access import (
    ApiServerProxy, InCluster, apiserver_refusal, auth_headers, join_path, make_slot_access,
    outside_cluster_hint, pod_proxy_url, ssl_context_for,
)

SERVER = "https://10.96.0.1:6443"
# A self-signed certificate and its key (EC P-256, CN=slotkeeper-test), for a CA and a client certificate.
CERT = """-----BEGIN CERTIFICATE-----
MIIBjDCCATGgAwIBAgIUeLgQs+TfU5DTy2+fGe1Vyte3qnUwCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPc2xvdGtlZXBlci10ZXN0MCAXDTI2MTIwMTE2NDQ1MloYDzIx
MjYxMTA3MTY0NDUyWjAaMRgwFgYDVQQDDA9zbG90a2VlcGVyLXRlc3QwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAASFTmrAJwmxFVbLpa4Mlx4XhFMU3YJKfRzekuov
HrD0kRSi0aYTF+nKvxnj4tK5F0vdanvUE+ujaIv5fY+bk0yEo1MwUTAdBgNVHQ4E
FgQUMyo7FkPnFnGgcfrp9Q2CwMyxCWUwHwYDVR0jBBgwFoAUMyo7FkPnFnGgcfrp
9Q2CwMyxCWUwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNJADBGAiEAnj6C
9h1Ej/At6fYxnHCT9Q3Vrjl0u4pBXcjZaWiE7JkCIQCHzDdBayyqSi7pagjBQckb
l1CaEjzYxeDGrjJ7+1xdbg==
-----END CERTIFICATE-----
"""
KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgFLHNV2jOS+M48AXC
IOO8Q7rW6qyQ3pjO+Hf4wNoRdkyhRANCAASFTmrAJwmxFVbLpa4Mlx4XhFMU3YJK
fRzekuovHrD0kRSi0aYTF+nKvxnj4tK5F0vdanvUE+ujaIv5fY+bk0yE
-----END PRIVATE KEY-----
"""


def status_body(**fields) -> str:
    return json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", **fields})


def ca_subjects(context: ssl.SSLContext) -> list:
    return [dict(item[0] for item in ca["subject"]).get("commonName") for ca in context.get_ca_certs()]


# ------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize("status, fields, refusal", [
    (503, {}, "the Kubernetes API proxy answered 503"),
    (503, {"reason": "ServiceUnavailable"}, "the Kubernetes API proxy answered 503 ServiceUnavailable"),
    (503, {"message": "no endpoints available"}, "the Kubernetes API proxy answered 503: no endpoints available"),
    (401, {"reason": "Unauthorized", "message": "Unauthorized"},
     "the Kubernetes API proxy answered 401 Unauthorized: Unauthorized "
     "(the apiserver did not accept the operator's credentials)"),
    (402, {"reason": "PaymentRequired"}, "the Kubernetes API proxy answered 402 PaymentRequired"),
    (403, {"reason": "Forbidden", "message": "forbidden"},
     "the Kubernetes API proxy answered 403 Forbidden: forbidden "
     "(the operator's identity needs the proxy permissions in manifests/rbac/local-run/)"),
])
def test_a_refusal_says_exactly_what_the_apiserver_answered(status, fields, refusal):
    assert apiserver_refusal(status, status_body(**fields)) == refusal


def test_a_long_refusal_message_is_cut_at_200_characters():
    message = "m" * 199 + "NO" + "x" * 100
    assert apiserver_refusal(503, status_body(message=message)) == \
        f"the Kubernetes API proxy answered 503: {'m' * 199}N"


# ------------------------------------------------------------------------------- hints, URLs


def test_a_hint_for_a_two_label_svc_name_has_no_port_forward_to_suggest():
    assert outside_cluster_hint("http://prometheus.svc:9090", "apiserver-proxy") == (
        "the operator runs outside the cluster, where prometheus.svc does not resolve: "
        "make it reachable from where the operator runs")


def test_a_hint_for_an_http_address_without_port_forwards_port_80():
    hint = outside_cluster_hint("http://prometheus.monitoring.svc/api", "apiserver-proxy")
    assert hint.endswith(" (e.g. `kubectl -n monitoring port-forward svc/prometheus 80:80` and "
                         "http://localhost:80 as the check's address)")


def test_paths_and_servers_keep_their_own_characters():
    assert join_path("http://h", "XLM/infer") == "http://h/XLM/infer"
    assert pod_proxy_url("https://gatewayX/", "ml", "p", 80, "m") == "https://gatewayX/api/v1/namespaces/ml/pods/p:80/proxy/m"
    assert ApiServerProxy("https://gatewayX/").server == "https://gatewayX"


def test_a_kubectl_proxy_address_is_accepted_and_anything_but_http_refused():
    assert ApiServerProxy("http://127.0.0.1:8001").server == "http://127.0.0.1:8001"
    with pytest.raises(ValueError, match=r"^the apiserver address must be an http\(s\) URL, not 'unix:///k.sock'$"):
        ApiServerProxy("unix:///k.sock")


# ------------------------------------------------------------------------------- credentials


async def test_every_pod_target_carries_the_credentials_and_the_proxy_headers():
    proxy = ApiServerProxy(SERVER, credentials=lambda: {"authorization": "Bearer t"}, proxy="http://proxy.corp:3128",
                           proxy_headers={"Proxy-Authorization": "Basic cA=="})
    targets = await proxy.pod_targets("ml", [("p1", "10.0.0.1"), ("p2", "10.0.0.2")], 8080, "metrics")
    for _, target in targets:
        assert target.request_options() == {
            "headers": {"authorization": "Bearer t"}, "proxy": "http://proxy.corp:3128",
            "proxy_headers": {"Proxy-Authorization": "Basic cA=="}, "allow_redirects": False}
    slot = await proxy.slot_target("ml", "credit", "green", "x")
    assert slot.request_options()["proxy_headers"] == {"Proxy-Authorization": "Basic cA=="}


def test_only_header_credentials_become_headers():
    configuration = SimpleNamespace(auth_settings=lambda: {
        "BearerToken": {"in": "header", "key": "authorization", "value": "Bearer t"},
        "QueryToken": {"in": "query", "key": "token", "value": "q"},
        "Empty": {"in": "header", "key": "x-empty", "value": ""},
    })
    assert auth_headers(configuration) == {"authorization": "Bearer t"}


async def test_proxy_headers_of_the_configuration_reach_the_targets():
    configuration = Configuration(host=SERVER)
    configuration.proxy = "https://proxy.corp:3129"  # an HTTPS proxy is an HTTP proxy too
    configuration.proxy_headers = {"Proxy-Authorization": "Basic cA=="}
    target = await ApiServerProxy.from_configuration(configuration).slot_target("ml", "credit", "blue", "x")
    options = target.request_options()
    assert (options["proxy"], options["proxy_headers"]) == ("https://proxy.corp:3129", {"Proxy-Authorization": "Basic cA=="})


def test_a_socks_proxy_is_refused_with_what_to_do_instead():
    configuration = Configuration(host=SERVER)
    configuration.proxy = "socks5://127.0.0.1:1080"
    with pytest.raises(ValueError, match="which is all the check requests support; use --slot-access=direct with a "
                                         "way into the cluster$"):
        ApiServerProxy.from_configuration(configuration)


def test_no_proxy_naming_another_host_keeps_the_proxy():
    configuration = Configuration(host=SERVER)
    configuration.proxy = "http://proxy.corp:3128"
    configuration.no_proxy = "other.example.com"
    assert ApiServerProxy.from_configuration(configuration)._proxy == "http://proxy.corp:3128"


def test_a_client_without_no_proxy_support_keeps_the_proxy(monkeypatch):
    import kubernetes.client.rest
    monkeypatch.delattr(kubernetes.client.rest, "should_bypass_proxies")
    configuration = Configuration(host=SERVER)
    configuration.proxy = "http://proxy.corp:3128"
    configuration.no_proxy = "10.96.0.1"
    assert ApiServerProxy.from_configuration(configuration)._proxy == "http://proxy.corp:3128"


async def test_a_configuration_of_an_older_client_without_the_newer_attributes_still_works():
    older = SimpleNamespace(host=SERVER, proxy=None, ssl_ca_cert=None, cert_file=None, key_file=None,
                            verify_ssl=True, auth_settings=lambda: {})
    proxy = ApiServerProxy.from_configuration(older)
    target = await proxy.slot_target("ml", "credit", "blue", "x")
    assert target.server_hostname is None and target.proxy is None
    assert isinstance(target.ssl, ssl.SSLContext) and target.ssl.check_hostname

    older.proxy = "http://proxy.corp:3128"  # neither no_proxy nor proxy_headers there
    target = await ApiServerProxy.from_configuration(older).slot_target("ml", "credit", "blue", "x")
    assert (target.proxy, target.proxy_headers) == ("http://proxy.corp:3128", None)


# ------------------------------------------------------------------------------------------ TLS


def test_the_configured_ca_file_or_ca_data_is_trusted(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_text(CERT)
    from_file = Configuration(host=SERVER)
    from_file.ssl_ca_cert = str(ca)
    assert ca_subjects(ssl_context_for(from_file)) == ["slotkeeper-test"]
    from_data = Configuration(host=SERVER)
    from_data.ca_cert_data = CERT
    assert ca_subjects(ssl_context_for(from_data)) == ["slotkeeper-test"]


def test_a_client_certificate_with_its_key_in_another_file_is_loaded(tmp_path):
    (tmp_path / "client.crt").write_text(CERT)
    (tmp_path / "client.key").write_text(KEY)
    configuration = Configuration(host=SERVER)
    configuration.cert_file, configuration.key_file = str(tmp_path / "client.crt"), str(tmp_path / "client.key")
    assert isinstance(ssl_context_for(configuration), ssl.SSLContext)  # a missing key would raise SSLError


def test_assert_hostname_false_skips_the_hostname_check_but_still_verifies():
    configuration = Configuration(host=SERVER)
    configuration.assert_hostname = False
    context = ssl_context_for(configuration)
    assert context.check_hostname is False and context.verify_mode == ssl.CERT_REQUIRED
    configuration.assert_hostname = None
    assert ssl_context_for(configuration).check_hostname is True


# --------------------------------------------------------------------------------- slot access


async def test_direct_access_without_a_slot_url_uses_the_cluster_dns_name():
    access = make_slot_access("direct")
    assert isinstance(access, InCluster)
    assert (await access.slot_target("ml", "credit", "green", "x")).url == "http://credit-green.ml.svc:80/x"


def test_proxy_access_without_a_configuration_says_what_is_missing():
    with pytest.raises(ValueError, match="^slot access through the apiserver proxy needs the Kubernetes client "
                                         "configuration$"):
        make_slot_access("apiserver-proxy", None)
