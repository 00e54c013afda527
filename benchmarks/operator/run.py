#!/usr/bin/env python3
"""Benchmark the slotkeeper operator at scale against an in-process Kubernetes API double.

    /work/main/.venv/bin/python benchmarks/operator/run.py [--endpoints 100 1000] [--sweep]

This process is the driver and the API double (apidouble.py: the integration harness's KMock-based
emulator with O(1) object lookups, plus the Deployment controller), pinned to CPU 1, its cyclic GC
off while a measurement runs; the operator runs alone in its own process (launcher.py) on CPU 0, so
its RSS is its own. Full-GC pauses of both processes are recorded.

For each N and each configuration (the operator as is, and with the recommended changes), with a
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
from kmock_cluster import DEPLOYMENTS, MODELENDPOINTS, PODS, SERVICES, Kube

HERE = Path(__file__).resolve().parent
OPERATOR_CPU, DOUBLE_CPU = 0, 1
NAMESPACE = "bench"
WRITES = ("POST", "PATCH", "PUT", "DELETE")
SPEC = {"model": {"name": "m", "uri": "file:///models/m/1/model.joblib"}}
NEW_MODEL = {"name": "m", "uri": "file:///models/m/2/model.joblib"}
FINDINGS = "## Findings"  # RESULTS.md from this heading on is written by hand and kept
GOALS = {"rss_mib_at_1000": 150, "endpoints_per_s": 50, "idle_writes": 0,
         "idle_reads_per_endpoint_per_min": 0.1, "revert_p95_ms": 1000}


@dataclass(frozen=True)
class Config:
    name: str
    env: tuple[tuple[str, str], ...] = ()  # for the operator process
    tweaks: tuple[str, ...] = ()  # tweaks.py: candidate operator changes


def queueing(worker_limit: int, idle_timeout: float) -> tuple[tuple[str, str], ...]:
    return ("SLOTKEEPER_WORKER_LIMIT", str(worker_limit)), ("SLOTKEEPER_IDLE_TIMEOUT", str(idle_timeout))


AS_IS = Config("as is")
# What is still to do on top of the operator as is (cf6c15f took the queueing, log and connection changes).
RECOMMENDED = Config("recommended", tweaks=("no_kubernetes", "gc_freeze"))
SWEEP = [  # one change at a time from the operator as is
    Config("kopf's queueing defaults", (("BENCH_KOPF_QUEUEING", "1"),)),
    Config("queueing 100/2 (before cf6c15f)", queueing(100, 2)),
    Config("queueing 20/2", queueing(20, 2)),
    Config("queueing 100/0.5", queueing(100, 0.5)),
    Config("queueing 100/0.1", queueing(100, 0.1)),
    Config("queueing 50/0.1", queueing(50, 0.1)),
    Config("queueing 10/0.1", queueing(10, 0.1)),
    Config("no_kubernetes", tweaks=("no_kubernetes",)),
    Config("gc_freeze", tweaks=("gc_freeze",)),
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


async def measure(n: int, config: Config, args: argparse.Namespace, full: bool, result: dict) -> None:
    """Fills `result` as it goes (what was measured before a failure stays)."""
    double, server, stack = await apidouble.start()
    controller = asyncio.create_task(double.deployment_controller())
    checks = CheckServer()
    await checks.start()
    log = HERE / ".logs" / f"operator-{n}-{re.sub(r'[^a-z0-9]+', '_', config.name.lower())}.log"
    log.parent.mkdir(exist_ok=True)
    operator = Operator(str(server.url).rstrip("/"), config, args.resync if full else None, log)
    kube = Kube(double, namespace=NAMESPACE)
    double_gc = GcPauses()
    result.update(endpoints=n, config=config.name, tweaks=list(config.tweaks), env=dict(config.env))
    try:
        watched = (MODELENDPOINTS, DEPLOYMENTS, SERVICES, PODS)
        await wait_for(lambda: all(double.watch_count(r) for r in watched), 30, "operator ready", operator)
        await settle(double, operator, quiet=1.0)
        result["queueing"] = operator.queueing()
        result["rss_mib"] = {"empty": mib(operator.memory()["VmRSS"])}

        names = [name(i) for i in range(n)]
        posted: dict[str, float] = {}
        gate = asyncio.Semaphore(16)

        async def create(endpoint: str) -> None:
            async with gate:
                posted[endpoint] = time.monotonic()
                await kube.create_endpoint(endpoint, SPEC, namespace=NAMESPACE)

        waited = await quiet_machine(operator)
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
        result["create"]["requests"] = requests_table(double)
        result["create"]["requests_per_endpoint"] = round(sum(double.counts.values()) / n, 1)
        memory = operator.memory()
        result["rss_mib"].update(settled=mib(memory["VmRSS"]), peak=mib(memory["VmHWM"]), anon=mib(memory["RssAnon"]))
        result["rss_mib"]["per_endpoint_kib"] = round(
            (result["rss_mib"]["settled"] - result["rss_mib"]["empty"]) * 1024 / n, 1)
        print(f"  N={n} {config.name}: {result['create']['endpoints_per_s']} endpoints/s, "
              f"RSS {result['rss_mib']['settled']} MiB", flush=True)
        if not full:
            return

        double.reset_counts()
        await asyncio.sleep(args.idle)
        writes = sum(count for verb, count in double.counts.items() if verb in WRITES)
        reads = sum(double.counts.values()) - writes
        result["idle"] = {"window_s": args.idle, "periodic_pass_every_s": args.resync,
                          "requests": requests_table(double), "writes": writes, "reads": reads,
                          "reads_per_endpoint_per_min": round(reads / n * 60 / args.idle, 4),
                          "writes_per_endpoint_per_min": round(writes / n * 60 / args.idle, 4)}
        result["rss_mib"]["after_idle"] = mib(operator.memory()["VmRSS"])
        print(f"  idle {args.idle:g} s: {dict(double.counts) or 'no request'}", flush=True)

        k = min(args.rollbacks, n // 2)
        result["revert"] = await rollbacks(double, kube, checks, operator, names[:k], 1, args.stagger)
        print(f"  revert, interval 1 s: verdict -> selector {result['revert']['verdict_to_selector']}", flush=True)
        j = min(args.default_rollbacks, n - k)
        result["revert_default"] = await rollbacks(double, kube, checks, operator, names[k:k + j], None, 0.1)
        print(f"  revert, default intervals: fault -> selector {result['revert_default']['fault_to_selector']}",
              flush=True)
        result["rss_mib"]["end"] = mib(operator.memory()["VmRSS"])
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
             "| fault->revert, 10 s interval, p50/p95/max s | operator's longest full-GC pause ms |"),
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for run in runs:
        if "create" not in run:
            rows.append(f"| {run['endpoints']} | {label(run)} | failed: {run.get('error', '?')} |" + " |" * 10)
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
        goal(run, f">= {want} endpoints/s", rate >= want, f"{rate}/s" + ("" if rate >= want else f", {want / rate - 1:.0%} short"))
        if run["endpoints"] >= 1000:
            rss, most = run["rss_mib"]["settled"], GOALS["rss_mib_at_1000"]
            goal(run, f"RSS <= {most} MiB", rss <= most, f"{rss} MiB" + ("" if rss <= most else f", {rss - most:.1f} MiB over"))
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
         "the API double. \"as is\": the operator's own settings; \"recommended\": the changes below, applied "
         "by the launcher (tweaks.py). CPU used by other processes meanwhile: "
         f"{', '.join(str(r['create']['others_cpu_s']) for r in results['runs'] if 'create' in r)} s."),
        "", *summary_rows(results["runs"]), "", "## Goals", "", *goal_lines(results["runs"]), "",
    ]
    sweep = results.get("sweep")
    if sweep and sweep["runs"]:
        lines += [f"## One change at a time (N={sweep['runs'][0]['endpoints']}, create + RSS only, {sweep['when']})",
                  "", *summary_rows(sweep["runs"]), ""]
    report = HERE / "RESULTS.md"
    kept = report.read_text().split(FINDINGS, 1) if report.exists() else []
    if len(kept) == 2:  # the hand-written analysis below the generated part stays
        lines += [FINDINGS + kept[1]]
    report.write_text("\n".join(lines))


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
    if args.sweep:
        results["sweep"] = {"when": results["when"], "runs": []}
    elif previous.exists():
        results["sweep"] = json.loads(previous.read_text()).get("sweep")
    configs = [{"as-is": AS_IS, "recommended": RECOMMENDED}[name] for name in args.configs]
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
    parser.add_argument("--configs", nargs="+", choices=["as-is", "recommended"], default=["as-is", "recommended"])
    parser.add_argument("--tweaks", nargs="*", default=[], help="tweaks.py changes to add to every configuration")
    parser.add_argument("--sweep", action="store_true", help="also one change at a time, create + RSS, largest N")
    parser.add_argument("--create-timeout", type=float, default=300)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    arguments.commit = operator_commit()
    outcome = asyncio.run(main(arguments))
    print()
    print("\n".join(summary_rows(outcome["runs"])))
    print()
    print("\n".join(goal_lines(outcome["runs"])))
    if outcome.get("sweep") and outcome["sweep"]["runs"]:
        print()
        print("\n".join(summary_rows(outcome["sweep"]["runs"])))
