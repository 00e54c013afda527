"""A scale-down under load on loopback, counting failed requests.

Shared by tests/serving/test_serving_scale_down.py and
benchmarks/serving/scale_down.py, so the benchmark measures exactly what the
test asserts.

- Backends ("pods") are real `slotkeeper-serve` processes started through the
  installed console script, as a user runs it.
- LoadBalancer is a TCP round-robin balancer standing in for kube-proxy: a
  connection stays with the backend chosen when it was opened (as a
  conntrack entry does), and a backend leaves the pool only `lag` seconds
  after it was sent SIGTERM (endpoint propagation). An attempt to reach a
  backend that no longer listens is answered with a TCP reset, which the
  client sees as a failed request, as it would see kube-proxy's DNAT to a
  closed port.
- Clients run for the whole episode, some on keep-alive connections, some
  opening a new connection per request; every request that does not get a
  200 with the model's answer is a failure.

Nothing here asserts on time: the episode waits for events (requests
counted, processes exited) with generous timeouts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

MODEL_NAME = "scaledown"
SERVE = Path(sys.executable).with_name("slotkeeper-serve")
ROW = [0.35, -1.2, 0.8, 2.1]
BODY = (
    b'{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP64","data":[' + ",".join(map(str, ROW)).encode() + b"]}]}"
)
START_TIMEOUT = 90.0  # several servers importing scikit-learn at once on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_model(path: Path) -> Path:
    import joblib
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rng = np.random.RandomState(0)
    X = rng.randn(200, 4)
    y = (X @ np.array([1.0, -0.5, 0.25, 0.75]) + 0.1 * rng.randn(200) > 0).astype(int)
    joblib.dump(LogisticRegression().fit(X, y), path)
    return path


def expected_answer(model_path: Path) -> list[Any]:
    import joblib

    return joblib.load(model_path).predict([ROW]).tolist()


# ------------------------------------------------------------------ backends


@dataclass
class Backend:
    name: str
    port: int
    process: subprocess.Popen
    log_path: Path
    workers: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready_status(self) -> int | None:
        try:
            return httpx.get(self.url + "/v2/health/ready", timeout=2.0).status_code
        except httpx.HTTPError:
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_backend(name: str, model_path: Path, workdir: Path, *, shutdown_delay: float, workers: int = 1) -> Backend:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLOTKEEPER_", "PROMETHEUS_"))}
    env["SLOTKEEPER_CACHE_DIR"] = str(workdir / f"cache-{name}")
    log_path = workdir / f"{name}.log"
    command = [
        str(SERVE),
        "--model-uri",
        str(model_path),
        "--model-name",
        MODEL_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--shutdown-delay-seconds",
        str(shutdown_delay),
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    return Backend(name, port, process, log_path, workers)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def wait_ready(backend: Backend, timeout: float = START_TIMEOUT) -> None:
    def ready() -> bool:
        if backend.process.poll() is not None:
            raise RuntimeError(f"{backend.name} exited with {backend.process.returncode}:\n{backend.log()}")
        return backend.ready_status() == 200

    wait_until(ready, timeout, f"{backend.name} to be ready")


def stop_backend(backend: Backend, timeout: float = 60.0) -> int:
    """SIGTERM, and once the server has taken it (readiness 503), SIGTERM again to end its delay; the exit status."""
    process = backend.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        # Two signals sent back to back may arrive as one: wait for the first to be handled.
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: process.poll() is not None or backend.ready_status() == 503, timeout, "readiness 503")
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


# ------------------------------------------------------------------ balancer


class LoadBalancer:
    """Round-robin TCP balancer on 127.0.0.1, in a thread with its own event loop."""

    def __init__(self) -> None:
        self.pool: list[int] = []
        self.routed: collections.Counter[int] = collections.Counter()  # connections sent to a backend port
        self.refused: collections.Counter[int] = collections.Counter()  # of which the backend refused
        self._next = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="load-balancer", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    def start(self, ports: list[int]) -> int:
        self.pool = list(ports)
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=1024))
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def _call(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def remove_later(self, port: int, lag: float, min_new_connections: int = 0) -> threading.Event:
        """Take a backend out of the pool `lag` seconds from now (and not before `min_new_connections`
        more connections were routed to it, so the propagation window is always exercised)."""
        removed = threading.Event()

        async def later() -> None:
            start = self.routed[port]
            await asyncio.sleep(lag)
            while self.routed[port] - start < min_new_connections:
                await asyncio.sleep(0.01)
            self.pool.remove(port)
            removed.set()

        asyncio.run_coroutine_threadsafe(later(), self._loop)
        return removed

    def close(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()

        with contextlib.suppress(Exception):
            self._call(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if not self.pool:
            _reset(client_writer)
            return
        port = self.pool[self._next % len(self.pool)]
        self._next += 1
        self.routed[port] += 1
        try:
            backend_reader, backend_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            self.refused[port] += 1
            _reset(client_writer)
            return
        await asyncio.gather(_pipe(client_reader, backend_writer), _pipe(backend_reader, client_writer))


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        # One side is done (an HTTP/1.1 peer never half-closes): end the other too.
        writer.close()


# ------------------------------------------------------------------ clients


@dataclass
class Tally:
    ok: int = 0
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    lock: threading.Condition = field(default_factory=threading.Condition)

    @property
    def total(self) -> int:
        return self.ok + sum(self.failures.values())

    def add(self, failure: str | None) -> None:
        with self.lock:
            if failure is None:
                self.ok += 1
            else:
                self.failures[failure] += 1
            self.lock.notify_all()

    def wait_for_total(self, total: int, timeout: float) -> None:
        with self.lock:
            if not self.lock.wait_for(lambda: self.total >= total, timeout):
                raise TimeoutError(f"only {self.total} requests of {total} after {timeout} s")


class Clients:
    """`keepalive` clients reusing one connection each and `fresh` clients opening a new one per request."""

    def __init__(self, url: str, expected: list[Any], *, keepalive: int, fresh: int, timeout: float = 30.0) -> None:
        self.url = url
        self.expected = expected
        self.timeout = timeout
        self.tally = Tally()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(kind,), name=f"client-{kind}-{i}", daemon=True)
            for kind, count in (("keepalive", keepalive), ("fresh", fresh))
            for i in range(count)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 10)

    def _run(self, kind: str) -> None:
        headers = {"content-type": "application/json"}
        if kind == "fresh":
            headers["connection"] = "close"
        with httpx.Client(base_url=self.url, timeout=self.timeout, headers=headers) as client:
            while not self._stop.is_set():
                self.tally.add(self._one(client))

    def _one(self, client: httpx.Client) -> str | None:
        try:
            response = client.post(f"/v2/models/{MODEL_NAME}/infer", content=BODY)
        except httpx.HTTPError as exc:
            return type(exc).__name__
        if response.status_code != 200:
            return f"HTTP {response.status_code}"
        try:
            if response.json()["outputs"][0]["data"] != self.expected:
                return "wrong answer"
        except (ValueError, KeyError, IndexError):
            return "malformed answer"
        return None


# ------------------------------------------------------------------ episode


def scale_down(
    model_path: Path,
    workdir: Path,
    *,
    shutdown_delay: float,
    lag: float,
    workers: tuple[int, ...] = (1, 2, 1),
    remove: int = 2,
    keepalive_clients: int = 4,
    fresh_clients: int = 4,
    warmup_requests: int = 100,
    min_requests: int = 1000,
    requests_after: int = 200,
    min_new_connections: int = 5,
) -> dict[str, Any]:
    """Scale len(workers) backends down to len(workers) - remove under load; the figures.

    The first `remove` backends get SIGTERM at once; each leaves the
    balancer's pool `lag` seconds later. Clients run from before the
    SIGTERMs until the removed backends have exited, `requests_after` more
    requests have been made and at least `min_requests` in all.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    expected = expected_answer(model_path)
    backends = [
        start_backend(f"pod{i}", model_path, workdir, shutdown_delay=shutdown_delay, workers=count)
        for i, count in enumerate(workers)
    ]
    balancer = LoadBalancer()
    clients: Clients | None = None
    exits: dict[str, int | None] = {}
    try:
        for backend in backends:
            wait_ready(backend)
        balancer.start([backend.port for backend in backends])
        clients = Clients(
            f"http://127.0.0.1:{balancer.port}", expected, keepalive=keepalive_clients, fresh=fresh_clients
        )
        started = time.monotonic()
        clients.start()
        clients.tally.wait_for_total(warmup_requests, timeout=60)

        leaving, staying = backends[:remove], backends[remove:]
        terminated = time.monotonic()
        before = dict(balancer.routed)
        removals = []
        for backend in leaving:
            backend.process.send_signal(signal.SIGTERM)
            removals.append(balancer.remove_later(backend.port, lag, min_new_connections))
        for backend in leaving:
            try:
                exits[backend.name] = backend.process.wait(timeout=shutdown_delay + lag + 60)
            except subprocess.TimeoutExpired:
                exits[backend.name] = None
        exited = time.monotonic()
        for removed in removals:
            removed.wait(timeout=60)
        clients.tally.wait_for_total(max(min_requests, clients.tally.total + requests_after), timeout=120)
        clients.stop()
        finished = time.monotonic()
        tally = clients.tally
        for backend in staying:
            exits[backend.name] = stop_backend(backend)
        return {
            "shutdown_delay_s": shutdown_delay,
            "lag_s": lag,
            "backends": [{"name": b.name, "workers": b.workers, "removed": b in leaving} for b in backends],
            "requests": tally.total,
            "failed": sum(tally.failures.values()),
            "failures": dict(tally.failures),
            "exit_codes": exits,
            # Connections the balancer sent to each removed backend after its SIGTERM, and how many it refused.
            "routed_after_sigterm": {b.name: balancer.routed[b.port] - before.get(b.port, 0) for b in leaving},
            "refused": {b.name: balancer.refused[b.port] for b in leaving},
            "duration_s": round(finished - started, 2),
            "sigterm_to_exit_s": round(exited - terminated, 2),
        }
    finally:
        if clients is not None:
            clients.stop()
        balancer.close()
        for backend in backends:
            if backend.process.poll() is None:
                backend.process.kill()
                backend.process.wait()
