"""Candidate operator changes, applied by the launcher (BENCH_TWEAKS=name,name) without editing the
operator, so that the benchmark can measure them before the lead applies them for real.
Each docstring says what the change to the operator would be. Done and removed from here:
release_conn (cf6c15f), connections_32 (KubeApi.MAX_CONNECTIONS 8 -> 32), no_kubernetes and gc_freeze (the operator's own aiohttp client and
`slotkeeper run` hiding the official client from kopf; gc.freeze after start-up: launcher.py has
BENCH_OFFICIAL_CLIENT / BENCH_NO_GC_FREEZE to measure without them).
"""

from __future__ import annotations

import logging
from typing import Any


def quiet_logs() -> None:
    """handlers.configure(): logging.getLogger("kopf.objects").setLevel(logging.WARNING) (done in cf6c15f).

    kopf logs "Handler 'x' succeeded." at INFO for every watch event the indexes and on.event
    handlers see: 11 lines per endpoint created, none of them news.
    """
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)


def no_selectors() -> None:
    """The operator before it sent label selectors: the owned objects' watches (owned.py) without
    ``labelSelector``, so they list and watch every Deployment, Pod, Service, ... of the cluster and
    keep slotkeeper's by their labels client-side (as kopf's ``labels=`` filters did before).

    For contrast (run.py --unrelated), not a recommendation."""
    import slotkeeper.owned

    slotkeeper.owned.OwnedWatches.selector = ""


def memory_dump() -> None:
    """Not a change: where the memory goes. tracemalloc from here on (before kopf and slotkeeper are
    imported, so their imports are counted too); on SIGUSR1 the operator writes the largest
    allocation sites (by file and line, and by traceback) and the live objects by type to
    $BENCH_MEMORY_DUMP (default /tmp/slotkeeper-memory.txt)."""
    import collections
    import gc
    import os
    import signal
    import tracemalloc

    tracemalloc.start(8)

    def dump(*_: Any) -> None:
        snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        lines = [f"traced: {sum(s.size for s in snapshot.statistics('filename')) / 2**20:.1f} MiB"]
        lines += ["", "## by file"] + [str(s) for s in snapshot.statistics("filename")[:40]]
        lines += ["", "## by line"] + [str(s) for s in snapshot.statistics("lineno")[:60]]
        lines += ["", "## by traceback"]
        for stat in snapshot.statistics("traceback")[:25]:
            lines += [f"{stat.size / 1024:.0f} KiB in {stat.count} blocks"] + [f"    {frame}" for frame in stat.traceback]
        types = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        lines += ["", "## live gc-tracked objects by type"] + [f"{n:8d} {t}" for t, n in types.most_common(40)]
        with open(os.environ.get("BENCH_MEMORY_DUMP", "/tmp/slotkeeper-memory.txt"), "w") as file:
            file.write("\n".join(lines) + "\n")

    signal.signal(signal.SIGUSR1, dump)


def malloc_trim() -> None:
    """An experiment: on SIGUSR2 the operator calls glibc's malloc_trim(0), returning the free heap
    pages (freed after the create burst, kept by malloc) to the OS. run.py measures RSS before and
    after. Objects above 512 bytes (JSON bodies, large dicts and lists) come from malloc, not pymalloc."""
    import ctypes
    import signal

    libc = ctypes.CDLL("libc.so.6")
    signal.signal(signal.SIGUSR2, lambda *_: libc.malloc_trim(0))


