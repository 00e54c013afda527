"""Shutting down behind a Kubernetes Service without refusing traffic.

The kubelet sends SIGTERM at the moment the pod leaves the Service's
endpoints, but kube-proxy on every node (and any other load balancer) takes
a moment, typically 1-5 s, to stop sending it new connections. uvicorn's own
shutdown stops accepting at SIGTERM, so connections arriving in that window
are refused. GracefulServer waits first:

1. First SIGTERM/SIGINT: readiness answers 503 at once (Lifecycle.terminating),
   every response carries `Connection: close` so keep-alive clients reconnect
   (through the load balancer, which soon stops choosing this pod), and the
   server keeps accepting and answering for `shutdown_delay` seconds.
2. Then uvicorn's graceful shutdown: stop accepting, close idle connections,
   finish in-flight requests, exit.

A second SIGTERM/SIGINT during the delay ends it early; a SIGINT during the
drain forces exit (uvicorn's rule). A server whose model never loaded was
never ready, so never in the endpoints: it skips the delay.

Exit status: 0 after a complete drain, 130 when a SIGINT cut the drain short
(uvicorn would re-raise the signal instead: status 143 for every SIGTERM).

With several workers, Supervisor (uvicorn's Multiprocess) relays every
SIGTERM/SIGINT to the workers the moment it arrives, instead of sending one
SIGTERM after its next 0.5 s poll, so every worker starts (and can end) its
delay together with the pod.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import socket
import sys
import time
from types import FrameType

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import multiprocess

from . import lifecycle as _lifecycle
from .lifecycle import Lifecycle

log = logging.getLogger(__name__)

FORCED_EXIT_STATUS = 130  # 128 + SIGINT, as a shell reports an interrupted command
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulServer(uvicorn.Server):
    """uvicorn.Server with a shutdown delay between the first stop signal and the drain."""

    def __init__(self, config: uvicorn.Config, *, shutdown_delay: float, lifecycle: Lifecycle | None = None) -> None:
        super().__init__(config)
        self.shutdown_delay = shutdown_delay
        self._lifecycle = lifecycle
        self.delay_ends: float | None = None  # time.monotonic() deadline while delaying
        # Signal handlers only record what happened; the event loop logs it
        # (logging from inside a signal handler could interleave with a record being written).
        self._notes: list[str] = []

    @property
    def lifecycle(self) -> Lifecycle:
        # Looked up at use: in a worker process, the app is created after the server.
        return self._lifecycle or _lifecycle.PROCESS

    @property
    def forced(self) -> bool:
        return self.force_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        name = signal.Signals(sig).name
        if self.should_exit:
            # Already draining. uvicorn's rule: SIGINT (a second Ctrl+C) stops
            # waiting for in-flight requests; SIGTERM changes nothing.
            if sig == signal.SIGINT and not self.force_exit:
                self.force_exit = True
                self._notes.append(f"{name} during the drain: exiting without waiting for in-flight requests")
            return
        # Not recorded in _captured_signals: uvicorn would re-raise them at exit,
        # turning a clean drain into exit status 143.
        lifecycle = self.lifecycle
        if self.delay_ends is not None:
            self._notes.append(f"{name} during the shutdown delay: draining now")
        elif self.shutdown_delay > 0 and lifecycle.ever_ready:
            lifecycle.terminating = True
            self.delay_ends = time.monotonic() + self.shutdown_delay
            self._notes.append(
                f"{name}: reporting not ready, still serving for {self.shutdown_delay:g} s so load balancers "
                "stop sending traffic first, then draining (SIGTERM/SIGINT again to drain now)"
            )
            return
        else:
            lifecycle.terminating = True
            why = "no shutdown delay configured" if self.shutdown_delay <= 0 else "never ready, so no shutdown delay"
            self._notes.append(f"{name}: draining now ({why})")
        self.should_exit = True

    def _flush_notes(self) -> None:
        while self._notes:
            log.info(self._notes.pop(0))

    async def on_tick(self, counter: int) -> bool:
        self._flush_notes()
        if self.delay_ends is not None and not self.should_exit and time.monotonic() >= self.delay_ends:
            log.info("shutdown delay of %g s over: draining", self.shutdown_delay)
            self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._flush_notes()
        # Also when the drain starts without a signal (limit_max_requests):
        # responses from now on close their connection.
        self.lifecycle.terminating = True
        await super().shutdown(sockets=sockets)
        self._flush_notes()


def exit_now(status: int) -> None:
    """End the process once its server has shut down, without joining leftover threads.

    A model still loading (a stalled download, a slow score.py init()) runs
    on threads that would otherwise hold up the exit; uvicorn's re-raised
    signal used to end the process the same abrupt way, with status 143.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def run_server(config: uvicorn.Config, shutdown_delay: float) -> int:
    """One process: serve until stopped; the exit status (see the module docstring)."""
    server = GracefulServer(config, shutdown_delay=shutdown_delay)
    server.run()
    if not server.started:
        return STARTUP_FAILURE
    return FORCED_EXIT_STATUS if server.forced else 0


