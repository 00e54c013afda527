"""The operator process of the benchmark: the real slotkeeper handlers against the API double.

    python benchmarks/operator/launcher.py http://127.0.0.1:PORT

What `slotkeeper run` does (handlers.py's registry, kopf.operator, standalone, all namespaces),
except that the connection comes from a login handler and its kopf.ConnectionInfo is put into the
memo (handlers.configure() takes it from there). Queueing settings come from the
environment as in production (SLOTKEEPER_WORKER_LIMIT, SLOTKEEPER_IDLE_TIMEOUT). For the benchmark:
  BENCH_TWEAKS=a,b           candidate operator changes from tweaks.py, applied before any import
  BENCH_OFFICIAL_CLIENT=1    let kopf import the official client (as the operator did before 2026-12)
  BENCH_NO_GC_FREEZE=1       no gc.freeze() after start-up
  BENCH_KOPF_QUEUEING=1      kopf's own queueing defaults (no worker limit, idle_timeout 5 s)
  BENCH_RESYNC_SECONDS=20    the periodic pass of an idle endpoint (600 s) sooner, to count its requests
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
import time
from typing import Any

import tweaks

tweaks.apply([name for name in os.environ.get("BENCH_TWEAKS", "").split(",") if name])

# As `slotkeeper run` imports them: kopf without the official client (cli.official_client_hidden;
# BENCH_OFFICIAL_CLIENT=1 lets kopf import it, as before). slotkeeper.handlers registers the
# operator's handlers in kopf's default registry.
from slotkeeper.cli import official_client_hidden

with official_client_hidden() if not os.environ.get("BENCH_OFFICIAL_CLIENT") else contextlib.nullcontext():
    import kopf
    import slotkeeper.handlers
import slotkeeper.reconciler

if os.environ.get("BENCH_RESYNC_SECONDS"):
    slotkeeper.reconciler.IDLE_RESYNC_SECONDS = float(os.environ["BENCH_RESYNC_SECONDS"])


@kopf.on.startup()  # registered after handlers.configure(), so it runs after it
def report_settings(settings: kopf.OperatorSettings, **_: Any) -> None:
    if os.environ.get("BENCH_KOPF_QUEUEING"):
        settings.queueing.worker_limit, settings.queueing.idle_timeout = None, 5.0
    queueing = settings.queueing
    print(f"BENCH queueing worker_limit={queueing.worker_limit} idle_timeout={queueing.idle_timeout:g}", flush=True)
    selectors = {f"{key}": value for key, value in settings.watching.label_selectors.items()}
    print(f"BENCH label_selectors {selectors or 'none'}", flush=True)


def report_gc_pauses() -> None:
    """Print every full (generation 2) collection's duration: a pause of the whole event loop."""
    started = [0.0]

    def callback(phase: str, info: dict) -> None:
        if info["generation"] == 2:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                print(f"BENCH gc2 {time.perf_counter() - started[0]:.4f}", flush=True)

    gc.callbacks.append(callback)


def main(url: str) -> None:
    report_gc_pauses()
    kopf.configure(verbose=False, log_format=kopf.LogFormat.PLAIN)

    @kopf.on.login()
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, default_namespace="default", priority=100)

    settings = kopf.OperatorSettings()
    # KMock answers 500 to GET /api/v1/namespaces; all namespaces are served anyway (clusterwide).
    settings.scanning.disabled = True
    # gc_freeze as `slotkeeper run` sets it (BENCH_NO_GC_FREEZE=1: without)
    memo = kopf.Memo(kube_config=kopf.ConnectionInfo(server=url), gc_freeze=not os.environ.get("BENCH_NO_GC_FREEZE"))
    asyncio.run(kopf.operator(standalone=True, clusterwide=True, settings=settings, memo=memo))


if __name__ == "__main__":
    main(sys.argv[1])
