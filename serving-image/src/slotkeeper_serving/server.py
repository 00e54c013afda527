"""Running the app under uvicorn: one worker in-process, or several in multiprocess mode."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from typing import Any

from .config import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s"


def configure_logging(level: str = "info") -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(level.upper())


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn settings tuned for a model server behind a Kubernetes Service."""
    return {
        "host": settings.host,
        "port": settings.port,
        # uvloop + httptools: the fastest pair uvicorn offers; plain asyncio
        # and h11 only where they are not installed.
        "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "http": "httptools" if importlib.util.find_spec("httptools") else "h11",
        "lifespan": "on",
        "log_config": None,  # keep our handler; uvicorn's would replace it
        "log_level": settings.log_level,
        "access_log": False,  # one log line per request costs more than the inference
        "proxy_headers": False,  # client addresses are never used; skip the per-request middleware
        "server_header": False,
        # Longer than common proxy idle timeouts (60 s), so the server never
        # closes a connection a proxy is about to reuse.
        "timeout_keep_alive": 75,
        # None: finish every in-flight request once the drain starts (after
        # the shutdown delay); Kubernetes' terminationGracePeriodSeconds is the upper bound.
        "timeout_graceful_shutdown": None,
    }


def serve(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT, then shut down without refusing traffic (see shutdown.py); the exit status.

    On the first signal the server reports not ready and keeps serving for
    settings.shutdown_delay_seconds, then finishes in-flight requests and exits.
    """
    import uvicorn

    from .fetch import clear_downloads
    from . import workers
    from .shutdown import run_server, run_workers

    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    clear_downloads(settings.cache_dir)
    # Workers (and this process) read their settings from the environment.
    os.environ.update(settings.to_env())
    options = uvicorn_options(settings)
    delay = settings.shutdown_delay_seconds
    if settings.workers == 1:
        # The variable is ours to manage: one process needs no shared files.
        os.environ.pop(workers.ENV, None)
        from .app import ServingApp

        return run_server(uvicorn.Config(ServingApp(settings), **options), delay)
    # Must be set before any worker imports prometheus_client.
    workers.prepare(settings.multiprocess_dir)
    os.environ[workers.ENV] = str(settings.multiprocess_dir)
    config = uvicorn.Config("slotkeeper_serving.app:create_app", factory=True, workers=settings.workers, **options)
    return run_workers(config, delay)