class WorkerProcess(multiprocess.Process):
    """uvicorn's worker process, running a GracefulServer."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket], *, shutdown_delay: float) -> None:
        self.shutdown_delay = shutdown_delay  # pickled with the process for the spawned child
        super().__init__(config, sockets)

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = GracefulServer(self.config, shutdown_delay=self.shutdown_delay)
        return self._server

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # runs in the child
        super().target(sockets)
        exit_now(FORCED_EXIT_STATUS if self.server.force_exit else 0)


class Supervisor(multiprocess.Multiprocess):
    """uvicorn's Multiprocess with GracefulServer workers and stop signals relayed at once.

    In a container only PID 1 (this process) receives the kubelet's SIGTERM.
    uvicorn's parent would poll for it every 0.5 s and then send each worker
    one SIGTERM; here each SIGTERM/SIGINT is relayed the moment it arrives,
    the second one too, so a second signal ends the workers' delay as it does
    with one process. (A terminal's Ctrl+C reaches every process of the
    group, and the relay makes it two for each worker: they drain at once,
    which is what someone at a terminal wants.)
    """

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket], *, shutdown_delay: float) -> None:
        self.shutdown_delay = shutdown_delay
        self._relayed: set[int] = set()
        super().__init__(config, sockets)
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._relay)

    def _relay(self, sig: int, frame: FrameType | None) -> None:
        for process in list(self.processes):
            pid = process.pid
            if pid is not None and process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                self._relayed.add(pid)
        self.signal_queue.append(sig)  # the supervisor loop stops too, as in uvicorn

    def terminate_all(self) -> None:
        # A worker that already has the signal must not get another one: it
        # would end its shutdown delay.
        for process in self.processes:
            if process.pid not in self._relayed:
                process.terminate()

    def run(self) -> None:
        # uvicorn constructs workers by the module-level name `Process` (in
        # init_processes, keep_subprocess_alive, restart_all, handle_ttin) and
        # offers no hook: point the name at WorkerProcess while supervising.
        # Only this (parent) process sees it; workers unpickle their WorkerProcess.
        original = multiprocess.Process
        multiprocess.Process = functools.partial(WorkerProcess, shutdown_delay=self.shutdown_delay)  # type: ignore[misc]
        try:
            super().run()
        finally:
            multiprocess.Process = original  # type: ignore[misc]

    def exit_status(self) -> int:
        """0 when every worker drained and exited cleanly."""
        codes = [process.exitcode for process in self.processes]
        return 0 if codes and all(code == 0 for code in codes) else 1


def run_workers(config: uvicorn.Config, shutdown_delay: float) -> int:
    """Several worker processes on one socket (config.workers > 1); the exit status."""
    sock = config.bind_socket()
    supervisor = Supervisor(config, [sock], shutdown_delay=shutdown_delay)
    try:
        supervisor.run()
    finally:
        sock.close()
    return supervisor.exit_status()
