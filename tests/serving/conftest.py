"""Fixtures for the serving-image tests: tiny models trained here, real servers on loopback.

Servers run either in a thread of the test process (uvicorn.Server on a
pre-bound 127.0.0.1 socket: fast to start, each with its own metrics
registry) or as a subprocess through the real CLI (signals, workers, env).
Nothing is downloaded: http(s) loading is tested against a local http.server.
"""

from __future__ import annotations

import functools
import http.server
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from slotkeeper_serving.app import ServingApp
from slotkeeper_serving.config import Settings
from slotkeeper_serving.models import load_model
from slotkeeper_serving.server import uvicorn_options

START_TIMEOUT = 20.0
STALL_SECONDS = 5.0  # how long the local http.server's /stall/... URLs hang


# ------------------------------------------------------------------ models


@pytest.fixture(scope="session")
def training_data() -> tuple[np.ndarray, np.ndarray]:
    """20 rows of 4 features with a linear-ish binary label; fixed seed."""
    rng = np.random.RandomState(7)
    X = rng.randn(20, 4)
    y = (X[:, 0] - 0.5 * X[:, 2] + 0.1 * rng.randn(20) > 0).astype(np.int64)
    return X, y


@pytest.fixture(scope="session")
def model_files(tmp_path_factory, training_data) -> dict[str, Path]:
    """Pickled scikit-learn models, trained in the test session."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    X, y = training_data
    root = tmp_path_factory.mktemp("models")
    models = {
        "logreg": LogisticRegression().fit(X, y),
        "tree": DecisionTreeClassifier(random_state=0).fit(X, y),
        "linreg": LinearRegression().fit(X, X @ np.array([1.5, -2.0, 0.25, 3.0]) + 0.5),
        "pipeline": make_pipeline(StandardScaler(), LogisticRegression()).fit(X, np.where(y == 1, "approve", "deny")),
    }
    paths = {}
    for name, model in models.items():
        paths[name] = root / f"{name}.joblib"
        joblib.dump(model, paths[name])
    texts = ["great service", "awful delay", "great value", "awful support", "friendly and great", "slow and awful"]
    text_model = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(texts, [1, 0, 1, 0, 1, 0])
    joblib.dump(text_model, root / "text.joblib")
    paths["text"] = root / "text.joblib"
    paths["pickle"] = root / "logreg.pkl"
    import pickle

    paths["pickle"].write_bytes(pickle.dumps(models["logreg"]))
    paths["corrupt"] = root / "corrupt.joblib"
    paths["corrupt"].write_bytes(b"this is not a pickle")
    return paths


@pytest.fixture(scope="session")
def trained(model_files) -> Callable[[str], Any]:
    """Load a trained model object by name (to compare the server's answers with)."""
    return lambda name: joblib.load(model_files[name])


AZUREML_SCORE_PY = """
import json
import os

import joblib
import numpy as np


def init():
    global model
    # Unchanged Azure ML idiom: the model file lives under AZUREML_MODEL_DIR.
    model_path = os.path.join(os.getenv("AZUREML_MODEL_DIR"), "model.joblib")
    model = joblib.load(model_path)


def run(raw_data):
    data = np.array(json.loads(raw_data)["data"])
    result = model.predict(data)
    return result.tolist()
"""

# An entry script exercising every mapping rule, driven by the request's
# first value (an INT64 "mode" tensor).
INSPECTING_SCORE_PY = """
import json
import os
import threading
import time

MODEL_DIR = None
INIT_THREAD = None


def init():
    global MODEL_DIR, INIT_THREAD
    MODEL_DIR = os.environ["AZUREML_MODEL_DIR"]
    INIT_THREAD = threading.get_ident()


def run(raw_data):
    doc = json.loads(raw_data)
    mode = doc["data"][0]
    if mode == 0:
        return {"raw": [raw_data], "model_dir": [MODEL_DIR], "same_thread": [INIT_THREAD == threading.get_ident()]}
    if mode == 1:
        return json.dumps({"doubled": [2 * x for x in doc["data"]]})
    if mode == 2:
        raise RuntimeError("the model is broken")
    if mode == 3:
        return {"error": "scoring failed"}
    if mode == 4:
        return [[1, 2], [3]]
    if mode == 5:
        return None
    if mode == 6:
        time.sleep(float(doc["data"][1]) / 1000)
        return [mode]
    if mode == 7:
        return "plain text"
    if mode == 8:
        # Hold the request until the test creates the file named by
        # SCORE_RELEASE_FILE (bounded, so a failed test cannot hang a worker).
        release = os.environ["SCORE_RELEASE_FILE"]
        deadline = time.monotonic() + 60
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.01)
        return [mode, int(os.path.exists(release))]
    return 42
"""


@pytest.fixture(scope="session")
def score_py_dirs(tmp_path_factory, model_files) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("score")
    dirs = {}
    dirs["azureml"] = root / "azureml"
    dirs["azureml"].mkdir()
    (dirs["azureml"] / "score.py").write_text(AZUREML_SCORE_PY)
    (dirs["azureml"] / "model.joblib").write_bytes(model_files["logreg"].read_bytes())
    dirs["inspect"] = root / "inspect"
    dirs["inspect"].mkdir()
    (dirs["inspect"] / "score.py").write_text(INSPECTING_SCORE_PY)
    dirs["broken_init"] = root / "broken_init"
    dirs["broken_init"].mkdir()
    (dirs["broken_init"] / "score.py").write_text(
        textwrap.dedent(
            """
            def init():
                raise FileNotFoundError("model.onnx is missing")

            def run(raw_data):
                return []
            """
        )
    )
    dirs["no_run"] = root / "no_run"
    dirs["no_run"].mkdir()
    (dirs["no_run"] / "score.py").write_text("def init():\n    pass\n")
    return dirs


# ------------------------------------------------------------------ servers


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@dataclass
class RunningServer:
    base_url: str
    model_name: str
    model_version: str
    app: ServingApp | None = None
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    _client: httpx.Client | None = field(default=None, repr=False)

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(base_url=self.base_url, timeout=10.0)
        return self._client

    def infer_url(self, name: str | None = None) -> str:
        return f"/v2/models/{name or self.model_name}/infer"

    def metrics(self) -> dict:
        response = self.client.get("/metrics")
        assert response.status_code == 200
        return parse_metrics(response.text)

    def metric(self, snapshot: dict, name: str, **labels: str) -> float:
        labels.setdefault("model", self.model_name)
        labels.setdefault("version", self.model_version)
        return snapshot.get((name, tuple(sorted(labels.items()))), 0.0)

    def counts(self) -> dict[str, float]:
        """The numbers the operator reads: successes, failures, histogram count and +Inf bucket, in flight."""
        snap = self.metrics()
        return {
            "success": self.metric(snap, "slotkeeper_requests_total", outcome="success"),
            "failure": self.metric(snap, "slotkeeper_requests_total", outcome="failure"),
            "observed": self.metric(snap, "slotkeeper_request_duration_seconds_count"),
            "inf_bucket": self.metric(snap, "slotkeeper_request_duration_seconds_bucket", le="+Inf"),
            "in_flight": self.metric(snap, "slotkeeper_requests_in_flight"),
        }

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path else ""

    def close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def wait_until(predicate: Callable[[], bool], timeout: float = START_TIMEOUT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _probe(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=1.0).status_code
    except httpx.HTTPError:
        return None


@pytest.fixture(scope="session")
def start_server(tmp_path_factory) -> Iterator[Callable[..., RunningServer]]:
    """start_server(model_uri, wait_ready=True, loader=None, **settings) -> an in-thread server on loopback."""
    stoppers: list[Callable[[], Iterator[None]]] = []

    def start(model_uri: str, *, wait_ready: bool = True, loader=None, **overrides: Any) -> RunningServer:
        overrides.setdefault("model_name", "credit")
        overrides.setdefault("cache_dir", tmp_path_factory.mktemp("cache"))
        settings = Settings(model_uri=str(model_uri), host="127.0.0.1", port=0, **overrides)
        app = ServingApp(settings, loader=loader or load_model)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        options = uvicorn_options(settings)
        options.update(host="127.0.0.1", port=port, log_level="warning")
        server = uvicorn.Server(uvicorn.Config(app, **options))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"uvicorn-{port}")
        thread.start()
        handle = RunningServer(f"http://127.0.0.1:{port}", settings.model_name, settings.model_version, app=app)

        def stop() -> None:
            handle.close_client()
            server.should_exit = True
            yield  # every server is told first, then all are awaited together
            thread.join(timeout=10)
            sock.close()

        stoppers.append(stop)
        wait_until(lambda: server.started, what="uvicorn to start")
        if wait_ready:
            wait_until(lambda: app.slot.state != "loading", what="the model to load")
            assert app.slot.state == "ready", f"model failed to load: {app.slot.reason}"
        return handle

    yield start
    stopping = [stop() for stop in stoppers]
    for steps in stopping:
        next(steps)
    for steps in stopping:
        next(steps, None)


@pytest.fixture(scope="session")
def spawn_server(tmp_path_factory) -> Iterator[Callable[..., RunningServer]]:
    """spawn_server(args, env=None, wait_ready=True) -> the real CLI in a subprocess on a free port."""
    handles: list[RunningServer] = []
    command = [sys.executable, "-m", "slotkeeper_serving"]

    def spawn(
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
        executable: list[str] | None = None,
    ) -> RunningServer:
        port = free_port()
        log_path = tmp_path_factory.mktemp("proc") / "server.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLOTKEEPER_", "PROMETHEUS_"))}
        full_env.update({"SLOTKEEPER_HOST": "127.0.0.1", "SLOTKEEPER_PORT": str(port)})
        full_env.setdefault("SLOTKEEPER_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        # No shutdown delay unless a test asks for one (an empty value means the default).
        full_env["SLOTKEEPER_SHUTDOWN_DELAY_SECONDS"] = "0"
        full_env.update(env or {})
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                (executable or command) + args, env=full_env, stdout=log, stderr=subprocess.STDOUT
            )
        base_url = f"http://127.0.0.1:{full_env['SLOTKEEPER_PORT']}"
        handle = RunningServer(
            base_url,
            full_env.get("SLOTKEEPER_MODEL_NAME", "model"),
            full_env.get("SLOTKEEPER_MODEL_VERSION", ""),
            process=process,
            log_path=log_path,
        )

        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
            return _probe(base_url + ("/v2/health/ready" if wait_ready else "/v2/health/live")) == 200

        handles.append(handle)
        wait_until(up, what="the server process")
        return handle

    yield spawn
    running = [handle for handle in handles if handle.process.poll() is None]
    for handle in running:
        handle.close_client()
        handle.process.send_signal(signal.SIGTERM)
    for handle in running:
        process = handle.process
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)  # a second signal ends a shutdown delay
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    for handle in handles:
        handle.close_client()


