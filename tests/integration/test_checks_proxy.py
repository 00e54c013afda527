"""Checks through the apiserver's proxy, over real loopback HTTP: a fake "apiserver" (an aiohttp app)
serves the services/proxy and pods/proxy paths a real one would, and checks the bearer token; the
CheckRunner in apiserver-proxy mode, configured from a real kubeconfig file through the official
client's loader, gets the validation answer and the pod's metrics through it. The apiserver's own
refusals (503 no endpoints, a dial error, 400, 401) are failed requests, never the model's answer."""

from __future__ import annotations

import base64
import re
import shutil
import socket
import ssl
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from kubernetes.client import Configuration
from kubernetes.config import load_kube_config

from slotkeeper.api import ModelEndpointSpec, ModelEndpointStatus
from slotkeeper.checks.access import ApiServerProxy, InCluster
from slotkeeper.checks.runner import CheckRunner
from slotkeeper.decide import Endpoint
from slotkeeper.observe import Observed, PodSummary, SlotObservation
from tests.unit.checks.exposition import FakePod

TOKEN = "sekret-token-4f7a"
REV = "a41b2e"
POD = "credit-green-6c9d8-x2k4p"
POD_IP = "192.0.2.7"  # TEST-NET-1: never routable, so a direct scrape of it could not be what answered
INFER = "/api/v1/namespaces/ml/services/credit-green:http/proxy/v2/models/credit/infer"
METRICS = f"/api/v1/namespaces/ml/pods/{POD}:8080/proxy/metrics"
NOW = datetime(2026, 11, 21, 12, 1, tzinfo=timezone.utc)
SMOKE = {"name": "smoke",
         "request": {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]},
         "expect": {"status": 200, "outputs": [{"name": "predict", "data": [1.0]}]}}
ERRORS = {"name": "errors", "source": "pods", "metric": "error_ratio", "max": 0.05, "intervalSeconds": 1}
PREDICTION = {"model_name": "credit", "outputs": [{"name": "predict", "shape": [1], "datatype": "FP64", "data": [1.0]}]}


def status_object(code: int, reason: str, message: str) -> web.Response:
    """An error as the apiserver writes it: a v1 Status."""
    return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                              "message": message, "reason": reason, "code": code}, status=code)


@dataclass
class FakeApiServer:
    """The two proxy paths; ``infer``/``metrics`` answer for the backend (or for the apiserver itself)."""
    pod: FakePod = field(default_factory=lambda: FakePod(model="credit", version=REV))
    requests: list[dict[str, Any]] = field(default_factory=list)
    infer: Any = None
    metrics: Any = None

    def routes(self) -> list[web.RouteDef]:
        return [web.post(INFER, self._infer), web.get(METRICS, self._metrics)]

    def _authenticated(self, request: web.Request) -> bool:
        self.requests.append({"method": request.method, "path": request.path,
                              "authorization": request.headers.get("Authorization"),
                              "client": _client_cn(request)})
        return request.headers.get("Authorization") == f"Bearer {TOKEN}"

    async def _infer(self, request: web.Request) -> web.Response:
        if not self._authenticated(request):
            return status_object(401, "Unauthorized", "Unauthorized")
        self.requests[-1]["body"] = await request.json()
        return self.infer() if self.infer else web.json_response(PREDICTION)

    async def _metrics(self, request: web.Request) -> web.Response:
        if not self._authenticated(request):
            return status_object(401, "Unauthorized", "Unauthorized")
        return self.metrics() if self.metrics else web.Response(text=self.pod.text(), content_type="text/plain")


