"""The real CLI in a subprocess: flags, environment variables, SIGTERM, several workers."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from slotkeeper_serving.config import MiB, ConfigError, Settings, settings_from_env


def test_console_script_with_flags(spawn_server, model_files, trained, make_body):
    script = Path(sys.executable).with_name("slotkeeper-serve")
    assert script.exists(), "pip install -e ./serving-image provides the slotkeeper-serve console script"
    server = spawn_server(
        ["--model-uri", f"file://{model_files['logreg']}", "--model-name", "credit"], executable=[str(script)]
    )
    rows = np.random.RandomState(9).randn(3, 4)
    response = httpx.post(server.base_url + "/v2/models/credit/infer", json=make_body(rows))
    assert response.status_code == 200
    assert response.json()["outputs"][0]["data"] == trained("logreg").predict(rows).tolist()


def test_environment_variables(spawn_server, score_py_dirs, tmp_path, make_body):
    env = {
        "SLOTKEEPER_MODEL_URI": str(score_py_dirs["azureml"]),
        "SLOTKEEPER_MODEL_NAME": "envmodel",
        "SLOTKEEPER_MODEL_FORMAT": "score-py",
        "SLOTKEEPER_MODEL_VERSION": "deadbeef",
        "SLOTKEEPER_MAX_REQUEST_BYTES": "2000",
        "SLOTKEEPER_WORKERS": "1",
        "SLOTKEEPER_CACHE_DIR": str(tmp_path / "cache"),
    }
    server = spawn_server([], env=env)
    meta = httpx.get(server.base_url + "/v2/models/envmodel").json()
    assert (meta["platform"], meta["versions"]) == ("azureml-score-py", ["deadbeef"])
    small = httpx.post(server.base_url + "/v2/models/envmodel/infer", json=make_body([[1.0, 2.0, 3.0, 4.0]]))
    assert small.status_code == 200 and small.json()["model_version"] == "deadbeef"
    big = httpx.post(server.base_url + "/v2/models/envmodel/infer", json=make_body([[1.0, 2.0, 3.0, 4.0]] * 200))
    assert big.status_code == 413
    metrics = httpx.get(server.base_url + "/metrics").text
    assert 'slotkeeper_requests_total{model="envmodel",outcome="failure",version="deadbeef"} 1.0' in metrics
    assert (tmp_path / "cache").is_dir()


def test_flags_override_environment(spawn_server, model_files):
    server = spawn_server(
        ["--model-name", "from-flag"],
        env={"SLOTKEEPER_MODEL_URI": str(model_files["logreg"]), "SLOTKEEPER_MODEL_NAME": "from-env"},
    )
    assert httpx.get(server.base_url + "/v2/models/from-flag/ready").status_code == 200
    assert httpx.get(server.base_url + "/v2/models/from-env/ready").status_code == 404


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([], {}, "a model URI is required"),
        (["--model-uri", "m.joblib"], {"SLOTKEEPER_PORT": "eighty"}, "SLOTKEEPER_PORT must be an integer"),
        (["--model-uri", "m.joblib"], {"SLOTKEEPER_MODEL_FORMAT": "onnx"}, "model format must be one of"),
        (["--model-uri", "m.joblib", "--model-name", "a/b"], {}, "must not contain '/'"),
        (["--model-uri", "m.joblib", "--workers", "0"], {}, "workers must be >= 1"),
        (["--model-uri", "m.joblib"], {"SLOTKEEPER_LOG_LEVEL": "loud"}, "log level must be one of"),
        (["--model-uri", "m.joblib", "--shutdown-delay-seconds", "-1"], {}, "shutdown delay must be"),
        (["--model-uri", "m.joblib"], {"SLOTKEEPER_SHUTDOWN_DELAY_SECONDS": "nan"}, "shutdown delay must be"),
        (
            ["--model-uri", "m.joblib"],
            {"SLOTKEEPER_SHUTDOWN_DELAY_SECONDS": "soon"},
            "SLOTKEEPER_SHUTDOWN_DELAY_SECONDS must be a number",
        ),
    ],
)
def test_invalid_configuration_exits_2(args, env, message):
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLOTKEEPER_")}
    result = subprocess.run(
        [sys.executable, "-m", "slotkeeper_serving", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert message in result.stderr


def _refuses_connections(base_url: str) -> bool:
    try:
        httpx.get(base_url + "/v2/health/live", timeout=2)
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        return False  # accepted, then cut off: the listener is closing
    return False


def test_sigterm_finishes_in_flight_requests(spawn_server, score_py_dirs, tmp_path, wait_for):
    release = tmp_path / "release"
    server = spawn_server(
        [],
        env={
            "SLOTKEEPER_MODEL_URI": str(score_py_dirs["inspect"]),
            "SLOTKEEPER_MODEL_NAME": "slow",
            "SCORE_RELEASE_FILE": str(release),
        },
    )
    url = server.base_url + "/v2/models/slow/infer"
    body = {"inputs": [{"name": "mode", "shape": [1], "datatype": "INT64", "data": [8]}]}  # run() waits for `release`
    results: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: results.append(httpx.post(url, json=body, timeout=60)))
    thread.start()
    wait_for(lambda: server.counts()["in_flight"] == 1, timeout=20, what="the request to be in flight")
    server.close_client()

    server.process.send_signal(signal.SIGTERM)
    # The drain has begun: no new connections ...
    wait_for(lambda: _refuses_connections(server.base_url), timeout=20, what="the server to stop accepting")
    # ... while the request in flight is held (run() cannot return before the file exists).
    assert server.process.poll() is None and thread.is_alive() and not results
    release.touch()
    thread.join(timeout=60)
    assert results and results[0].status_code == 200
    assert results[0].json()["outputs"] == [{"name": "predict", "shape": [2], "datatype": "INT64", "data": [8, 1]}]
    assert results[0].headers["connection"] == "close"
    # A drain that finished every request is a clean exit.
    assert server.process.wait(timeout=30) == 0
    assert "SIGTERM: draining now (no shutdown delay configured)" in server.log_text()


def test_sigterm_during_a_hung_download_exits_without_waiting(spawn_server, static_http):
    base, _ = static_http
    server = spawn_server(
        ["--shutdown-delay-seconds", "600"],
        env={"SLOTKEEPER_MODEL_URI": f"{base}/hang/model.joblib", "SLOTKEEPER_MODEL_NAME": "hung"},
        wait_ready=False,
    )
    assert httpx.get(server.base_url + "/v2/models/hung").json()["state"] == "loading"
    server.process.send_signal(signal.SIGTERM)
    # The download never finishes (until the session ends) and the delay is
    # 600 s: exiting at all proves the server waits for neither. Never ready,
    # it was never in a Service's endpoints, so it has no traffic to wait for.
    assert server.process.wait(timeout=60) == 0
    assert "SIGTERM: draining now (never ready, so no shutdown delay)" in server.log_text()


def test_several_workers_report_exact_totals(spawn_server, model_files, tmp_path, make_body):
    cache = tmp_path / "cache"
    server = spawn_server(
        ["--workers", "2"],
        env={
            "SLOTKEEPER_MODEL_URI": str(model_files["logreg"]),
            "SLOTKEEPER_MODEL_NAME": "multi",
            "SLOTKEEPER_CACHE_DIR": str(cache),
        },
    )
    url = server.base_url + "/v2/models/multi/infer"
    ok, bad = 60, 25
    # A new connection per request so both workers get traffic.
    for i in range(ok + bad):
        body = make_body([[float(i), 0.0, 1.0, 2.0]]) if i < ok else {"inputs": "nope"}
        response = httpx.post(url, json=body, headers={"connection": "close"})
        assert response.status_code == (200 if i < ok else 400)
    pids = {path.stem.rsplit("_", 1)[1] for path in (cache / "prometheus-multiproc").glob("counter_*.db")}
    assert len(pids) == 2  # one file per worker process
    for _ in range(6):  # any worker may answer a scrape: each must aggregate all
        counts = server.counts()
        assert (counts["success"], counts["failure"], counts["observed"], counts["in_flight"]) == (ok, bad, ok + bad, 0)


def test_settings_defaults_and_environment_parsing(tmp_path):
    settings = settings_from_env({"SLOTKEEPER_MODEL_URI": "/m"})
    assert (
        settings.port,
        settings.workers,
        settings.max_request_bytes,
        settings.model_format,
        settings.shutdown_delay_seconds,
    ) == (8080, 1, 16 * MiB, None, 5.0)
    parsed = settings_from_env(
        {
            "SLOTKEEPER_MODEL_URI": "/m",
            "SLOTKEEPER_MODEL_NAME": "credit",
            "SLOTKEEPER_MODEL_FORMAT": "Score-Py",
            "SLOTKEEPER_MODEL_VERSION": "abc",
            "SLOTKEEPER_PORT": "9000",
            "SLOTKEEPER_WORKERS": "3",
            "SLOTKEEPER_MAX_REQUEST_BYTES": "1_000",
            "SLOTKEEPER_CACHE_DIR": str(tmp_path),
            "SLOTKEEPER_FASTPATH": "false",
            "SLOTKEEPER_SHUTDOWN_DELAY_SECONDS": "2.5",
            "SLOTKEEPER_HOST": "",  # empty means unset
        }
    )
    assert parsed == Settings(
        model_uri="/m",
        model_name="credit",
        model_format="score-py",
        model_version="abc",
        port=9000,
        workers=3,
        max_request_bytes=1000,
        cache_dir=tmp_path,
        fastpath=False,
        shutdown_delay_seconds=2.5,
    )
    assert settings_from_env(parsed.to_env()) == parsed
    with pytest.raises(ConfigError, match="SLOTKEEPER_FASTPATH"):
        settings_from_env({"SLOTKEEPER_MODEL_URI": "/m", "SLOTKEEPER_FASTPATH": "maybe"})
