"""Loading from file://, plain paths, directories, archives and http:// (a local http.server), within limits."""

from __future__ import annotations

import io
import logging
import shutil
import socket
import tarfile
import zipfile

import numpy as np
import pytest

from slotkeeper_serving.config import Settings
from slotkeeper_serving.fetch import ModelLoadError, materialize, redact_uri
from slotkeeper_serving.models import load_model

ROWS = np.random.RandomState(8).randn(4, 4)


def assert_serves_logreg(server, trained, make_body):
    response = server.client.post(server.infer_url(), json=make_body(ROWS))
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == trained("logreg").predict(ROWS).tolist()


@pytest.mark.parametrize("form", ["file-uri", "plain-path", "pickle", "directory"])
def test_local_forms(start_server, model_files, tmp_path, trained, make_body, form):
    if form == "directory":  # e.g. a mounted PVC or ConfigMap holding one model file
        shutil.copy(model_files["logreg"], tmp_path / "model.joblib")
        uri = str(tmp_path)
    else:
        uri = {
            "file-uri": f"file://{model_files['logreg']}",
            "plain-path": str(model_files["logreg"]),
            "pickle": str(model_files["pickle"]),
        }[form]
    assert_serves_logreg(start_server(uri), trained, make_body)


def test_http_download(start_server, static_http, model_files, trained, make_body, tmp_path):
    base, root = static_http
    shutil.copy(model_files["logreg"], root / "credit.joblib")
    cache = tmp_path / "cache"
    server = start_server(f"{base}/credit.joblib", cache_dir=cache)
    assert_serves_logreg(server, trained, make_body)
    downloaded = list((cache / "models").rglob("credit.joblib"))
    assert len(downloaded) == 1 and downloaded[0].read_bytes() == model_files["logreg"].read_bytes()


def test_http_tarball_of_a_score_py_directory(start_server, static_http, score_py_dirs, trained, make_body):
    base, root = static_http
    with tarfile.open(root / "azure-model.tar.gz", "w:gz") as tar:
        tar.add(score_py_dirs["azureml"], arcname="azure-model")
    server = start_server(f"{base}/azure-model.tar.gz", model_name="tarred")
    assert server.client.get("/v2/models/tarred").json()["platform"] == "azureml-score-py"
    assert_serves_logreg(server, trained, make_body)


def test_local_zip_archive(start_server, score_py_dirs, tmp_path, trained, make_body):
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in score_py_dirs["azureml"].iterdir():
            zf.write(path, arcname=path.name)
    assert_serves_logreg(start_server(archive, model_name="zipped"), trained, make_body)


def _load_error(uri: str, tmp_path, **settings) -> str:
    with pytest.raises(ModelLoadError) as caught:
        load_model(Settings(model_uri=uri, cache_dir=tmp_path / "cache", **settings))
    return str(caught.value)


def test_http_errors_are_reported_without_secrets(static_http, tmp_path, caplog):
    base, _ = static_http
    secret_uri = base.replace("http://", "http://user:hunter2@") + "/missing.joblib?sig=SECRET-TOKEN"
    with caplog.at_level(logging.DEBUG):
        reason = _load_error(secret_uri, tmp_path)
    assert "HTTP 404" in reason
    for text in (reason, caplog.text):
        assert "hunter2" not in text and "SECRET-TOKEN" not in text


def test_download_size_limit(static_http, model_files, tmp_path):
    base, root = static_http
    shutil.copy(model_files["logreg"], root / "big.joblib")
    assert "exceeds the limit of 100" in _load_error(f"{base}/big.joblib", tmp_path, max_model_bytes=100)
    assert not list((tmp_path / "cache" / "models").rglob("*.part"))


def test_download_timeout(static_http, tmp_path):
    base, _ = static_http
    reason = _load_error(f"{base}/stall/model.joblib", tmp_path, download_timeout_seconds=0.3)
    assert "ReadTimeout" in reason or "took longer" in reason


def test_connection_refused(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert "ConnectError" in _load_error(f"http://127.0.0.1:{port}/m.joblib?token=abc", tmp_path)


def test_archive_escaping_its_root_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../outside.txt", "x")
    assert "outside its root" in _load_error(str(archive), tmp_path)
    assert not (tmp_path / "cache" / "outside.txt").exists()

    tar_path = tmp_path / "evil.tar"
    with tarfile.open(tar_path, "w") as tar:
        info = tarfile.TarInfo("../../outside.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    assert "cannot extract" in _load_error(str(tar_path), tmp_path)


def test_archive_size_limit(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model.joblib", b"\0" * 100_000)
    assert "unpacks to more than" in _load_error(str(archive), tmp_path, max_model_bytes=50_000)


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (
            "https://user:pw@blob.example/models/m.joblib?sv=1&sig=abc",
            "https://blob.example/models/m.joblib?<redacted>",
        ),
        ("http://host:8080/m.joblib#frag", "http://host:8080/m.joblib"),
        ("file:///models/m.joblib", "file:///models/m.joblib"),
        ("/models/m.joblib", "/models/m.joblib"),
    ],
)
def test_redact_uri(uri, shown):
    assert redact_uri(uri) == shown


def test_remote_file_uri_host_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="remote host"):
        materialize("file://otherhost/m.joblib", tmp_path, timeout_seconds=1, max_bytes=10)