def _client_cn(request: web.Request) -> str | None:
    peer = request.transport.get_extra_info("peercert") if request.transport else None
    for rdn in (peer or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


@pytest.fixture
async def serve():
    servers: list[TestServer] = []

    async def start(routes: list[web.RouteDef], ssl_context: ssl.SSLContext | None = None) -> TestServer:
        app = web.Application()
        app.add_routes(routes)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server(ssl=ssl_context)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as session:
        yield session


def kube_configuration(tmp_path: Path, server: str, user: dict[str, Any], cluster: dict[str, Any] | None = None,
                       ) -> Configuration:
    """A Configuration loaded from a real kubeconfig file by the official client, as `slotkeeper run` does."""
    kubeconfig = {
        "apiVersion": "v1", "kind": "Config", "current-context": "laptop",
        "clusters": [{"name": "c", "cluster": {"server": server, **(cluster or {})}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "laptop", "context": {"cluster": "c", "user": "u"}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    configuration = Configuration()
    load_kube_config(config_file=str(path), client_configuration=configuration)
    return configuration


def url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


def endpoint(*, validated: bool = False, validation: list | None = None, metrics: list | None = None,
             port: int = 8080) -> Endpoint:
    spec = ModelEndpointSpec.model_validate({
        "model": {"name": "credit", "uri": "file:///models/credit/2/model.joblib"}, "serving": {"port": port},
        "checks": {"validation": [SMOKE] if validation is None else validation,
                   "metrics": [ERRORS] if metrics is None else metrics}})
    status = ModelEndpointStatus.model_validate({"rollout": {
        "revision": REV, "slot": "green", "modelUri": "file:///models/credit/2/model.joblib",
        "step": "Validating", "validated": validated,
        "startedAt": "2026-11-21T12:00:00Z", "stepStartedAt": "2026-11-21T12:00:00Z"}})
    return Endpoint(name="credit", namespace="ml", uid="uid-1", generation=2, spec=spec, status=status)


def observed(ip: str = POD_IP) -> Observed:
    pod = PodSummary(name=POD, slot="green", revision=REV, ready=True, ip=ip)
    return Observed(slots={"green": SlotObservation(deployment=None, pods=(pod,))}, endpoint_selector=None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------------- the happy path


async def test_validation_and_pod_metrics_through_the_apiserver_proxy(tmp_path, serve, session):
    apiserver = FakeApiServer()
    server = await serve(apiserver.routes())
    web_requests: list[dict] = []

    async def web_value(request: web.Request) -> web.Response:  # a web check's own URL, not proxied
        web_requests.append(dict(request.headers))
        return web.json_response({"value": 0.01})

    web_check = await serve([web.get("/value", web_value)])
    configuration = kube_configuration(tmp_path, url(server), {"token": TOKEN})
    clock = Clock()
    runner = CheckRunner(session, access=ApiServerProxy.from_configuration(configuration), clock=clock)

    gates = await runner.run(endpoint(), observed(), NOW)
    assert gates.validation == (True, 'validation "smoke": status 200; outputs "predict" as expected')
    assert gates.verdicts["errors"].outcome == "Inconclusive"
    assert "first scrape" in gates.verdicts["errors"].message  # the baseline came through the proxy
    assert apiserver.requests[0]["body"] == SMOKE["request"]

    apiserver.pod.serve(10, 0.02, "success").serve(5, 0.02, "failure")
    clock.now += 10
    ratio = {"name": "ratio", "source": "web", "url": f"{url(web_check)}/value", "jsonPath": "value", "max": 0.5}
    gates = await runner.run(endpoint(validated=True, metrics=[ERRORS, ratio]), observed(), NOW)
    assert gates.validation is None
    errors = gates.verdicts["errors"]
    assert (errors.outcome, errors.value) == ("Fail", pytest.approx(5 / 15))
    assert gates.verdicts["ratio"].outcome == "Pass"

    assert [(r["method"], r["path"]) for r in apiserver.requests] == [("POST", INFER), ("GET", METRICS), ("GET", METRICS)]
    assert all(r["authorization"] == f"Bearer {TOKEN}" for r in apiserver.requests)
    assert web_requests and not any("Authorization" in headers for headers in web_requests)  # never leaves the API


# ----------------------------------------------------------------- the apiserver answering for itself


async def test_a_503_from_the_proxy_is_a_failed_request_like_a_refused_connection(tmp_path, serve, session):
    apiserver = FakeApiServer(
        infer=lambda: status_object(503, "ServiceUnavailable", 'no endpoints available for service "credit-green:http"'),
        metrics=lambda: status_object(503, "ServiceUnavailable",
                                      f"error trying to reach service: dial tcp {POD_IP}:8080: connect: connection refused"))
    server = await serve(apiserver.routes())
    proxy = ApiServerProxy.from_configuration(kube_configuration(tmp_path, url(server), {"token": TOKEN}))
    with socket.socket() as sock:  # for the direct comparison: a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    direct = InCluster(slot_url=lambda namespace, name, slot: f"http://127.0.0.1:{closed}")

    results = {}
    for label, access, ip, port in (("proxy", proxy, POD_IP, 8080), ("direct", direct, "127.0.0.1", closed)):
        runner = CheckRunner(session, access=access, clock=Clock())
        first = await runner.run(endpoint(port=port), observed(ip), NOW)
        second = await runner.run(endpoint(port=port), observed(ip), NOW)  # the first only took a baseline
        results[label] = (first.validation, second.verdicts["errors"])

    for label, ((passed, message), verdict) in results.items():
        assert not passed, label
        assert re.match(r'^validation "smoke": \S+/v2/models/credit/infer unreachable: ', message), message
        assert verdict.outcome == "Inconclusive", label
        assert f"pod {POD}: unreachable: " in verdict.message, verdict.message
    (_, proxied_message), proxied_verdict = results["proxy"]
    assert proxied_message.endswith('unreachable: the Kubernetes API proxy answered 503 ServiceUnavailable: '
                                    'no endpoints available for service "credit-green:http"')
    assert "error trying to reach service: dial tcp 192.0.2.7:8080" in proxied_verdict.message


async def test_the_proxys_error_body_is_never_the_models_answer(tmp_path, serve, session):
    # A validation request that expects a 400 (bad input must be refused) must not pass because the
    # apiserver answered 400 for itself (a pod without an address).
    bad_input = {"name": "bad-input", "request": {"inputs": []}, "expect": {"status": 400}}
    apiserver = FakeApiServer(infer=lambda: status_object(400, "BadRequest", "address not allowed"))
    server = await serve(apiserver.routes())
    proxy = ApiServerProxy.from_configuration(kube_configuration(tmp_path, url(server), {"token": TOKEN}))
    runner = CheckRunner(session, access=proxy)
    passed, message = (await runner.run(endpoint(validation=[bad_input], metrics=[]), observed(), NOW)).validation
    assert not passed
    assert message.endswith("unreachable: the Kubernetes API proxy answered 400 BadRequest: address not allowed")

    # The model's own error, passed through by the proxy, is its answer.
    apiserver.infer = lambda: web.json_response({"error": "model credit is not ready"}, status=503)
    passed, message = (await runner.run(endpoint(metrics=[]), observed(), NOW)).validation
    assert (passed, message) == (False, 'validation "smoke": expected status 200, got 503: model credit is not ready')
    apiserver.infer = lambda: web.json_response({"error": "bad input"}, status=400)
    passed, message = (await runner.run(endpoint(validation=[bad_input], metrics=[]), observed(), NOW)).validation
    assert (passed, message) == (True, 'validation "bad-input": status 400 as expected')


async def test_rejected_credentials_are_reported_as_such(tmp_path, serve, session):
    apiserver = FakeApiServer()
    server = await serve(apiserver.routes())
    proxy = ApiServerProxy.from_configuration(kube_configuration(tmp_path, url(server), {"token": "stale"}))
    passed, message = (await CheckRunner(session, access=proxy).run(endpoint(metrics=[]), observed(), NOW)).validation
    assert not passed
    assert "unreachable: the Kubernetes API proxy answered 401 Unauthorized" in message
    assert "stale" not in message


async def test_a_redirect_from_the_backend_is_not_followed_with_the_token(tmp_path, serve, session):
    stolen: list[dict] = []

    async def elsewhere(request: web.Request) -> web.Response:
        stolen.append(dict(request.headers))
        return web.json_response(PREDICTION)

    other = await serve([web.post("/v2/models/credit/infer", elsewhere), web.get("/v2/models/credit/infer", elsewhere)])
    apiserver = FakeApiServer(infer=lambda: web.Response(status=307, headers={
        "Location": f"{url(other)}/v2/models/credit/infer"}))
    server = await serve(apiserver.routes())
    proxy = ApiServerProxy.from_configuration(kube_configuration(tmp_path, url(server), {"token": TOKEN}))
    passed, message = (await CheckRunner(session, access=proxy).run(endpoint(metrics=[]), observed(), NOW)).validation
    assert (passed, message) == (False, 'validation "smoke": expected status 200, got 307')
    assert stolen == []


# --------------------------------------------------------------------------------------- TLS


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(directory: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate for user "alice"."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
             "-subj", "/CN=test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    for name, subject, extensions in (
        ("server", "/CN=kube-apiserver", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "/CN=alice", "extendedKeyUsage=clientAuth\n"),
    ):
        (directory / f"{name}.ext").write_text(extensions)
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", subject, cwd=directory)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "1", "-extfile", f"{name}.ext", cwd=directory)


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make certificates")
async def test_tls_with_the_kubeconfigs_ca_and_client_certificate(tmp_path, serve, session):
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.crt"))
    server_tls.load_cert_chain(str(pki / "server.crt"), str(pki / "server.key"))
    server_tls.verify_mode = ssl.CERT_REQUIRED  # like an apiserver with --client-ca-file: a cert or no handshake
    apiserver = FakeApiServer()
    server = await serve(apiserver.routes(), ssl_context=server_tls)
    assert url(server).startswith("https://127.0.0.1:")

    configuration = kube_configuration(
        tmp_path, url(server),
        {"token": TOKEN, "client-certificate-data": b64(pki / "client.crt"), "client-key-data": b64(pki / "client.key")},
        {"certificate-authority-data": b64(pki / "ca.crt")})
    runner = CheckRunner(session, access=ApiServerProxy.from_configuration(configuration), clock=Clock())
    gates = await runner.run(endpoint(), observed(), NOW)
    assert gates.validation == (True, 'validation "smoke": status 200; outputs "predict" as expected')
    assert [(r["path"], r["client"]) for r in apiserver.requests] == [(INFER, "alice"), (METRICS, "alice")]

    # Without the CA, the server's certificate is not trusted: a failed request, not an answer.
    untrusted = kube_configuration(tmp_path, url(server), {"token": TOKEN,
                                   "client-certificate-data": b64(pki / "client.crt"),
                                   "client-key-data": b64(pki / "client.key")})
    passed, message = (await CheckRunner(session, access=ApiServerProxy.from_configuration(untrusted))
                       .run(endpoint(metrics=[]), observed(), NOW)).validation
    assert not passed and "unreachable" in message and "certificate" in message.lower()
