"""The e2e preflight: with nothing to test against, it says what is missing and how to get it,
quickly. Runs everywhere (not marked e2e), against a fake API server on loopback."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from .kube import NoCluster, preflight


def write_kubeconfig(path: Path, server: str, contexts: tuple[str, ...] = ("kind-slotkeeper",)) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "production",
        "contexts": [{"name": name, "context": {"cluster": "c", "user": "u"}} for name in contexts],
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
    }))
    return path


def fake_api(crd: bool, operator: dict[str, Any] | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.path.startswith("/version"):
                self.reply(200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0"})
            elif "/customresourcedefinitions/" in self.path:
                self.reply(200 if crd else 404, {"kind": "CustomResourceDefinition"} if crd else {"kind": "Status"})
            elif "/deployments/slotkeeper-operator" in self.path:
                self.reply(200 if operator is not None else 404, operator or {"kind": "Status"})
            else:
                self.reply(404, {"kind": "Status"})

        def reply(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@pytest.fixture
def api_server(request: pytest.FixtureRequest) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake_api(**request.param))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kubeconfig: Path | None, context: str = "kind-slotkeeper") -> str:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig or tmp_path / "missing"))
    started = time.monotonic()
    with pytest.raises(NoCluster) as raised:
        preflight(context, tmp_path / "work")
    assert time.monotonic() - started < 3
    return str(raised.value)


def test_without_a_kubeconfig_says_how_to_get_a_cluster(tmp_path, monkeypatch):
    assert "make kind" in reason(tmp_path, monkeypatch, None)


def test_never_falls_back_to_the_current_context(tmp_path, monkeypatch):
    config = write_kubeconfig(tmp_path / "config", "http://127.0.0.1:1", contexts=("production",))
    text = reason(tmp_path, monkeypatch, config)
    assert "no context 'kind-slotkeeper'" in text and "production" in text and "make kind" in text


def test_refused_connection_is_reported_fast(tmp_path, monkeypatch):
    config = write_kubeconfig(tmp_path / "config", "http://127.0.0.1:1")
    text = reason(tmp_path, monkeypatch, config)
    assert "connection refused" in text and "make kind" in text


@pytest.mark.parametrize("api_server", [{"crd": False, "operator": None}], indirect=True)
def test_missing_crd_is_named(tmp_path, monkeypatch, api_server):
    text = reason(tmp_path, monkeypatch, write_kubeconfig(tmp_path / "config", api_server))
    assert "CRD" in text and "make kind" in text


@pytest.mark.parametrize("api_server", [{"crd": True, "operator": None}], indirect=True)
def test_missing_operator_is_named(tmp_path, monkeypatch, api_server):
    text = reason(tmp_path, monkeypatch, write_kubeconfig(tmp_path / "config", api_server))
    assert "operator is not installed" in text and "make kind" in text


@pytest.mark.parametrize("api_server", [{"crd": True, "operator": {"status": {"replicas": 1}}}], indirect=True)
def test_operator_without_available_pod_is_named(tmp_path, monkeypatch, api_server):
    text = reason(tmp_path, monkeypatch, write_kubeconfig(tmp_path / "config", api_server))
    assert "no available pod" in text


@pytest.mark.parametrize("api_server", [{"crd": True, "operator": {"status": {"availableReplicas": 1}}}],
                         indirect=True)
def test_a_ready_cluster_passes_with_its_own_kubeconfig(tmp_path, monkeypatch, api_server):
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "config", api_server)))
    found = preflight("kind-slotkeeper", tmp_path / "work")
    written = yaml.safe_load(found.kubeconfig.read_text())
    assert written["current-context"] == "kind-slotkeeper"
    assert [c["name"] for c in written["contexts"]] == ["kind-slotkeeper"]
    assert found.server == api_server
