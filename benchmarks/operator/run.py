#!/usr/bin/env python3
"""Benchmark the slotkeeper operator at scale against an in-process Kubernetes API double.

    /work/main/.venv/bin/python benchmarks/operator/run.py [--endpoints 100 1000] [--sweep]

This process is the driver and the API double (apidouble.py: the integration harness's KMock-based
emulator with O(1) object lookups, plus the Deployment controller), pinned to CPU 1, its cyclic GC
off while a measurement runs; the operator runs alone in its own process (launcher.py) on CPU 0, so
its RSS is its own. Full-GC pauses of both processes are recorded.

For each N and each configuration (the operator as is, and without one of its changes), with a
fresh API double and operator:
  create   N ModelEndpoints at once; endpoints/s until every endpoint Service selects `blue` and
           every endpoint is Healthy (the double marks each slot Deployment ready at once)
  rss      the operator's VmRSS before any endpoint and after settling (no request for 5 s); VmHWM
  idle     the operator's requests, by verb, over --idle seconds with nothing changing; the idle
           periodic pass (600 s) runs every --resync seconds here so that the window sees it
  revert   --rollbacks endpoints get a new revision with a `web` check (served here; intervalSeconds
           1, failureLimit 1, max 0.5) that starts answering 1.0 at a random moment within one
           interval after traffic moved to the candidate: from the failing reply to the endpoint
           Service PATCH back to `blue` (and from the fault to it)
  default  the same on --default-rollbacks other endpoints with the default intervals
           (intervalSeconds 10, failureLimit 1): from the fault to the PATCH back to `blue`
--sweep also measures create + RSS at the largest N for one change at a time (SWEEP); --tweaks adds
tweaks.py changes to every configuration (experiments).
Writes results.json and RESULTS.md next to this file (a sweep not re-run is kept from before).

    run.py --unrelated 10000 --endpoints 1000 --repeat 2 [--configs as-is no-selectors] [--append]

The unrelated-objects case instead: each configuration (default: as is, and no-selectors, the
operator before its watches sent label selectors) --repeat times with an empty cluster and with
COUNT objects it does not own (unrelated.py: half Pods with realistic bodies and statuses, half
Services, in four namespaces, created through the API before the operator starts), alternating
which comes first. Measured: startup (until the operator's CPU is quiet: the initial listings),
RSS, create and settle as above with the operator's CPU until settled, and the idle window with
--update-rate writes per second to random unrelated objects; the watch events the double sent
to the operator. Writes results-unrelated.json and its section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import datetime
import gc
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp.web
import apidouble  # first: it puts tests/integration (kmock_cluster) on sys.path
import unrelated as unrelated_objects
from kmock_cluster import DEPLOYMENTS, MODELENDPOINTS, PODS, SERVICES, Kube

HERE = Path(__file__).resolve().parent
OPERATOR_CPU, DOUBLE_CPU = 0, 1
NAMESPACE = "bench"
WRITES = ("POST", "PATCH", "PUT", "DELETE")
SPEC = {"model": {"name": "m", "uri": "file:///models/m/1/model.joblib"}}
NEW_MODEL = {"name": "m", "uri": "file:///models/m/2/model.joblib"}
FINDINGS = "## Findings"  # RESULTS.md from this heading on is written by hand and kept
UNRELATED_RESULTS = "results-unrelated.json"  # run.py --unrelated
GOALS = {"rss_mib": {1000: 150, 10000: 1024},  # settled RSS at N (issue 13)
         "endpoints_per_s": 100, "endpoints_per_s_at": 1000,  # create-to-Healthy throughput at N = 1,000
         "idle_writes": 0, "idle_reads_per_endpoint_per_min": 0.1,  # <= 1 read per endpoint per 10 min
         "revert_p95_ms": 1000}


@dataclass(frozen=True)
class Config:
    name: str
    env: tuple[tuple[str, str], ...] = ()  # for the operator process
    tweaks: tuple[str, ...] = ()  # tweaks.py: candidate operator changes


def queueing(worker_limit: int, idle_timeout: float) -> tuple[tuple[str, str], ...]:
    return ("SLOTKEEPER_WORKER_LIMIT", str(worker_limit)), ("SLOTKEEPER_IDLE_TIMEOUT", str(idle_timeout))


AS_IS = Config("as is")
# The changes of 2026-12-01 one at a time: without them (the transport change itself cannot be undone here:
# the figures of the operator before it are in RESULTS.md, at 6371d54).
OFFICIAL_CLIENT = Config("kopf imports the official client", (("BENCH_OFFICIAL_CLIENT", "1"),))
NO_GC_FREEZE = Config("no gc.freeze", (("BENCH_NO_GC_FREEZE", "1"),))
# The operator before its watches of Deployments, Pods and Services sent a label selector. With the
# operator's 20 workers per watched kind it never gets past its initial listings when one of the
# indexed kinds lists more than 20 objects (kopf: each worker waits until every listed object is
# indexed, the 21st never gets a worker): so also with the worker limit lifted, to measure it at all.
NO_SELECTORS_20 = Config("no server-side selectors", tweaks=("no_selectors",))
NO_SELECTORS = Config("no server-side selectors, 100000 workers", (("SLOTKEEPER_WORKER_LIMIT", "100000"),),
                      tweaks=("no_selectors",))
CONFIGS = {"as-is": AS_IS, "official-client": OFFICIAL_CLIENT, "no-gc-freeze": NO_GC_FREEZE, "no-selectors": NO_SELECTORS, "no-selectors-20": NO_SELECTORS_20}
SWEEP = [  # one change at a time from the operator as is
    Config("kopf's queueing defaults", (("BENCH_KOPF_QUEUEING", "1"),)),
    Config("queueing 100/2 (before cf6c15f)", queueing(100, 2)),
    Config("queueing 20/2", queueing(20, 2)),
    Config("queueing 100/0.5", queueing(100, 0.5)),
    Config("queueing 100/0.1", queueing(100, 0.1)),
    Config("queueing 50/0.1", queueing(50, 0.1)),
    Config("queueing 10/0.1", queueing(10, 0.1)),
    OFFICIAL_CLIENT,
    NO_GC_FREEZE,
]


def name(i: int) -> str:
    return f"e{i:04d}"


def mib(kib: int) -> float:
    return round(kib / 1024, 1)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def spread(seconds: list[float]) -> dict:
    ms = [v * 1000 for v in seconds]
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "p50_ms": round(percentile(ms, 0.5), 1), "p95_ms": round(percentile(ms, 0.95), 1),
            "max_ms": round(max(ms), 1), "mean_ms": round(statistics.mean(ms), 1)}


def cpu_seconds(pid: int | str = "self") -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_cpu_seconds() -> float:
    """CPU seconds all processes on the machine used so far (to tell what others took meanwhile)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle, iowait


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: never an orphaned operator