def count_passes() -> None:
    """Not a change: how many reconcile passes the operator makes, and how many of them write
    nothing (a pass woken by the echo of its own writes, say), and how many endpoint events did not
    wake a loop. Printed every 5 s: ``BENCH passes <all> <writing nothing> endpoint events <n> not waking <n>``,
    then ``BENCH wakes {...}``: the passes by what woke them since the pass before (the resources
    whose events woke the loop, "endpoint", or "timer": none) and whether they wrote anything."""
    import asyncio

    from slotkeeper.cli import official_client_hidden

    with official_client_hidden():
        import slotkeeper.reconciler

    import collections
    import sys as _sys

    counts = {"all": 0, "idle": 0}
    causes: dict = collections.defaultdict(set)  # endpoint key -> what woke its loop since its last pass
    wakes: collections.Counter = collections.Counter()  # (causes, "writes"/"idle") -> passes
    reconcile = slotkeeper.reconciler.EndpointReconciler.reconcile

    async def counted(self: Any, body: Any, sources: Any) -> float:
        before = (self.writes_done, self.written_status)
        woken_by = "+".join(sorted(causes.pop((self.namespace, self.name), ()))) or "timer"
        try:
            return await reconcile(self, body, sources)
        finally:
            counts["all"] += 1
            idle = (self.writes_done, self.written_status) == before
            counts["idle"] += idle
            wakes[woken_by, "idle" if idle else "writes"] += 1

    slotkeeper.reconciler.EndpointReconciler.reconcile = counted

    import slotkeeper.loops

    seen = slotkeeper.loops.EndpointLoops.seen
    counts["echoes"] = counts["events"] = 0

    def counted_seen(self: Any, key: Any, body: Any, run: Any) -> bool:
        woken = seen(self, key, body, run)
        counts["events"] += 1
        counts["echoes"] += not woken
        if woken:
            causes[key].add("endpoint")
        return woken

    slotkeeper.loops.EndpointLoops.seen = counted_seen
    wake = slotkeeper.loops.EndpointLoops.wake

    def counted_wake(self: Any, namespace: Any, name: Any) -> None:
        # called from OwnedWatches._wake, which its list or watch calls with the kind at hand
        kind = _sys._getframe(2).f_locals.get("kind")
        if (namespace or "", name or "") in self._loops:
            causes[namespace or "", name or ""].add(getattr(kind, "plural", "?"))
        wake(self, namespace, name)

    slotkeeper.loops.EndpointLoops.wake = counted_wake

    async def report() -> None:
        while True:
            await asyncio.sleep(5)
            print(f"BENCH passes {counts['all']} {counts['idle']} endpoint events {counts['events']}"
                  f" not waking {counts['echoes']}", flush=True)
            print(f"BENCH wakes {dict(wakes.most_common())}", flush=True)

    import kopf

    @kopf.on.startup(id="count_passes")
    async def start_reporting(**_: Any) -> None:
        asyncio.get_running_loop().create_task(report())


def show_status_writes() -> None:
    """Not a change: every status patch of the first 3 endpoints (``BENCH status <name> <patch>``,
    cut at 1,500 characters), to see what each of a rollout's status writes is for."""
    import json as _json

    from slotkeeper.cli import official_client_hidden

    with official_client_hidden():
        import slotkeeper.cluster

    shown: list = []
    patch_status = slotkeeper.cluster.Cluster.patch_status

    async def logged(self: Any, namespace: str, name: str, patch: dict) -> None:
        if name in shown or len(shown) < 3:
            if name not in shown:
                shown.append(name)
            print(f"BENCH status {name} {_json.dumps(patch, default=str)[:1500]}", flush=True)
        await patch_status(self, namespace, name, patch)

    slotkeeper.cluster.Cluster.patch_status = logged


def no_gc() -> None:
    """Not a change: the operator without the cyclic collector at all (gc.disable() at import), to
    bound what the collector's pauses cost the create throughput. Memory grows without bound."""
    import gc

    gc.disable()  # nothing of the operator's enables it again (explicit collections still run)


def uvloop() -> None:
    """An experiment: the operator's event loop from uvloop (kopf's own CLI uses it when installed;
    launcher.py runs kopf.operator under asyncio.run, which takes the policy's loop). Needs
    `pip install uvloop` first: it is not a dependency (session 8: 4 % less operator CPU, see RESULTS.md)."""
    import asyncio

    import uvloop as _uvloop
    asyncio.set_event_loop_policy(_uvloop.EventLoopPolicy())


ALL = {f.__name__: f for f in (memory_dump, malloc_trim, quiet_logs, no_selectors, count_passes,
                               show_status_writes, no_gc, uvloop)}  # in this order


def apply(names: list[str]) -> None:
    for name, tweak in ALL.items():
        if name in names:
            tweak()
    unknown = set(names) - set(ALL)
    if unknown:
        raise SystemExit(f"unknown tweaks: {sorted(unknown)}; known: {sorted(ALL)}")
