"""What a server process and its app share about the process's life.

One instance per process (`PROCESS`): signals are per process, and with
several workers every worker process has its own server, app and lifecycle.
Tests may hand their own instance to ServingApp and GracefulServer.
"""

from __future__ import annotations


class Lifecycle:
    def __init__(self) -> None:
        # Set by the app once its model is loaded. A server that was never
        # ready was never in a Service's endpoints, so it skips the shutdown delay.
        self.ever_ready = False
        # Set by the server at the first SIGTERM/SIGINT: from then on readiness
        # answers 503 and every response carries `Connection: close`.
        self.terminating = False


PROCESS = Lifecycle()