class Operator:
    """The operator in its own process, pinned to its own CPU."""

    def __init__(self, url: str, config: Config, resync: float | None, log: Path) -> None:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("SLOTKEEPER_", "BENCH_"))}
        env.update(config.env, BENCH_TWEAKS=",".join(config.tweaks))
        if resync:
            env["BENCH_RESYNC_SECONDS"] = str(resync)
        self.log_path = log
        self.log = log.open("w")
        self.process = subprocess.Popen(
            ["taskset", "-c", str(OPERATOR_CPU), sys.executable, str(HERE / "launcher.py"), url],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent)  # noqa: PLW1509  (no threads in this process)

    def memory(self) -> dict[str, int]:
        lines = Path(f"/proc/{self.process.pid}/status").read_text().splitlines()
        return {key: int(value.split()[0]) for key, value in (line.split(":", 1) for line in lines)
                if key in ("VmRSS", "VmHWM", "RssAnon")}

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def gc_pauses(self) -> list[float]:
        """Durations of the operator's full garbage collections so far (seconds)."""
        return [float(v) for v in re.findall(r"BENCH gc2 ([0-9.]+)", self.log_path.read_text())]

    def queueing(self) -> str:
        found = re.search(r"BENCH queueing (.*)", self.log_path.read_text())
        return found.group(1) if found else "?"

    def check(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"the operator exited ({self.process.returncode}); see {self.log_path}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class CheckServer:
    """The `web` checks' source: {"value": 0.0} per endpoint until its fault, then 1.0 (max is 0.5)."""

    def __init__(self) -> None:
        self.fault_at: dict[str, float] = {}
        self.first_bad: dict[str, float] = {}  # when the first failing value was answered
        self.runner: aiohttp.web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = aiohttp.web.Application()
        app.router.add_get("/check/{endpoint}", self.serve)
        self.runner = aiohttp.web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = aiohttp.web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def serve(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        endpoint = request.match_info["endpoint"]
        bad = endpoint in self.fault_at
        if bad:
            self.first_bad.setdefault(endpoint, time.monotonic())
        return aiohttp.web.json_response({"value": 1.0 if bad else 0.0})

    async def stop(self) -> None:
        await self.runner.cleanup()


async def wait_for(predicate, timeout: float, what: str, operator: Operator, interval: float = 0.05) -> float:
    started = time.monotonic()
    while not predicate():
        operator.check()
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not within {timeout:g}s")
        await asyncio.sleep(interval)
    return time.monotonic()


async def quiet_machine(operator: Operator, limit: float = 0.1, longest: float = 60) -> float:
    """Wait (up to `longest` s) until other processes use < `limit` CPU for 2 s in a row; the wait."""
    started, calm = time.monotonic(), 0
    while calm < 2 and time.monotonic() - started < longest:
        before = busy_cpu_seconds() - operator.cpu() - cpu_seconds()
        await asyncio.sleep(1)
        calm = calm + 1 if busy_cpu_seconds() - operator.cpu() - cpu_seconds() - before < limit else 0
    return round(time.monotonic() - started, 1)


async def quiet_operator(operator: Operator, limit: float = 0.02, longest: float = 600) -> float:
    """Wait (up to `longest` s) until the operator uses < `limit` CPU s per second for 2 s in a row; the wait."""
    started, calm = time.monotonic(), 0
    while calm < 2 and time.monotonic() - started < longest:
        before = operator.cpu()
        await asyncio.sleep(1)
        operator.check()
        calm = calm + 1 if operator.cpu() - before < limit else 0
    return round(time.monotonic() - started, 1)


def host_loop_ms(iterations: int = 1_000_000, repeat: int = 5) -> float:
    """The fastest of `repeat` runs of a fixed pure-Python loop on this process's CPU, in ms: how fast
    this host runs Python at the time. Hosts here differ by up to 3x from one day to the next; the
    endpoints/s of runs on different hosts compare only through it (and through CPU per endpoint)."""
    best = float("inf")
    for _ in range(repeat):
        started, total = time.perf_counter(), 0
        for i in range(iterations):
            total += i
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


def loadavg() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


async def settle(double: apidouble.BenchEmulator, operator: Operator, quiet: float = 5.0,
                 longest: float = 120) -> float | None:
    """Until the operator has sent no request for `quiet` s: how long it went on; None: still after `longest` s."""
    started = time.monotonic()
    try:
        await wait_for(lambda: time.monotonic() - max(double.last_request, started) >= quiet, longest,
                       "settling", operator, interval=0.2)
    except TimeoutError:
        return None
    return round(max(0.0, double.last_request - started), 1)


async def rollbacks(double: apidouble.BenchEmulator, kube: Kube, checks: CheckServer, operator: Operator,
                    names: list[str], interval: int | None, stagger: float) -> dict:
    """New revisions whose `web` check starts failing while they take traffic; wait for every revert."""
    loop = asyncio.get_running_loop()
    period = interval or 10  # the default intervalSeconds
    switched: dict[str, float] = {}
    reverted: dict[str, float] = {}
    armed = set(names)

    def fault(endpoint: str) -> None:
        checks.fault_at.setdefault(endpoint, time.monotonic())

    def on_selector(endpoint: str, slot: str, at: float) -> None:
        if endpoint not in armed:
            return
        if slot == "green" and endpoint not in switched:
            switched[endpoint] = at
            loop.call_later(random.uniform(0, period), fault, endpoint)
        elif slot == "blue" and endpoint in checks.fault_at and endpoint not in reverted:
            reverted[endpoint] = at

    check = {"name": "quality", "source": "web", "jsonPath": "value", "max": 0.5}
    if interval is not None:
        check.update(intervalSeconds=interval, failureLimit=1)
    double.on_selector = on_selector
    try:
        for endpoint in names:
            metric = {**check, "url": f"{checks.url}/check/{endpoint}"}
            await kube.patch_endpoint(endpoint, {"model": NEW_MODEL, "checks": {"analysisSeconds": 600,
                                                                                "metrics": [metric]}},
                                      namespace=NAMESPACE)
            await asyncio.sleep(stagger)
        await wait_for(lambda: len(reverted) == len(names), 60 + 3 * period, "reverts", operator, interval=0.1)
    finally:
        double.on_selector = None
    return {
        "count": len(names), "interval_seconds": period, "failure_limit": 1, "started_every_s": stagger,
        "verdict_to_selector": spread([reverted[e] - checks.first_bad[e] for e in names]),
        "fault_to_selector": spread([reverted[e] - checks.fault_at[e] for e in names]),
        "not_in_phase_rolledback": [e for e in names if double.phases.get(e) != "RolledBack"],
    }


class GcPauses:
    """Durations of this process's (the API double's) full garbage collections.

    The API double keeps every object version and event: its full collections grew to 0.8 s and
    would show as the operator's latency. Its cyclic collector is off while a measurement runs.
    """

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._started = 0.0
        gc.collect()
        gc.disable()
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if info["generation"] == 2:
            if phase == "start":
                self._started = time.perf_counter()
            else:
                self.pauses.append(time.perf_counter() - self._started)

    def close(self) -> None:
        gc.callbacks.remove(self._callback)
        gc.enable()
        gc.collect()


def pause_summary(pauses: list[float]) -> dict:
    return {"count": len(pauses), "max_ms": round(max(pauses, default=0) * 1000, 1),
            "total_ms": round(sum(pauses) * 1000, 1)}


def requests_table(double: apidouble.BenchEmulator) -> dict:
    return {"by_verb": dict(double.counts), "connections_opened": double.connections,
            "events_by_reason": dict(double.event_reasons),
            "by_resource": {f"{v} {r}": n for (v, r), n in sorted(double.by_resource.items())}}


async def measure(n: int, config: Config, args: argparse.Namespace, full: bool, result: dict,
                  unrelated: int | None = None) -> None:
    """Fills `result` as it goes (what was measured before a failure stays).

    `unrelated` (the --unrelated case): that many objects the operator does not own are created
    before it starts and updated during the idle window (unrelated.py); then create, settle and
    idle are measured, with the operator's CPU per phase, and no reverts.
    """
    case = unrelated is not None
    double, server, stack = await apidouble.start((NAMESPACE, *(unrelated_objects.NAMESPACES if case else ())))
    controller = asyncio.create_task(double.deployment_controller())
    checks = CheckServer()
    await checks.start()
    kube = Kube(double, namespace=NAMESPACE)
    result.update(endpoints=n, config=config.name, tweaks=list(config.tweaks), env=dict(config.env),
                  load_average_before=loadavg())
    if case:
        result.update(unrelated=unrelated, load_average_before=loadavg())
        objects = await unrelated_objects.create(kube, unrelated)
        result["unrelated_objects"] = {"pods": len(objects.pods), "services": len(objects.services),
                                       "namespaces": len(unrelated_objects.NAMESPACES) if unrelated else 0,
                                       "created_in_s": objects.seconds,
                                       "stored_bytes_per_pod": objects.stored_pod_bytes,
                                       "stored_bytes_per_service": objects.stored_service_bytes}
    log = HERE / ".logs" / (f"operator-{n}-{re.sub(r'[^a-z0-9]+', '_', config.name.lower())}"
                            + (f"-unrelated{unrelated}" if case else "") + ".log")
    log.parent.mkdir(exist_ok=True)
    launched = time.monotonic()
    operator = Operator(str(server.url).rstrip("/"), config, args.resync if full else None, log)
    double_gc = GcPauses()
    try:
        watched = (MODELENDPOINTS, DEPLOYMENTS, SERVICES, PODS)
        # (the operator as it was before the label selectors needs minutes to list and index 10,000 objects)
        await wait_for(lambda: all(double.watch_count(r) for r in watched), 900 if case or "memory_dump" in config.tweaks else 30,
                       "operator ready",
                       operator)
        watching = time.monotonic() - launched
        await settle(double, operator, quiet=1.0)
        if case:  # the initial listings are processed without a request: until the operator's CPU is quiet
            result["startup"] = {"watching_after_s": round(watching, 1), "quiet_after_s": await quiet_operator(operator)}
            result["startup"].update(seconds=round(time.monotonic() - launched, 1), operator_cpu_s=round(operator.cpu(), 2),
                                     watch_events=dict(double.watch_events), listed=dict(double.listed),
                                     label_selectors={f"{v} {r}": sorted(map(str, s))
                                                      for (v, r), s in sorted(double.label_selectors.items())})
        result["queueing"] = operator.queueing()
        result["rss_mib"] = {"empty": mib(operator.memory()["VmRSS"])}

        names = [name(i) for i in range(n)]
        # --progress-deadline: at N = 10,000 on a shared machine the last endpoints took longer than
        # the default 300 s from their rollout's start to ready, and a first revision that misses it
        # stays Degraded (nothing to revert to): the run would never see every endpoint Healthy.
        spec = SPEC if args.progress_deadline is None else {
            **SPEC, "checks": {"progressDeadlineSeconds": args.progress_deadline}}
        result["progress_deadline_s"] = args.progress_deadline or 300
        posted: dict[str, float] = {}
        gate = asyncio.Semaphore(16)

        async def create(endpoint: str) -> None:
            async with gate:
                posted[endpoint] = time.monotonic()
                await kube.create_endpoint(endpoint, spec, namespace=NAMESPACE)

        waited = await quiet_machine(operator)
        result["host_loop_ms"] = host_loop_ms()
        double.reset_counts()
        before = (operator.cpu(), cpu_seconds(), busy_cpu_seconds())
        started = time.monotonic()
        await asyncio.gather(*(create(endpoint) for endpoint in names))
        done = await wait_for(lambda: sum(1 for s in double.selectors.values() if s == "blue") >= n
                              and len(double.healthy) >= n, args.create_timeout, "every endpoint promoted",
                              operator, interval=0.1)
        seconds = done - started
        operator_cpu, double_cpu = operator.cpu() - before[0], cpu_seconds() - before[1]
        result["create"] = {
            "seconds": round(seconds, 2), "endpoints_per_s": round(n / seconds, 1),
            "latency_s": {q: round(percentile([double.blue_at[e] - posted[e] for e in names], p), 2)
                          for q, p in (("p50", 0.5), ("p95", 0.95), ("max", 1.0))},
            "operator_cpu_s": round(operator_cpu, 1), "double_cpu_s": round(double_cpu, 1),
            # CPU other processes on the machine used meanwhile (2 CPUs in all): noise
            "others_cpu_s": round(max(0.0, busy_cpu_seconds() - before[2] - operator_cpu - double_cpu), 1),
            "waited_for_quiet_machine_s": waited,
        }
        # after all were promoted (None: still going after 2 minutes, 30 s in the sweep)
        result["create"]["requests_went_on_s"] = await settle(double, operator, longest=120 if full else 30)
        if case:  # from the first POST until no request for 5 s
            result["create"]["operator_cpu_to_settled_s"] = round(operator.cpu() - before[0], 2)
            result["create"]["operator_cpu_s_exact"] = round(operator_cpu, 2)
        result["create"]["requests"] = requests_table(double)
        if case:
            result["create"]["watch_events"] = dict(double.watch_events)
        result["create"]["requests_per_endpoint"] = round(sum(double.counts.values()) / n, 1)
        memory = operator.memory()
        result["rss_mib"].update(settled=mib(memory["VmRSS"]), peak=mib(memory["VmHWM"]), anon=mib(memory["RssAnon"]))
        result["rss_mib"]["per_endpoint_kib"] = round(
            (result["rss_mib"]["settled"] - result["rss_mib"]["empty"]) * 1024 / n, 1)
        if "malloc_trim" in config.tweaks:  # tweaks.py: what the free heap pages are
            operator.process.send_signal(signal.SIGUSR2)
            await asyncio.sleep(2)
            result["rss_mib"]["settled_after_malloc_trim"] = mib(operator.memory()["VmRSS"])
            print(f"  after malloc_trim(0): RSS {result['rss_mib']['settled_after_malloc_trim']} MiB", flush=True)
        if "memory_dump" in config.tweaks:  # tweaks.py: where the memory goes, settled
            operator.process.send_signal(signal.SIGUSR1)
            await asyncio.sleep(20)
        print(f"  N={n} {config.name}: {result['create']['endpoints_per_s']} endpoints/s, "
              f"RSS {result['rss_mib']['settled']} MiB", flush=True)
        if not full:
            return

        double.reset_counts()
        if case:
            trickle = unrelated_objects.Trickle(kube, objects, args.update_rate)
            idle_before = (operator.cpu(), cpu_seconds(), busy_cpu_seconds())
            trickle.start()
        await asyncio.sleep(args.idle)
        writes = sum(count for verb, count in double.counts.items() if verb in WRITES)
        reads = sum(double.counts.values()) - writes
        result["idle"] = {"window_s": args.idle, "periodic_pass_every_s": args.resync,
                          "requests": requests_table(double), "writes": writes, "reads": reads,
                          "reads_per_endpoint_per_min": round(reads / n * 60 / args.idle, 4),
                          "writes_per_endpoint_per_min": round(writes / n * 60 / args.idle, 4)}
        if case:
            updates = await trickle.stop()
            operator_cpu, double_cpu = operator.cpu() - idle_before[0], cpu_seconds() - idle_before[1]
            result["idle"].update(
                unrelated_updates=updates, watch_events=dict(double.watch_events),
                operator_cpu_s=round(operator_cpu, 2), double_cpu_s=round(double_cpu, 1),
                others_cpu_s=round(max(0.0, busy_cpu_seconds() - idle_before[2] - operator_cpu - double_cpu), 1))
        result["rss_mib"]["after_idle"] = mib(operator.memory()["VmRSS"])
        print(f"  idle {args.idle:g} s: {dict(double.counts) or 'no request'}"
              + (f"; operator CPU {result['idle']['operator_cpu_s']} s, watch events {dict(double.watch_events)}"
                 if case else ""), flush=True)
        if case:
            result["load_average_after"] = loadavg()
            return

        k = min(args.rollbacks, n // 2)
        result["revert"] = await rollbacks(double, kube, checks, operator, names[:k], 1, args.stagger)
        print(f"  revert, interval 1 s: verdict -> selector {result['revert']['verdict_to_selector']}", flush=True)
        j = min(args.default_rollbacks, n - k)
        result["revert_default"] = await rollbacks(double, kube, checks, operator, names[k:k + j], None, 0.1)
        print(f"  revert, default intervals: fault -> selector {result['revert_default']['fault_to_selector']}",
              flush=True)
        result["rss_mib"]["end"] = mib(operator.memory()["VmRSS"])
        result["load_average_after"] = loadavg()
    finally:
        result["full_gc_pauses"] = {"operator": pause_summary(operator.gc_pauses()),
                                    "api_double": pause_summary(double_gc.pauses)}
        double_gc.close()
        operator.stop()
        controller.cancel()
        await checks.stop()
        crashes = [e for e in double.errors if not isinstance(e, apidouble.kmock.KubernetesError)]
        await stack.aclose()
        if crashes:
            raise RuntimeError(f"the API double failed while serving: {crashes[:3]!r}")


# ------------------------------------------------------------------------------------- reporting


def label(run: dict) -> str:
    details = [run.get("queueing", "?").replace("worker_limit=", "limit ").replace("idle_timeout=", "idle "), *run["tweaks"]]
    return f"{run['config']} ({', '.join(details)})"


def summary_rows(runs: list[dict]) -> list[str]:
    rows = [("| N | operator | endpoints/s | create p50/p95 s | operator CPU s | requests/endpoint (TCP connections) "
             "| RSS empty MiB | RSS settled MiB | KiB/endpoint | idle requests (writes) | verdict->revert p50/p95 ms "
             "| fault->revert, 10 s interval, p50/p95/max s | operator's longest full-GC pause ms "
             "| others' CPU s during create | load before → after | host loop ms |"),
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for run in runs:
        if "create" not in run:
            rows.append(f"| {run['endpoints']} | {label(run)} | failed: {run.get('error', '?')} |" + " |" * 13)
            continue
        create, rss, idle = run["create"], run["rss_mib"], run.get("idle")
        rev = run.get("revert", {}).get("verdict_to_selector", {})
        dflt = run.get("revert_default", {}).get("fault_to_selector", {})
        rows.append(" | ".join([
            f"| {run['endpoints']}", label(run), f"{create['endpoints_per_s']}",
            f"{create['latency_s']['p50']} / {create['latency_s']['p95']}", f"{create['operator_cpu_s']}",
            f"{create['requests_per_endpoint']} ({create['requests']['connections_opened']})", f"{rss['empty']}", f"{rss.get('settled', '-')}", f"{rss.get('per_endpoint_kib', '-')}",
            f"{idle['reads'] + idle['writes']} in {idle['window_s']:g} s ({idle['writes']})" if idle else "-",
            f"{rev['p50_ms']:.0f} / {rev['p95_ms']:.0f}" if rev.get("n") else "-",
            f"{dflt['p50_ms'] / 1000:.1f} / {dflt['p95_ms'] / 1000:.1f} / {dflt['max_ms'] / 1000:.1f}"
            if dflt.get("n") else "-",
            f"{run.get('full_gc_pauses', {}).get('operator', {}).get('max_ms', '-')}",
            f"{create.get('others_cpu_s', '-')}",
            f"{' '.join(map(str, run.get('load_average_before', [])))} → "
            f"{' '.join(map(str, run.get('load_average_after', []))) or '-'}",
            f"{run.get('host_loop_ms', '-')}",
        ]) + " |")
    return rows


def goal_lines(runs: list[dict]) -> list[str]:
    lines = []

    def goal(run: dict, text: str, met: bool, detail: str) -> None:
        lines.append(f"- N={run['endpoints']}, {label(run)}: {text}: {'MET' if met else 'MISSED'} ({detail})")

    for run in runs:
        if "error" in run:
            lines.append(f"- N={run['endpoints']}, {label(run)}: FAILED: {run['error']}")
        if "rss_mib" not in run or "settled" not in run["rss_mib"]:
            continue
        rate, want = run["create"]["endpoints_per_s"], GOALS["endpoints_per_s"]
        if run["endpoints"] == GOALS["endpoints_per_s_at"]:
            goal(run, f">= {want} endpoints/s", rate >= want,
                 f"{rate}/s" + ("" if rate >= want else f", {want / rate - 1:.0%} short"))
        most = GOALS["rss_mib"].get(run["endpoints"])
        if most is not None:
            rss = run["rss_mib"]["settled"]
            goal(run, f"RSS <= {most} MiB", rss <= most,
                 f"{rss} MiB" + (f", {most - rss:.1f} MiB to spare" if rss <= most else f", {rss - most:.1f} MiB over"))
        if "revert" in run:
            idle = run["idle"]
            goal(run, "0 idle writes, <= 1 read per endpoint per 10 min",
                 idle["writes"] == 0 and idle["reads_per_endpoint_per_min"] <= GOALS["idle_reads_per_endpoint_per_min"],
                 f"{idle['writes']} writes, {idle['reads']} reads in {idle['window_s']:g} s")
            rev = run["revert"]["verdict_to_selector"]
            goal(run, "revert p95 <= 1 s after the failing verdict", rev["p95_ms"] <= GOALS["revert_p95_ms"],
                 f"p95 {rev['p95_ms']} ms over {rev['n']} reverts")
    return lines


def write_report(results: dict) -> None:
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Operator benchmark", "",
        f"`benchmarks/operator/run.py`, {results['when']}, operator at {results['commit']}; {results['machine']}.",
        "",
        ("The real operator (kopf, `slotkeeper.handlers`) alone in its own process on CPU 0; the API double "
         "(the integration harness's KMock-based ClusterEmulator with O(1) object lookups, playing the "
         "Deployment controller) and the driver on CPU 1. RSS: the operator's VmRSS. Requests are counted at "
         "the API double. \"as is\": the operator's own settings; \"+ name\": an experiment of tweaks.py on top; "
         "\"kopf imports the official client\", \"no gc.freeze\": the operator without one of its changes "
         "(launcher.py). CPU used by other processes meanwhile: "
         f"{', '.join(str(r['create']['others_cpu_s']) for r in results['runs'] if 'create' in r)} s."),
        "", *summary_rows(results["runs"]), "", "## Goals", "", *goal_lines(results["runs"]), "",
    ]
    sweep = results.get("sweep")
    if sweep and sweep["runs"]:
        lines += [f"## One change at a time (N={sweep['runs'][0]['endpoints']}, create + RSS only, {sweep['when']})",
                  "", *summary_rows(sweep["runs"]), ""]
    unrelated = HERE / UNRELATED_RESULTS
    if unrelated.exists():
        lines += unrelated_section(json.loads(unrelated.read_text()))
    report = HERE / "RESULTS.md"
    kept = report.read_text().split(FINDINGS, 1) if report.exists() else []
    if len(kept) == 2:  # the hand-written analysis below the generated part stays
        lines += [FINDINGS + kept[1]]
    report.write_text("\n".join(lines))


def _mean(values: list[float]) -> float:
    return statistics.mean(values) if values else float("nan")


def _span(values: list[float], digits: int = 1) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{_mean(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


UNRELATED_FIGURES = {  # label -> (value of a run, digits)
    "RSS settled MiB": (lambda r: r["rss_mib"]["settled"], 1),
    "RSS after idle MiB": (lambda r: r["rss_mib"]["after_idle"], 1),
    "CPU create+settle s": (lambda r: r["create"]["operator_cpu_to_settled_s"], 2),
    "CPU idle s": (lambda r: r["idle"]["operator_cpu_s"], 2),
}


def unrelated_goal(runs: list[dict], config: str, n: int) -> list[tuple[str, float, float, float]]:
    """(figure, empty mean, unrelated mean, ratio - 1) for one configuration and N."""
    done = [r for r in runs if r["config"] == config and r["endpoints"] == n and "after_idle" in r.get("rss_mib", {})]
    out = []
    for figure, (value, _) in UNRELATED_FIGURES.items():
        empty = [value(r) for r in done if not r["unrelated"]]
        loaded = [value(r) for r in done if r["unrelated"]]
        if empty and loaded:
            out.append((figure, _mean(empty), _mean(loaded), _mean(loaded) / _mean(empty) - 1))
    return out


def unrelated_section(results: dict) -> list[str]:
    runs = results["runs"]
    unrelated = max((r.get("unrelated") or 0 for r in runs), default=0)
    lines = [f"## Unrelated objects in the cluster ({results['when']}, operator at {results['commit']})", "",
             (f"`{results['command']}`: each configuration with an empty cluster and with {unrelated:,} objects "
              f"slotkeeper does not own (unrelated.py: {results['describe']}), alternately, fresh API double and "
              f"operator each time. Then N endpoints are created, settle (no request for 5 s) and idle for "
              f"{results['idle_s']:g} s, during which {results['update_rate_per_s']:g} writes/s go to random "
              f"unrelated objects. Operator CPU: from the first POST until settled, and over the idle window. "
              f"\"no server-side selectors\": tweaks.py `no_selectors` (the operator before its watches sent "
              f"`labelSelector`). Load: /proc/loadavg before/after the run; others: CPU seconds other processes "
              f"used during create / idle ({os.cpu_count()} CPUs). {results['machine']}."), "",
             "| N | operator | unrelated | runs | RSS before endpoints MiB | RSS settled MiB | RSS after idle MiB "
             "| CPU create+settle s | CPU idle s | endpoints/s | startup (until quiet) s | startup CPU s |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        if "after_idle" in run.get("rss_mib", {}):
            groups.setdefault((run["endpoints"], run["config"], run["unrelated"]), []).append(run)
    for (n, config, count), group in groups.items():
        lines.append(" | ".join([
            f"| {n}", config, f"{count:,}", str(len(group)),
            _span([r["rss_mib"]["empty"] for r in group]), _span([r["rss_mib"]["settled"] for r in group]),
            _span([r["rss_mib"]["after_idle"] for r in group]),
            _span([r["create"]["operator_cpu_to_settled_s"] for r in group], 2),
            _span([r["idle"]["operator_cpu_s"] for r in group], 2),
            _span([r["create"]["endpoints_per_s"] for r in group]),
            _span([r["startup"]["seconds"] for r in group]), _span([r["startup"]["operator_cpu_s"] for r in group], 2),
        ]) + " |")
    lines += ["", "Means (min–max). Goal: RSS and CPU with the unrelated objects within 10 % of the empty cluster "
                  "(means; in brackets the runs on a quiet machine only: other processes used < 1 CPU second "
                  "during create and during idle):", ""]
    quiet = [r for r in runs if "idle" in r and r["create"]["others_cpu_s"] < 1 and r["idle"]["others_cpu_s"] < 1]
    for n, config in dict.fromkeys((n, c) for n, c, _ in groups):
        calm = {figure: (empty, loaded, change) for figure, empty, loaded, change in unrelated_goal(quiet, config, n)}
        for figure, empty, loaded, change in unrelated_goal(runs, config, n):
            also = (f" [quiet: {calm[figure][0]:.2f} → {calm[figure][1]:.2f} ({calm[figure][2]:+.1%})]"
                    if figure in calm else " [quiet: no pair]")
            lines.append(f"- N={n}, {config}: {figure}: {empty:.2f} → {loaded:.2f} ({change:+.1%}): "
                         f"{'MET' if abs(change) <= 0.10 else 'MISSED'}{also}")
    lines += ["", "Each run, in order:", "",
              "| # | N | operator | unrelated | RSS before endpoints / settled / after idle MiB "
              "| CPU until promoted / until settled / idle s "
              "| endpoints/s | objects listed + watch events to the operator at startup; watch events in idle | unrelated writes in idle "
              "| others CPU create / idle s | load before → after | quiet-machine wait s |",
              "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for i, run in enumerate(runs, 1):
        if "after_idle" not in run.get("rss_mib", {}):
            startup = run.get("startup", {})
            lines.append(" | ".join([
                f"| {i}", str(run["endpoints"]), f"{run['config']} ({run.get('queueing', '?')})",
                f"{run.get('unrelated') or 0:,}", f"{run.get('rss_mib', {}).get('empty', '-')} / - / -",
                f"failed: {run.get('error', '?')}", "-",
                f"{sum(startup.get('listed', {}).values()):,} + {sum(startup.get('watch_events', {}).values()):,}; -",
                "-", "-", f"{' '.join(map(str, run.get('load_average_before', [])))} → -", "-"]) + " |")
            continue
        rss, create, idle = run["rss_mib"], run["create"], run["idle"]
        lines.append(" | ".join([
            f"| {i}", str(run["endpoints"]), run["config"], f"{run['unrelated']:,}",
            f"{rss['empty']} / {rss['settled']} / {rss['after_idle']}",
            f"{create['operator_cpu_s_exact']} / {create['operator_cpu_to_settled_s']} / {idle['operator_cpu_s']}",
            str(create["endpoints_per_s"]),
            f"{sum(run['startup'].get('listed', {}).values()):,} + {sum(run['startup']['watch_events'].values()):,}; "
            f"{sum(idle['watch_events'].values()):,}",
            str(sum(idle["unrelated_updates"].values())) if run["unrelated"] else "-",
            f"{create['others_cpu_s']} / {idle['others_cpu_s']}",
            f"{' '.join(map(str, run['load_average_before']))} → {' '.join(map(str, run['load_average_after']))}",
            str(create["waited_for_quiet_machine_s"]),
        ]) + " |")
    selectors = {key: value for run in runs for key, value in run.get("startup", {}).get("label_selectors", {}).items()
                 if run["config"] == AS_IS.name}
    if selectors:
        lines += ["", "labelSelector of the operator's lists and watches (as is): "
                  + "; ".join(f"{key}: {', '.join(f'`{v}`' for v in value)}" for key, value in selectors.items()), ""]
    return lines


def write_unrelated(results: dict) -> None:
    (HERE / UNRELATED_RESULTS).write_text(json.dumps(results, indent=2) + "\n")
    main_results = HERE / "results.json"
    if main_results.exists():  # the generated part of RESULTS.md again, now with this section
        write_report(json.loads(main_results.read_text()))


async def main_unrelated(args: argparse.Namespace) -> dict:
    """--unrelated: each configuration alternately without and with the unrelated objects."""
    os.sched_setaffinity(0, {DOUBLE_CPU})
    previous = HERE / UNRELATED_RESULTS
    results: dict = {
        "when": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "commit": args.commit,
        "command": "benchmarks/operator/run.py " + " ".join(sys.argv[1:]),
        "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
                   f"load average {os.getloadavg()[0]:.2f} at the start",
        "describe": (f"{args.unrelated - args.unrelated // 2:,} Pods and {args.unrelated // 2:,} Services in "
                     f"{len(unrelated_objects.NAMESPACES)} namespaces, created before the operator starts"),
        "idle_s": args.idle, "update_rate_per_s": args.update_rate, "runs": [],
    }
    if args.append and previous.exists():
        earlier = json.loads(previous.read_text())
        results["runs"] = earlier["runs"]
        results["command"] = earlier["command"] + " ; " + results["command"]
    configs = [CONFIGS[name] for name in args.configs]
    if args.tweaks:
        configs = [Config(f"{c.name} + {'+'.join(args.tweaks)}", c.env, (*c.tweaks, *args.tweaks)) for c in configs]
    plan = []
    for round_ in range(args.repeat):
        for n in args.endpoints:
            for config in configs:  # empty first, then unrelated first, ... (counting the runs kept by --append)
                earlier = sum(1 for r in results["runs"] if r.get("endpoints") == n and r.get("config") == config.name)
                order = (0, args.unrelated) if (round_ + earlier // 2) % 2 == 0 else (args.unrelated, 0)
                plan += [(n, config, count) for count in order]
    for n, config, count in plan:
        print(f"N={n}, {config.name}, {count} unrelated objects, load {loadavg()}", flush=True)
        results["runs"].append(result := {})
        try:
            await measure(n, config, args, True, result, unrelated=count)
        except (TimeoutError, RuntimeError) as error:
            print(f"  failed: {error}", flush=True)
            result["error"] = str(error)
            result.setdefault("unrelated", count)
        write_unrelated(results)
    return results


def operator_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=HERE.parents[1], capture_output=True, text=True, check=False).stdout
    return git("rev-parse", "--short", "HEAD").strip() + (" (operator/ modified)" if git("status", "--porcelain", "--", "operator").strip() else "")


async def main(args: argparse.Namespace) -> dict:
    os.sched_setaffinity(0, {DOUBLE_CPU})
    results: dict = {
        "when": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "commit": args.commit,
        "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
                   f"load average {os.getloadavg()[0]:.2f} at the start",
        "goals": GOALS, "runs": [],
    }
    previous = HERE / "results.json"
    if args.append and previous.exists():  # keep the runs recorded before (other N or configurations)
        results["runs"] = json.loads(previous.read_text()).get("runs", [])
    if args.sweep:
        results["sweep"] = {"when": results["when"], "runs": []}
    elif previous.exists():
        results["sweep"] = json.loads(previous.read_text()).get("sweep")
    configs = [CONFIGS[name] for name in args.configs]
    if args.tweaks:  # an experiment: more candidate changes on top
        configs = [Config(f"{c.name} + {'+'.join(args.tweaks)}", c.env, (*c.tweaks, *args.tweaks)) for c in configs]
    plan = [(n, config, True, results["runs"]) for n in args.endpoints for config in configs]
    if args.sweep:
        plan += [(max(args.endpoints), config, False, results["sweep"]["runs"]) for config in SWEEP]
    for n, config, full, into in plan:
        print(f"N={n}, {config.name}" + ("" if full else " (create + RSS)"), flush=True)
        into.append(result := {})
        try:
            await measure(n, config, args, full, result)
        except (TimeoutError, RuntimeError) as error:
            print(f"  failed: {error}", flush=True)
            result["error"] = str(error)
        write_report(results)  # as it goes: a later failure loses nothing
    return results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoints", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--idle", type=float, default=60, help="idle window, seconds (default 60)")
    parser.add_argument("--resync", type=float, default=20,
                        help="the idle endpoints' periodic pass (600 s) every this many seconds (0: as is)")
    parser.add_argument("--rollbacks", type=int, default=50, help="reverts with intervalSeconds 1 (default 50)")
    parser.add_argument("--default-rollbacks", type=int, default=20, help="reverts with the default intervals")
    parser.add_argument("--stagger", type=float, default=0.2, help="seconds between the rollouts started")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=None,
                        help="default: as-is; with --unrelated: as-is no-selectors")
    parser.add_argument("--tweaks", nargs="*", default=[], help="tweaks.py changes to add to every configuration")
    parser.add_argument("--sweep", action="store_true", help="also one change at a time, create + RSS, largest N")
    parser.add_argument("--create-timeout", type=float, default=300)
    parser.add_argument("--progress-deadline", type=int, default=None,
                        help="spec.checks.progressDeadlineSeconds of the endpoints created (default: the spec's, 300)")
    parser.add_argument("--unrelated", type=int, default=None, metavar="COUNT",
                        help="the unrelated-objects case: each configuration alternately with an empty cluster and "
                             "with COUNT objects the operator does not own (half Pods, half Services); create, "
                             "settle and idle only; writes results-unrelated.json")
    parser.add_argument("--repeat", type=int, default=2, help="with --unrelated: rounds (default 2)")
    parser.add_argument("--update-rate", type=float, default=10,
                        help="with --unrelated: writes per second to unrelated objects during the idle window")
    parser.add_argument("--append", action="store_true", help="keep the runs already recorded (results.json, or with --unrelated results-unrelated.json)")
    args = parser.parse_args()
    if args.configs is None:
        args.configs = ["as-is", "no-selectors"] if args.unrelated is not None else ["as-is"]
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if os.environ.get("BENCH_DOUBLE_UVLOOP"):  # an experiment: the double's loop from uvloop (pip install uvloop)
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    arguments.commit = operator_commit()
    if arguments.unrelated is not None:
        outcome = asyncio.run(main_unrelated(arguments))
        print("\n".join(unrelated_section(outcome)))
        sys.exit()
    outcome = asyncio.run(main(arguments))
    print()
    print("\n".join(summary_rows(outcome["runs"])))
    print()
    print("\n".join(goal_lines(outcome["runs"])))
    if outcome.get("sweep") and outcome["sweep"]["runs"]:
        print()
        print("\n".join(summary_rows(outcome["sweep"]["runs"])))
