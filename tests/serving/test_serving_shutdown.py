"""The shutdown delay: not ready at once, still serving, then the drain; signals; several workers.

No test measures time. Delays are either 600 s, so that an exit at all proves
the delay was ended early (the waits are far shorter), or short and waited
out through events (the listener closing, log lines).
"""

from __future__ import annotations

import json
import signal
import socket
import threading

import httpx
import pytest
import uvicorn

from slotkeeper_serving.lifecycle import Lifecycle
from slotkeeper_serving.shutdown import GracefulServer

LONG_DELAY = ["--shutdown-delay-seconds", "600"]
# (SIGTERM then SIGINT follows the same rules: see the GracefulServer tests.)
SIGNAL_PAIRS = [
    pytest.param(signal.SIGTERM, signal.SIGTERM, id="SIGTERM-SIGTERM"),
    pytest.param(signal.SIGINT, signal.SIGINT, id="ctrl-c-twice"),
]


class RawConnection:
    """One HTTP/1.1 connection, to see exactly which connection answers and when the server closes it."""

    def __init__(self, base_url: str) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=20)
        self.stream = self.sock.makefile("rb")

    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        head = f"{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
        self.sock.sendall(head.encode() + b"content-length: %d\r\n\r\n" % len(body) + body)
        status = int(self.stream.readline().split()[1])
        headers = {}
        while (line := self.stream.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, self.stream.read(int(headers.get("content-length", "0")))

    def closed_by_server(self) -> bool:
        """Blocks until the server closes the connection (True) or sends more (False); a timeout fails."""
        return self.stream.read(1) == b""

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return None


def _refuses_connections(base_url: str) -> bool:
    try:
        httpx.get(base_url + "/v2/health/live", timeout=2)
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        return False
    return False


INFER_BODY = b'{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP64","data":[0.3,-1.2,0.8,2.1]}]}'


# ------------------------------------------------------------------ the app


def test_terminating_app_is_not_ready_and_closes_every_connection(start_server, model_files, trained):
    server = start_server(model_files["logreg"], model_name="closing")
    server.app.lifecycle = lifecycle = Lifecycle()
    conn = RawConnection(server.base_url)
    try:
        status, headers, _ = conn.request("GET", "/v2/health/ready")
        assert status == 200 and "connection" not in headers

        lifecycle.terminating = True
        for path, expected in [
            ("/v2/health/ready", 503),
            ("/v2/models/closing/ready", 503),
            ("/v2/health/live", 200),
            ("/v2/models/closing", 200),
            ("/metrics", 200),
        ]:
            with httpx.Client(base_url=server.base_url) as client:
                response = client.get(path)
            assert (path, response.status_code, response.headers.get("connection")) == (path, expected, "close")
        assert httpx.get(server.base_url + "/v2/health/ready").json() == {"ready": False, "error": "shutting down"}
        # The keep-alive connection opened before: answered, then closed.
        status, headers, body = conn.request("POST", "/v2/models/closing/infer", INFER_BODY)
        assert (status, headers["connection"]) == (200, "close")
        assert json.loads(body)["outputs"][0]["data"] == trained("logreg").predict([[0.3, -1.2, 0.8, 2.1]]).tolist()
        assert conn.closed_by_server()
    finally:
        conn.close()


# ------------------------------------------------------------------ the server's signal rules


async def _noop_app(scope, receive, send) -> None:
    pass


def _server(delay: float, ever_ready: bool = True) -> tuple[GracefulServer, Lifecycle]:
    lifecycle = Lifecycle()
    lifecycle.ever_ready = ever_ready
    return GracefulServer(uvicorn.Config(_noop_app), shutdown_delay=delay, lifecycle=lifecycle), lifecycle


def test_first_signal_starts_the_delay_second_ends_it_sigint_forces():
    server, lifecycle = _server(5.0)
    server.handle_exit(signal.SIGTERM, None)
    assert lifecycle.terminating and server.delay_ends is not None and not server.should_exit
    server.handle_exit(signal.SIGTERM, None)
    assert server.should_exit and not server.force_exit
    server.handle_exit(signal.SIGTERM, None)  # during the drain: changes nothing (uvicorn's rule)
    assert not server.force_exit
    server.handle_exit(signal.SIGINT, None)  # Ctrl+C during the drain: stop waiting for requests
    assert server.force_exit and server.forced
    # Nothing for uvicorn to re-raise at exit: a clean drain exits 0, not 143.
    assert server._captured_signals == []


@pytest.mark.parametrize(("delay", "ever_ready"), [(0.0, True), (5.0, False)], ids=["no-delay", "never-ready"])
def test_no_delay_when_none_is_configured_or_never_ready(delay, ever_ready):
    server, lifecycle = _server(delay, ever_ready)
    server.handle_exit(signal.SIGTERM, None)
    assert lifecycle.terminating and server.should_exit and server.delay_ends is None


async def test_the_drain_starts_when_the_delay_is_over():
    server, _ = _server(5.0)
    server.handle_exit(signal.SIGTERM, None)
    assert await server.on_tick(1) is False  # 5 s from now
    server.delay_ends -= 5.0
    assert await server.on_tick(2) is True and server.should_exit


# ------------------------------------------------------------------ real processes


@pytest.mark.parametrize(("first", "second"), SIGNAL_PAIRS)
def test_delay_keeps_serving_until_a_second_signal(spawn_server, model_files, trained, wait_for, first, second):
    server = spawn_server(LONG_DELAY, env={"SLOTKEEPER_MODEL_URI": str(model_files["logreg"])})
    ready_url = server.base_url + "/v2/health/ready"
    kept = RawConnection(server.base_url)  # a keep-alive connection from before the signal
    try:
        status, headers, _ = kept.request("POST", "/v2/models/model/infer", INFER_BODY)
        assert status == 200 and "connection" not in headers

        server.process.send_signal(first)
        wait_for(lambda: _status(ready_url) == 503, timeout=20, what="readiness to answer 503")
        # Not ready, but still accepting and answering, on new connections ...
        response = httpx.post(server.base_url + "/v2/models/model/infer", content=INFER_BODY)
        assert (response.status_code, response.headers["connection"]) == (200, "close")
        assert response.json()["outputs"][0]["data"] == trained("logreg").predict([[0.3, -1.2, 0.8, 2.1]]).tolist()
        assert _status(server.base_url + "/v2/health/live") == 200
        assert _status(server.base_url + "/v2/models/model/ready") == 503
        # ... and on the keep-alive one, which the server then closes so its client reconnects elsewhere.
        status, headers, _ = kept.request("POST", "/v2/models/model/infer", INFER_BODY)
        assert (status, headers["connection"]) == (200, "close")
        assert kept.closed_by_server()
        assert server.process.poll() is None
    finally:
        kept.close()

    server.process.send_signal(second)
    # The delay is 600 s: exiting within the wait proves the second signal ended it.
    assert server.process.wait(timeout=60) == 0
    log = server.log_text()
    assert f"{first.name}: reporting not ready, still serving for 600 s" in log
    assert f"{second.name} during the shutdown delay: draining now" in log


def test_delay_elapses_then_the_drain_finishes_in_flight_requests(spawn_server, score_py_dirs, tmp_path, wait_for):
    release = tmp_path / "release"
    server = spawn_server(
        ["--shutdown-delay-seconds", "1"],
        env={
            "SLOTKEEPER_MODEL_URI": str(score_py_dirs["inspect"]),
            "SLOTKEEPER_MODEL_NAME": "slow",
            "SCORE_RELEASE_FILE": str(release),
        },
    )
    body = {"inputs": [{"name": "mode", "shape": [1], "datatype": "INT64", "data": [8]}]}  # run() waits for `release`
    results: list[httpx.Response] = []
    thread = threading.Thread(
        target=lambda: results.append(httpx.post(server.base_url + "/v2/models/slow/infer", json=body, timeout=60))
    )
    thread.start()
    wait_for(lambda: server.counts()["in_flight"] == 1, timeout=20, what="the request to be in flight")
    server.close_client()

    server.process.send_signal(signal.SIGTERM)
    wait_for(lambda: _status(server.base_url + "/v2/health/ready") == 503, timeout=20, what="readiness 503")
    # The delay runs out by itself; then the server stops accepting but holds the request in flight.
    wait_for(lambda: _refuses_connections(server.base_url), timeout=30, what="the drain to start")
    assert server.process.poll() is None and thread.is_alive() and not results
    assert "shutdown delay of 1 s over: draining" in server.log_text()
    release.touch()
    thread.join(timeout=60)
    assert results and results[0].status_code == 200
    assert results[0].json()["outputs"][0]["data"] == [8, 1]
    assert results[0].headers["connection"] == "close"
    assert server.process.wait(timeout=30) == 0


def test_workers_get_every_signal_at_once(spawn_server, model_files, tmp_path, wait_for):
    first = second = signal.SIGTERM
    server = spawn_server(
        ["--workers", "2", *LONG_DELAY],
        env={"SLOTKEEPER_MODEL_URI": str(model_files["logreg"]), "SLOTKEEPER_CACHE_DIR": str(tmp_path / "cache")},
    )
    # Only the supervisor (PID 1 in a container) gets the signal; it relays it to both workers.
    server.process.send_signal(first)
    wait_for(
        lambda: server.log_text().count(f"{first.name}: reporting not ready") == 2,
        timeout=20,
        what="both workers to start their delay",
    )
    for _ in range(6):  # new connections reach either worker: all answer, none is ready
        assert _status(server.base_url + "/v2/health/ready") == 503
        response = httpx.post(server.base_url + "/v2/models/model/infer", content=INFER_BODY)
        assert (response.status_code, response.headers["connection"]) == (200, "close")
    assert server.process.poll() is None

    server.process.send_signal(second)
    assert server.process.wait(timeout=60) == 0  # both workers drained and exited 0 well before 600 s
    assert server.log_text().count(f"{second.name} during the shutdown delay: draining now") == 2


def test_ctrl_c_during_the_drain_exits_without_waiting(spawn_server, score_py_dirs, tmp_path, wait_for):
    release = tmp_path / "never-created"
    server = spawn_server(
        [],  # no delay: the first SIGINT starts the drain
        env={
            "SLOTKEEPER_MODEL_URI": str(score_py_dirs["inspect"]),
            "SLOTKEEPER_MODEL_NAME": "slow",
            "SCORE_RELEASE_FILE": str(release),
        },
    )
    body = {"inputs": [{"name": "mode", "shape": [1], "datatype": "INT64", "data": [8]}]}  # held up to 60 s
    results: list[object] = []

    def post() -> None:
        try:
            results.append(httpx.post(server.base_url + "/v2/models/slow/infer", json=body, timeout=120))
        except httpx.HTTPError as exc:
            results.append(exc)

    thread = threading.Thread(target=post)
    thread.start()
    wait_for(lambda: server.counts()["in_flight"] == 1, timeout=20, what="the request to be in flight")
    server.close_client()
    server.process.send_signal(signal.SIGINT)
    wait_for(lambda: _refuses_connections(server.base_url), timeout=20, what="the drain to start")
    assert server.process.poll() is None  # waiting for the held request
    server.process.send_signal(signal.SIGINT)
    # 130, not 0: had the server waited for the request (released after 60 s), the drain would have completed.
    assert server.process.wait(timeout=60) == 130
    thread.join(timeout=60)
    # The abandoned request fails: uvicorn answers 500 when its task is cancelled (or the connection drops).
    assert results and (isinstance(results[0], httpx.HTTPError) or results[0].status_code == 500)
    assert "SIGINT during the drain: exiting without waiting for in-flight requests" in server.log_text()