@pytest.fixture(scope="session")
def credit_server(start_server, model_files) -> RunningServer:
    """The LogisticRegression served as 'credit' revision 'rev1' with a 64 KiB body limit (so oversized bodies are cheap)."""
    return start_server(model_files["logreg"], model_name="credit", model_version="rev1", max_request_bytes=64 * 1024)


@pytest.fixture(scope="session")
def static_http(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A local http.server on 127.0.0.1 serving a directory: (base URL, directory).

    /stall/... answers headers, then nothing for STALL_SECONDS; /hang/... answers
    headers, then nothing until the session ends.
    """
    root = tmp_path_factory.mktemp("www")
    released = threading.Event()

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.path.startswith("/stall"):
                # Headers, then silence: exercises the download timeout.
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                time.sleep(STALL_SECONDS)
                return
            if self.path.startswith("/hang"):
                # Headers, then silence until the session ends: a download that never finishes.
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                released.wait(timeout=600)
                return
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    released.set()
    server.shutdown()
    server.server_close()


def infer_body(
    rows: list[list[float]] | np.ndarray, datatype: str = "FP64", name: str = "input-0", **extra: Any
) -> dict[str, Any]:
    rows = np.asarray(rows).tolist()
    return {"inputs": [{"name": name, "shape": [len(rows), len(rows[0])], "datatype": datatype, "data": rows}], **extra}


@pytest.fixture
def make_body() -> Callable[..., dict[str, Any]]:
    """make_body(rows, datatype="FP64", **extra) -> a v2 infer request with one 2-D input."""
    return infer_body


@pytest.fixture
def wait_for() -> Callable[..., None]:
    """wait_for(predicate, timeout=..., what=...) polls until predicate() is true or fails the test."""
    return wait_until
