"""How the checks reach slots and pods: the mode choice, the URLs, the apiserver's own refusals, the
client configuration's credentials, and the runner's wiring. No network here except where named."""

from __future__ import annotations

import json
import ssl
from datetime import datetime, timezone

import aiohttp
import pytest
from kubernetes.client import Configuration

from slotkeeper.api import ModelEndpointSpec, ModelEndpointStatus
from slotkeeper.checks.access import (
    APISERVER_PROXY, DIRECT, ApiServerProxy, InCluster, Target, apiserver_refusal, auth_headers, choose_mode,
    detect_mode, join_path, make_slot_access, outside_cluster_hint, pod_proxy_url, pod_url, service_proxy_url,
    slot_service_url, ssl_context_for,
)
from slotkeeper.checks.runner import CheckRunner
from slotkeeper.decide import Endpoint
from slotkeeper.observe import Observed

SERVER = "https://10.96.0.1:6443"


def status_body(code: int, reason: str, message: str) -> str:
    return json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": code})


# ------------------------------------------------------------------------------- the mode choice


@pytest.mark.parametrize("override, service_host, token, expected", [
    ("auto", "10.96.0.1", True, DIRECT),               # a pod: the service-account token is mounted
    ("auto", None, True, APISERVER_PROXY),              # a laptop that happens to have the file
    ("auto", "10.96.0.1", False, APISERVER_PROXY),      # the env var alone (e.g. a shell exported it)
    ("auto", "", True, APISERVER_PROXY),
    ("auto", None, False, APISERVER_PROXY),
    ("direct", None, False, DIRECT),                    # an explicit choice always wins
    ("apiserver-proxy", "10.96.0.1", True, APISERVER_PROXY),
])
def test_choose_mode(override, service_host, token, expected):
    assert choose_mode(override, service_host=service_host, token_file_exists=token) == expected


@pytest.mark.parametrize("override", ["", "proxy", "Direct", "in-cluster"])
def test_choose_mode_rejects_unknown_values(override):
    with pytest.raises(ValueError, match="auto, direct, apiserver-proxy"):
        choose_mode(override, service_host="10.96.0.1", token_file_exists=True)


def test_detect_mode_reads_the_environment_and_the_token_file(tmp_path):
    token = tmp_path / "token"
    in_pod = {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}
    assert detect_mode("auto", in_pod, str(token)) == APISERVER_PROXY  # no token file yet
    token.write_text("t")
    assert detect_mode("auto", in_pod, str(token)) == DIRECT
    assert detect_mode("auto", {}, str(token)) == APISERVER_PROXY
    assert detect_mode("apiserver-proxy", in_pod, str(token)) == APISERVER_PROXY


# ------------------------------------------------------------------------------------------ URLs


def test_direct_urls_are_todays():
    assert slot_service_url("ml", "credit", "green") == "http://credit-green.ml.svc:80"
    assert pod_url("10.1.2.3", 8080) == "http://10.1.2.3:8080"
    assert pod_url("fd00::1", 8080) == "http://[fd00::1]:8080"
    assert join_path("http://credit-green.ml.svc:80/", "/v2/models/credit/infer") == \
        "http://credit-green.ml.svc:80/v2/models/credit/infer"


def test_service_proxy_url():
    assert service_proxy_url(SERVER, "ml", "credit-green", "http", "v2/models/credit/infer") == \
        "https://10.96.0.1:6443/api/v1/namespaces/ml/services/credit-green:http/proxy/v2/models/credit/infer"
    # a port number instead of a name; a leading slash on the path; a trailing slash on the server
    assert service_proxy_url(SERVER + "/", "ml", "credit-green", 80, "/healthz") == \
        "https://10.96.0.1:6443/api/v1/namespaces/ml/services/credit-green:80/proxy/healthz"


def test_pod_proxy_url():
    assert pod_proxy_url(SERVER, "ml", "credit-green-7d9f-x2k4p", 8080, "metrics") == \
        "https://10.96.0.1:6443/api/v1/namespaces/ml/pods/credit-green-7d9f-x2k4p:8080/proxy/metrics"


def test_proxy_urls_keep_the_servers_path_prefix():
    rancher = "https://rancher.example.com/k8s/clusters/c-m-abc12/"
    assert pod_proxy_url(rancher, "ml", "p", 8080, "metrics") == \
        "https://rancher.example.com/k8s/clusters/c-m-abc12/api/v1/namespaces/ml/pods/p:8080/proxy/metrics"


def test_proxy_urls_encode_each_name_and_port_but_keep_the_separator():
    # Kubernetes names never need it, but a stray character must not change which object is addressed.
    url = service_proxy_url(SERVER, "m l", "a/b", "h:t?p", "x")
    assert url == "https://10.96.0.1:6443/api/v1/namespaces/m%20l/services/a%2Fb:h%3At%3Fp/proxy/x"


