"""Every Open Inference Protocol v2 route over real HTTP, and every error status."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from slotkeeper_serving import __version__
from slotkeeper_serving.fetch import ModelLoadError


def test_health_live_and_ready(credit_server):
    live = credit_server.client.get("/v2/health/live")
    ready = credit_server.client.get("/v2/health/ready")
    assert (live.status_code, live.json()) == (200, {"live": True})
    assert (ready.status_code, ready.json()) == (200, {"ready": True})


def test_server_metadata(credit_server):
    response = credit_server.client.get("/v2")
    assert response.status_code == 200
    assert response.json() == {"name": "slotkeeper-serving", "version": __version__, "extensions": ["binary_tensor_data"]}


@pytest.mark.parametrize("path", ["/v2/models/credit", "/v2/models/credit/versions/rev1"])
def test_model_metadata(credit_server, path):
    response = credit_server.client.get(path)
    assert response.status_code == 200
    doc = response.json()
    assert doc["name"] == "credit"
    assert doc["versions"] == ["rev1"]
    assert doc["platform"] == "sklearn"
    assert doc["state"] == "ready"
    assert doc["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    assert [o["name"] for o in doc["outputs"]] == ["predict", "predict_proba"]


@pytest.mark.parametrize("path", ["/v2/models/credit/ready", "/v2/models/credit/versions/rev1/ready"])
def test_model_ready(credit_server, path):
    response = credit_server.client.get(path)
    assert (response.status_code, response.json()) == (200, {"name": "credit", "ready": True})


@pytest.mark.parametrize("path", ["/v2/models/credit/infer", "/v2/models/credit/versions/rev1/infer"])
def test_infer_matches_the_models_own_predict(credit_server, trained, make_body, path):
    rows = np.random.RandomState(1).randn(5, 4)
    response = credit_server.client.post(path, json=make_body(rows, id="req-42"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    doc = response.json()
    expected = trained("logreg").predict(rows)
    assert doc == {
        "model_name": "credit",
        "model_version": "rev1",
        "id": "req-42",
        "outputs": [{"name": "predict", "shape": [5], "datatype": "INT64", "data": expected.tolist()}],
    }


def test_infer_without_id_has_no_id(credit_server, make_body):
    doc = credit_server.client.post(credit_server.infer_url(), json=make_body([[0.1, 0.2, 0.3, 0.4]])).json()
    assert "id" not in doc
    assert doc["model_version"] == "rev1"


def test_infer_accepts_flat_data_and_fp32(credit_server, trained):
    rows = np.random.RandomState(2).randn(3, 4).astype(np.float32)
    body = {"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": rows.reshape(-1).tolist()}]}
    doc = credit_server.client.post(credit_server.infer_url(), json=body).json()
    assert doc["outputs"][0]["data"] == trained("logreg").predict(rows).tolist()


def test_infer_predict_proba_on_request(credit_server, trained, make_body):
    rows = np.random.RandomState(3).randn(2, 4)
    body = make_body(rows, outputs=[{"name": "predict_proba"}, {"name": "predict"}])
    doc = credit_server.client.post(credit_server.infer_url(), json=body).json()
    proba, labels = doc["outputs"]
    model = trained("logreg")
    assert proba["name"] == "predict_proba" and proba["shape"] == [2, 2] and proba["datatype"] == "FP64"
    assert proba["data"] == model.predict_proba(rows).reshape(-1).tolist()
    assert labels["data"] == model.predict(rows).tolist()


def test_model_without_declared_width_takes_a_1d_text_tensor(start_server, model_files, trained):
    server = start_server(model_files["text"], model_name="sentiment")
    assert server.client.get("/v2/models/sentiment").json()["inputs"][0]["shape"] == [-1]
    texts = ["great support", "awful value", "slow"]
    body = {"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": texts}]}
    response = server.client.post(server.infer_url(), json=body)
    assert response.status_code == 200
    assert response.json()["outputs"][0]["data"] == trained("text").predict(texts).tolist()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v2/models/other", 404),
        ("GET", "/v2/models/other/ready", 404),
        ("POST", "/v2/models/other/infer", 404),
        ("GET", "/v2/models/credit/versions/rev2", 404),
        ("GET", "/v2/models/credit/versions/rev2/ready", 404),
        ("POST", "/v2/models/credit/versions/rev2/infer", 404),
        ("GET", "/v3/anything", 404),
        ("GET", "/v2/models/credit/infer", 405),
        ("POST", "/v2/health/ready", 405),
        ("DELETE", "/v2/models/credit", 405),
    ],
)
def test_unknown_routes_models_and_methods_answer_json_errors(credit_server, method, path, status):
    response = credit_server.client.request(method, path, json={"inputs": []} if method == "POST" else None)
    assert response.status_code == status
    assert isinstance(response.json()["error"], str)


def test_declared_content_length_over_the_limit_is_refused_before_the_body(credit_server):
    # 10 GiB announced, nothing sent: the answer must come without waiting for the body.
    host, port = credit_server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /v2/models/credit/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10737418240\r\n\r\n{"
        )
        head = sock.recv(65536).decode()
    assert head.startswith("HTTP/1.1 413 ")
    assert '"error"' in head


def test_chunked_body_over_the_limit_is_refused(credit_server):
    def chunks():  # no Content-Length: the server must count what arrives
        for _ in range(200):  # 200 x 1 KiB > 64 KiB limit
            yield b" " * 1024

    response = credit_server.client.post(credit_server.infer_url(), content=chunks())
    assert response.status_code == 413
    assert "limit" in response.json()["error"]


def test_not_ready_while_loading_then_ready(start_server, model_files, trained, make_body, wait_for):
    from slotkeeper_serving.models import load_model

    release = threading.Event()

    def slow_loader(settings):
        assert release.wait(10)
        return load_model(settings)

    server = start_server(model_files["logreg"], wait_ready=False, loader=slow_loader, model_name="slow")
    client = server.client
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 503
    assert client.get("/v2/models/slow/ready").status_code == 503
    assert client.get("/v2/models/slow").json()["state"] == "loading"
    before = server.counts()
    refused = client.post(server.infer_url(), json=make_body([[0, 0, 0, 0]]))
    assert refused.status_code == 503 and "not ready" in refused.json()["error"]
    assert server.counts()["failure"] == before["failure"] + 1

    release.set()
    wait_for(lambda: client.get("/v2/health/ready").status_code == 200, what="readiness")
    response = client.post(server.infer_url(), json=make_body([[1, 2, 3, 4]]))
    assert response.status_code == 200
    assert response.json()["outputs"][0]["data"] == trained("logreg").predict(np.array([[1.0, 2, 3, 4]])).tolist()


def test_failed_model_is_live_never_ready_and_says_why(start_server, model_files, make_body, wait_for):
    server = start_server(model_files["corrupt"], wait_ready=False, model_name="broken", model_version="r9")
    client = server.client
    assert client.get("/v2/health/live").status_code == 200
    wait_for(lambda: server.app.slot.state != "loading", what="the load to end")
    doc = client.get("/v2/models/broken").json()
    assert doc["state"] == "failed"
    assert doc["reason"]  # e.g. "UnpicklingError: invalid load key..."
    assert client.get("/v2/health/ready").status_code == 503
    assert client.get("/v2/models/broken/ready").status_code == 503
    response = client.post(server.infer_url(), json=make_body([[1, 2, 3, 4]]))
    assert response.status_code == 503


def test_loader_bug_leaves_server_live_with_a_reason(start_server, wait_for):
    def exploding_loader(settings):
        raise KeyError("internal")

    server = start_server("/nowhere", wait_ready=False, loader=exploding_loader, model_name="bug")
    assert server.client.get("/v2/health/live").status_code == 200
    wait_for(lambda: server.app.slot.state != "loading", what="the load to end")
    doc = server.client.get("/v2/models/bug").json()
    assert doc["state"] == "failed"
    assert "KeyError" in doc["reason"]
    assert server.client.get("/v2/health/ready").status_code == 503


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("{tmp}/absent.joblib", "does not exist"),
        ("s3://bucket/model.joblib", "unsupported model URI scheme"),
        ("{tmp}", "expected exactly one"),
    ],
)
def test_load_failure_reasons(start_server, tmp_path, wait_for, uri, reason):
    server = start_server(uri.format(tmp=tmp_path), wait_ready=False, model_name="absent")
    wait_for(lambda: server.app.slot.state != "loading", what="the load to end")
    doc = server.client.get("/v2/models/absent").json()
    assert doc["state"] == "failed"
    assert reason in doc["reason"]


def test_load_failure_raises_the_public_error_type(tmp_path):
    from slotkeeper_serving.config import Settings
    from slotkeeper_serving.models import load_model

    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(Settings(model_uri=str(tmp_path / "absent.joblib"), cache_dir=tmp_path))