def test_proxy_urls_pass_an_encoded_path_and_its_query_string_through():
    url = service_proxy_url(SERVER, "ml", "credit-green", "http", "v2/models/fraud%2Fv2/infer?trace=1&x=a%20b")
    assert url.endswith("/services/credit-green:http/proxy/v2/models/fraud%2Fv2/infer?trace=1&x=a%20b")
    assert pod_proxy_url(SERVER, "ml", "p", 9090, "metrics?name[]=up").endswith("/pods/p:9090/proxy/metrics?name[]=up")


async def test_access_objects_build_the_same_requests_two_ways():
    direct = InCluster()
    target = await direct.slot_target("ml", "credit", "green", "v2/models/credit/infer")
    assert target == Target("http://credit-green.ml.svc:80/v2/models/credit/infer")
    assert not target.through_apiserver and target.request_options() == {}
    assert await direct.pod_targets("ml", [("p1", "10.1.2.3")], 8080, "metrics") == \
        [("p1", Target("http://10.1.2.3:8080/metrics"))]

    proxy = ApiServerProxy(SERVER, credentials=lambda: {"authorization": "Bearer t0ken"})
    target = await proxy.slot_target("ml", "credit", "green", "v2/models/credit/infer")
    assert target.url == f"{SERVER}/api/v1/namespaces/ml/services/credit-green:http/proxy/v2/models/credit/infer"
    assert target.through_apiserver
    assert target.request_options() == {"headers": {"authorization": "Bearer t0ken"}, "allow_redirects": False}
    (name, pod), = await proxy.pod_targets("ml", [("p1", "10.1.2.3")], 8080, "metrics")
    assert (name, pod.url) == ("p1", f"{SERVER}/api/v1/namespaces/ml/pods/p1:8080/proxy/metrics")
    assert await proxy.pod_targets("ml", [], 8080, "metrics") == []


async def test_the_token_appears_in_no_repr():
    proxy = ApiServerProxy(SERVER, credentials=lambda: {"authorization": "Bearer t0ken"})
    target = await proxy.slot_target("ml", "credit", "green", "x")
    assert "t0ken" not in repr(proxy) and "t0ken" not in repr(target) and "t0ken" not in target.url


# --------------------------------------------------------------------- the apiserver's own replies


@pytest.mark.parametrize("status, text", [
    (503, status_body(503, "ServiceUnavailable", 'no endpoints available for service "credit-green:http"')),
    (503, status_body(503, "ServiceUnavailable",
                      "error trying to reach service: dial tcp 10.1.2.3:8080: connect: connection refused")),
    (400, status_body(400, "BadRequest", "address not allowed")),
    (404, status_body(404, "NotFound", 'pods "credit-green-1" not found')),
])
def test_apiserver_refusals_are_recognised(status, text):
    refusal = apiserver_refusal(status, text)
    assert refusal.startswith(f"the Kubernetes API proxy answered {status} ")
    assert json.loads(text)["message"] in refusal


def test_a_forbidden_proxy_request_names_the_rbac_to_add():
    text = status_body(403, "Forbidden", 'services "credit-green:http" is forbidden: User "alice" cannot create '
                       'resource "services/proxy" in API group "" in the namespace "ml"')
    assert "manifests/rbac/local-run/" in apiserver_refusal(403, text)


@pytest.mark.parametrize("status, text", [
    (200, status_body(503, "ServiceUnavailable", "x")),           # a success is the backend's
    (503, json.dumps({"error": "model credit is not ready"})),    # the v2 protocol's own error
    (503, "upstream not ready"),                                  # plain text
    (500, json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Success"})),
    (500, json.dumps({"kind": "Status", "status": "Failure"})),   # no apiVersion: not the apiserver's
    (500, "[1, 2]"),
])
def test_the_backends_own_answers_are_not_refusals(status, text):
    assert apiserver_refusal(status, text) is None


# --------------------------------------------------------------- hints for prometheus and web checks


def test_outside_cluster_hint_for_cluster_dns_names_in_proxy_mode():
    hint = outside_cluster_hint("http://prometheus.monitoring.svc:9090", APISERVER_PROXY)
    assert "prometheus.monitoring.svc does not resolve" in hint
    assert "kubectl -n monitoring port-forward svc/prometheus 9090:9090" in hint
    assert "http://localhost:9090" in hint
    hint = outside_cluster_hint("https://metrics.obs.svc.cluster.local./api", APISERVER_PROXY)
    assert "svc/metrics 443:443" in hint and "https://localhost:443" in hint


@pytest.mark.parametrize("url, mode", [
    ("http://prometheus.monitoring.svc:9090", DIRECT),           # in the cluster the name resolves
    ("http://prometheus.example.com:9090", APISERVER_PROXY),
    ("http://127.0.0.1:9090", APISERVER_PROXY),
    ("http://svc:9090", APISERVER_PROXY),
    ("http://[::1", APISERVER_PROXY),                              # unparseable: no advice, no crash
])
def test_no_hint_otherwise(url, mode):
    assert outside_cluster_hint(url, mode) is None


# ------------------------------------------------------------------- the client configuration


def test_auth_headers_come_from_the_configuration_and_its_refresh_hook():
    configuration = Configuration(host=SERVER)
    assert auth_headers(configuration) == {}
    configuration.api_key = {"BearerToken": "Bearer first"}  # as kubernetes.config.load_kube_config sets it
    assert auth_headers(configuration) == {"authorization": "Bearer first"}

    def rotate(c: Configuration) -> None:
        c.api_key["BearerToken"] = "Bearer second"
    configuration.refresh_api_key_hook = rotate
    assert auth_headers(configuration) == {"authorization": "Bearer second"}


def test_ssl_context_follows_the_configuration():
    assert ssl_context_for(Configuration(host="http://127.0.0.1:8001")) is True  # kubectl proxy: no TLS
    strict = ssl_context_for(Configuration(host=SERVER))
    assert strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname
    insecure = Configuration(host=SERVER)
    insecure.verify_ssl = False
    context = ssl_context_for(insecure)
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname


def test_from_configuration():
    configuration = Configuration(host=SERVER + "/")
    configuration.tls_server_name = "kubernetes.default"
    configuration.proxy = "http://proxy.corp:3128"
    proxy = ApiServerProxy.from_configuration(configuration)
    assert proxy.server == SERVER
    configuration.no_proxy = "10.96.0.1"
    assert ApiServerProxy.from_configuration(configuration)._proxy is None
    configuration.no_proxy, configuration.proxy = None, "socks5://127.0.0.1:1080"
    with pytest.raises(ValueError, match="not an HTTP proxy"):
        ApiServerProxy.from_configuration(configuration)


async def test_targets_carry_the_configurations_tls_and_proxy_options():
    configuration = Configuration(host=SERVER)
    configuration.api_key = {"BearerToken": "Bearer t"}
    configuration.tls_server_name = "kubernetes.default"
    configuration.proxy = "http://proxy.corp:3128"
    options = (await ApiServerProxy.from_configuration(configuration).slot_target("ml", "e", "blue", "x")).request_options()
    assert options["headers"] == {"authorization": "Bearer t"}
    assert isinstance(options["ssl"], ssl.SSLContext)
    assert options["server_hostname"] == "kubernetes.default" and options["proxy"] == "http://proxy.corp:3128"


def test_make_slot_access(tmp_path):
    pod = {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}
    token = tmp_path / "token"
    token.write_text("t")
    assert isinstance(make_slot_access("auto", None, environ=pod, token_file=str(token)), InCluster)
    assert make_slot_access("direct", None, slot_url=lambda n, e, s: "http://127.0.0.1:1").slot_url("ml", "e", "s") \
        == "http://127.0.0.1:1"
    access = make_slot_access("auto", Configuration(host=SERVER), environ={}, token_file=str(token))
    assert isinstance(access, ApiServerProxy) and access.mode == APISERVER_PROXY
    with pytest.raises(ValueError, match="client configuration"):
        make_slot_access("apiserver-proxy", None)


# ------------------------------------------------------------------------------- the runner


def test_check_runner_constructors():
    session = object()
    assert CheckRunner(session).access == InCluster()
    custom = lambda namespace, endpoint, slot: "http://127.0.0.1:9"  # noqa: E731
    assert CheckRunner(session, slot_url=custom).access == InCluster(custom)
    proxy = ApiServerProxy(SERVER)
    assert CheckRunner(session, access=proxy).access is proxy
    with pytest.raises(TypeError, match="not both"):
        CheckRunner(session, slot_url=custom, access=proxy)


class NoClusterDNS(aiohttp.abc.AbstractResolver):
    """A laptop's resolver, as far as cluster names go: every lookup fails at once."""

    async def resolve(self, host, port=0, family=0):
        raise OSError(f"{host}: Name or service not known")

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("source", ["prometheus", "web"])
async def test_an_unreachable_svc_address_in_proxy_mode_says_how_to_reach_it(source):
    check = {"name": "p95", "source": source, "max": 0.3, "intervalSeconds": 5}
    check.update({"address": "http://prometheus.monitoring.svc:9090", "query": "x"} if source == "prometheus"
                 else {"url": "http://prometheus.monitoring.svc:9090/api/v1/query?query=x", "jsonPath": "a"})
    spec = ModelEndpointSpec.model_validate({"model": {"name": "credit", "uri": "file:///m"},
                                             "checks": {"metrics": [check]}})
    status = ModelEndpointStatus.model_validate({"rollout": {
        "revision": "r1", "slot": "green", "modelUri": "file:///m", "step": "Analysing",
        "startedAt": "2026-11-21T12:00:00Z", "stepStartedAt": "2026-11-21T12:00:00Z"}})
    endpoint = Endpoint(name="credit", namespace="ml", uid="u", generation=1, spec=spec, status=status)
    now = datetime(2026, 11, 21, 12, 1, tzinfo=timezone.utc)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=NoClusterDNS())) as session:
        for access, hinted in ((ApiServerProxy(SERVER), True), (InCluster(), False)):
            gates = await CheckRunner(session, access=access).run(endpoint, Observed({}, None), now)
            verdict = gates.verdicts["p95"]
            assert verdict.outcome == "Inconclusive"
            assert ("kubectl -n monitoring port-forward svc/prometheus 9090:9090" in verdict.message) is hinted
