#!/usr/bin/env python3
"""Benchmark the serving image against the HTTP floor and MLServer, side by side.

    /work/main/.venv/bin/python benchmarks/serving/run.py [--duration 5] [--runs 2] [--quick]

Groups, each measured on its own (its servers started together, measured in
rounds: every case at concurrency 8, then 32, then 128, repeated --runs
times, so drift hits all alike, every other round in the reverse order of
cases; then stopped):

  linear        LogisticRegression, one 1x4 FP64 row (JSON): floor, slotkeeper,
                slotkeeper-no-fastpath, mlserver, mlserver-inproc
  forest        RandomForestClassifier (100 trees), one 1x4 FP64 row (JSON):
                floor, slotkeeper (batching, the default settings),
                slotkeeper-no-batching, and MLServer in three configurations
  xgboost       XGBoost (100 trees, native model.json), the same six servers
  binary        slotkeeper on JSON vs binary bodies (binary tensor data
                extension, binary outputs asked for as tritonclient does):
                1x4 FP64 (LogisticRegression) and 64x256 FP32 (LogisticRegression
                on 256 features)
  delay-sweep   slotkeeper on the forest at batch max delays 0, 0.5, 1, 2, 5 ms:
                where the default of SLOTKEEPER_BATCH_MAX_DELAY_MS comes from

Servers (each pinned to CPU 0, wrk pinned to CPU 1, all on 127.0.0.1):
  floor          bare ASGI app answering constant JSON on uvicorn+uvloop+httptools
  slotkeeper*    slotkeeper-serve, defaults unless the name says otherwise
  mlserver       MLServer + its sklearn/xgboost runtime, default settings (a worker process)
  mlserver-inproc          parallel_workers=0 (inference in the server process)
  mlserver-batching        parallel_workers=0 plus MLServer's adaptive batching
                           (max_batch_size 32, max_batch_time 2 ms)

MLServer runs from its own venv (benchmarks/serving/.venv-mlserver), created on
first use. Ratios to MLServer use its best configuration. Writes results.json
(every run) and results.md (summary and targets) next to this file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
MLSERVER_VENV = HERE / ".venv-mlserver"
# uvloop >= 0.22 breaks MLServer 1.7's parallel inference workers
# (asyncio.get_event_loop() in a fresh process raises): pin the last good one.
MLSERVER_PACKAGES = ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", "mlserver-xgboost==1.7.1", "uvloop<0.22"]
MODEL_NAME = "bench"
SERVER_CPU, LOAD_CPU = "0", "1"
CONCURRENCIES = (8, 32, 128)
MLSERVER_CONFIGS = ("mlserver", "mlserver-inproc", "mlserver-batching")
DELAYS_MS = (0, 0.5, 1, 2, 5)
ROW = [0.35, -1.2, 0.8, 2.1]


@dataclass
class Body:
    """One request body as wrk sends it."""

    name: str
    data: bytes
    content_type: str = "application/json"
    json_length: int | None = None  # Inference-Header-Content-Length of a binary body

    @property
    def binary(self) -> bool:
        return self.json_length is not None


def json_body(name: str, rows: list[list[float]], datatype: str) -> Body:
    inputs = [{"name": "input-0", "shape": [len(rows), len(rows[0])], "datatype": datatype,
               "data": [x for row in rows for x in row]}]
    return Body(name, json.dumps({"inputs": inputs}, separators=(",", ":")).encode())


def binary_body(name: str, rows: list[list[float]], datatype: str) -> Body:
    """The binary tensor data extension, as tritonclient sends it by default (binary outputs too)."""
    import numpy as np

    raw = np.asarray(rows, dtype={"FP32": np.float32, "FP64": np.float64}[datatype]).tobytes()
    header = {
        "inputs": [{"name": "input-0", "shape": [len(rows), len(rows[0])], "datatype": datatype,
                    "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"binary_data_output": True},
    }
    text = json.dumps(header, separators=(",", ":")).encode()
    return Body(name, text + raw, "application/octet-stream", len(text))


@dataclass
class Server:
    name: str
    command: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    process: subprocess.Popen | None = None
    log: Path | None = None

    @property
    def infer_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2/models/{MODEL_NAME}/infer"

    @property
    def is_mlserver(self) -> bool:
        return self.name.startswith("mlserver")


@dataclass
class Case:
    """What one table row measures: a server answering one body."""

    label: str
    server: Server
    body: Body


@dataclass
class Group:
    name: str
    title: str
    cases: list[Case]

    @property
    def servers(self) -> list[Server]:
        return list({id(c.server): c.server for c in self.cases}.values())


def log(message: str) -> None:
    print(message, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_tools() -> None:
    if shutil.which("taskset") is None:
        sys.exit("taskset (util-linux) is required")
    if shutil.which("wrk") is None:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            log("installing wrk from Debian ...")
            subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
        else:
            sys.exit("wrk is required: apt-get install -y wrk")
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs 2 CPUs: one for the servers, one for the load generator")


def ensure_mlserver_venv(sklearn_version: str, xgboost_version: str) -> Path:
    python = MLSERVER_VENV / "bin" / "python"
    # The same library versions as ours, so both sides run the same model code.
    wanted = [*MLSERVER_PACKAGES, f"scikit-learn=={sklearn_version}", f"xgboost=={xgboost_version}"]
    marker = MLSERVER_VENV / ".installed"
    if marker.exists() and marker.read_text() == "\n".join(wanted):
        return MLSERVER_VENV / "bin" / "mlserver"
    if not python.exists():
        log(f"creating {MLSERVER_VENV} ...")
        subprocess.run([sys.executable, "-m", "venv", str(MLSERVER_VENV)], check=True)
    log(f"installing {' '.join(wanted)} into it (first run only) ...")
    subprocess.run([str(python), "-m", "pip", "install", "-q", *wanted], check=True)
    marker.write_text("\n".join(wanted))
    return MLSERVER_VENV / "bin" / "mlserver"


# ------------------------------------------------------------------------------------- models


def training_data(n_rows: int, n_features: int):
    import numpy as np

    rng = np.random.RandomState(0)
    X = rng.randn(n_rows, n_features)
    weights = rng.randn(n_features)
    weights[:4] = [1.0, -0.5, 0.25, 0.75]
    y = (X @ weights + 0.1 * rng.randn(n_rows) > 0).astype(int)
    return X, y


def train_models(root: Path) -> dict[str, Path]:
    """Model artifacts by name: a file slotkeeper-serve and MLServer both load."""
    import joblib
    import xgboost
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    paths = {}
    X, y = training_data(200, 4)
    paths["linear"] = root / "linear" / "model.joblib"
    paths["linear"].parent.mkdir()
    joblib.dump(LogisticRegression().fit(X, y), paths["linear"])
    X, y = training_data(2000, 256)
    paths["linear256"] = root / "linear256" / "model.joblib"
    paths["linear256"].parent.mkdir()
    joblib.dump(LogisticRegression(max_iter=1000).fit(X, y), paths["linear256"])
    X, y = training_data(2000, 4)
    paths["forest"] = root / "forest" / "model.joblib"
    paths["forest"].parent.mkdir()
    joblib.dump(RandomForestClassifier(n_estimators=100, random_state=0).fit(X, y), paths["forest"])
    paths["xgboost"] = root / "xgboost" / "model.json"
    paths["xgboost"].parent.mkdir()
    xgboost.XGBClassifier(n_estimators=100, max_depth=6, random_state=0).fit(X, y).get_booster().save_model(
        str(paths["xgboost"])
    )
    return paths


# ------------------------------------------------------------------------------------ servers

UVICORN_FLAGS = ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--no-proxy-headers",
                 "--no-server-header", "--log-level", "warning"]


def floor_server() -> Server:
    port = free_port()
    return Server("floor", [sys.executable, "-m", "uvicorn", "floor_app:app", "--port", str(port), *UVICORN_FLAGS],
                  port, cwd=HERE)


def slotkeeper_server(name: str, root: Path, model: Path, *extra: str) -> Server:
    serve = str(Path(sys.executable).with_name("slotkeeper-serve"))
    port = free_port()
    args = ["--model-uri", f"file://{model}", "--model-name", MODEL_NAME, "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning",
            "--shutdown-delay-seconds", "0",  # no load balancer to wait for: stop at once
            *extra]
    return Server(name, [serve, *args], port, env={"SLOTKEEPER_CACHE_DIR": str(root / f"cache-{port}")})


def mlserver_server(name: str, root: Path, mlserver: Path, model: Path) -> Server:
    port = free_port()
    directory = root / f"mlserver-{port}"
    directory.mkdir()
    shutil.copy(model, directory / model.name)
    settings = {"http_port": port, "grpc_port": free_port(), "metrics_port": free_port(), "debug": False}
    model_settings = {
        "name": MODEL_NAME,
        "implementation": "mlserver_xgboost.XGBoostModel" if model.suffix == ".json" else "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": f"./{model.name}"},
    }
    if name in ("mlserver-inproc", "mlserver-batching"):
        settings["parallel_workers"] = 0  # faster than a worker process on one CPU
    if name == "mlserver-batching":
        model_settings |= {"max_batch_size": 32, "max_batch_time": 0.002}
    (directory / "settings.json").write_text(json.dumps(settings))
    (directory / "model-settings.json").write_text(json.dumps(model_settings))
    # cwd: MLServer keeps its metrics in ./.metrics, which must not land in the checkout.
    return Server(name, [str(mlserver), "start", str(directory)], port, cwd=directory)


def build_groups(root: Path, models: dict[str, Path], mlserver: Path | None, include: set[str]) -> list[Group]:
    row = json_body("1x4 FP64 JSON", [ROW], "FP64")
    groups = []

    def references(model: Path, configs: tuple[str, ...]) -> list[Case]:
        if mlserver is None:
            return []
        return [Case(name, mlserver_server(name, root, mlserver, model), row) for name in configs]

    if "linear" in include:
        groups.append(Group("linear", "LogisticRegression, one 1x4 FP64 row (JSON)", [
            Case("floor", floor_server(), row),
            Case("slotkeeper", slotkeeper_server("slotkeeper", root, models["linear"]), row),
            Case("slotkeeper-no-fastpath",
                 slotkeeper_server("slotkeeper-no-fastpath", root, models["linear"], "--no-fastpath"), row),
            *references(models["linear"], ("mlserver", "mlserver-inproc")),
        ]))
    for name, title in (("forest", "RandomForestClassifier (100 trees), one 1x4 FP64 row (JSON)"),
                        ("xgboost", "XGBoost classifier (100 trees, model.json), one 1x4 FP64 row (JSON)")):
        if name in include:
            groups.append(Group(name, title, [
                Case("floor", floor_server(), row),
                Case("slotkeeper", slotkeeper_server("slotkeeper", root, models[name]), row),
                Case("slotkeeper-no-batching",
                     slotkeeper_server("slotkeeper-no-batching", root, models[name], "--no-batching"), row),
                *references(models[name], MLSERVER_CONFIGS),
            ]))
    if "binary" in include:
        import numpy as np

        small = slotkeeper_server("slotkeeper", root, models["linear"])
        wide = slotkeeper_server("slotkeeper-256", root, models["linear256"])
        batch = np.random.RandomState(1).randn(64, 256).astype(np.float32).tolist()
        groups.append(Group("binary", "JSON vs binary bodies (binary tensor data extension, binary outputs)", [
            Case("slotkeeper 1x4 FP64 JSON", small, row),
            Case("slotkeeper 1x4 FP64 binary", small, binary_body("1x4 FP64 binary", [ROW], "FP64")),
            Case("slotkeeper 64x256 FP32 JSON", wide, json_body("64x256 FP32 JSON", batch, "FP32")),
            Case("slotkeeper 64x256 FP32 binary", wide, binary_body("64x256 FP32 binary", batch, "FP32")),
        ]))
    if "delay-sweep" in include:
        groups.append(Group("delay-sweep", "slotkeeper on the forest by batch max delay (1x4 FP64 JSON)", [
            Case(f"delay {ms:g} ms",
                 slotkeeper_server(f"slotkeeper-delay-{ms:g}", root, models["forest"], "--batch-max-delay-ms", str(ms)),
                 row)
            for ms in DELAYS_MS
        ]))
    return groups


def start(server: Server, root: Path) -> None:
    server.log = root / f"{server.name}-{server.port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLOTKEEPER_", "PROMETHEUS_", "VIRTUAL_ENV"))}
    env.update(server.env)
    with open(server.log, "wb") as out:
        # Own session, so stopping it also stops its children (MLServer's workers).
        server.process = subprocess.Popen(
            ["taskset", "-c", SERVER_CPU, *server.command],
            cwd=server.cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_all(servers: list[Server]) -> None:
    """SIGTERM to every server's process group first, then wait for each (SIGKILL after 20 s)."""
    running = [s for s in servers if s.process and s.process.poll() is None]
    for server in running:
        os.killpg(server.process.pid, signal.SIGTERM)
    for server in running:
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()


def decode_answer(raw: bytes, json_length: str | None) -> list:
    """The first output's values, from a JSON answer or one with binary outputs."""
    import numpy as np

    if json_length is None:
        return json.loads(raw)["outputs"][0]["data"]
    header = json.loads(raw[: int(json_length)])
    output = header["outputs"][0]
    size = output["parameters"]["binary_data_size"]
    dtype = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}[output["datatype"]]
    return np.frombuffer(raw[int(json_length) : int(json_length) + size], dtype=dtype).tolist()


def post(url: str, body: Body) -> list:
    headers = {"Content-Type": body.content_type}
    if body.binary:
        headers["Inference-Header-Content-Length"] = str(body.json_length)
    request = urllib.request.Request(url, data=body.data, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return decode_answer(response.read(), response.headers.get("Inference-Header-Content-Length"))


def wait_ready(server: Server, body: Body, timeout: float = 180) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited:\n{server.log.read_text()[-3000:]}")
        try:
            return post(server.infer_url, body)
        except OSError:
            time.sleep(0.25)
    raise RuntimeError(f"{server.name} not answering after {timeout} s:\n{server.log.read_text()[-3000:]}")


def check_answers(group: Group, answers: dict[str, list]) -> None:
    """Every real server of a group answers each body alike (slotkeeper's variants bit for bit).

    MLServer's XGBoost runtime answers class labels where slotkeeper answers the
    booster's own output (probabilities), so only slotkeeper is compared there.
    """
    by_body: dict[str, dict[str, list]] = {}
    for case in group.cases:
        if case.server.name == "floor" or (group.name == "xgboost" and case.server.is_mlserver):
            continue
        # Binary and JSON bodies of the same rows must agree too.
        key = case.body.name.replace("binary", "JSON")
        by_body.setdefault(key, {})[case.label] = answers[case.label]
    for key, found in by_body.items():
        if len({json.dumps(v) for v in found.values()}) > 1:
            raise RuntimeError(f"{group.name}: servers disagree on the prediction for {key}: {found}")


# -------------------------------------------------------------------------------- measurement

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_group_stats(pgid: int) -> tuple[float, int]:
    """(CPU seconds, involuntary context switches) so far of every live process in a process group.

    Involuntary switches of a pinned server are preemptions: something else
    wanted its CPU.
    """
    cpu, preempted = 0, 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:  # pgrp
                continue
            cpu += int(fields[11]) + int(fields[12])  # utime + stime
            for status in stat.parent.glob("task/*/status"):
                for line in status.read_text().splitlines():
                    if line.startswith("nonvoluntary_ctxt_switches:"):
                        preempted += int(line.split()[1])
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
    return cpu / CLOCK_TICKS, preempted


def machine_cpu(field: str = "busy") -> float:
    """CPU seconds on all CPUs since boot: "busy" (user + nice + system) or "steal" (taken by the hypervisor)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    ticks = fields[7] if field == "steal" else fields[0] + fields[1] + fields[2] + fields[5] + fields[6]
    return ticks / CLOCK_TICKS


def wrk(case: Case, concurrency: int, seconds: int, root: Path) -> dict:
    """One wrk run; also measures how much CPU something other than the server and wrk used meanwhile."""
    server, body = case.server, case.body
    body_file = root / f"body-{abs(hash(body.name))}.bin"
    if not body_file.exists():
        body_file.write_bytes(body.data)
    command = [
        "taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s",
        "-s", str(HERE / "post.lua"), server.infer_url,
        "--", str(body_file), body.content_type, "" if body.json_length is None else str(body.json_length),
    ]
    (server_cpu, preempted), machine, steal = (
        process_group_stats(server.process.pid),
        machine_cpu(),
        machine_cpu("steal"),
    )
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # taskset execs wrk: same pid
        process.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.monotonic() - started
        server_cpu_after, preempted_after = process_group_stats(server.process.pid)
        foreign = machine_cpu() - machine - (server_cpu_after - server_cpu) - (usage.ru_utime + usage.ru_stime)
        stolen = machine_cpu("steal") - steal
        out.seek(0)
        output = out.read().decode()
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed ({process.returncode}): {output}")
    match = re.search(r"^WRK_RESULT (\{.*\})$", output, re.MULTILINE)
    if not match:
        raise RuntimeError(f"no result from wrk:\n{output}")
    result = json.loads(match.group(1))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    # CPUs' worth of other work during the run (0.02 = 2 % of one CPU).
    result["foreign_cpu"] = round(max(0.0, foreign) / elapsed, 3)
    result["steal_cpu"] = round(stolen / elapsed, 3)  # a neighbour VM: recorded, cannot be avoided
    result["server_preemptions"] = preempted_after - preempted
    result["server_cpu_us"] = round((server_cpu_after - server_cpu) / max(result["requests"], 1) * 1e6, 2)
    if result["non_2xx"] or result["socket_errors"]:
        raise RuntimeError(
            f"{case.label}: {result['non_2xx']} non-2xx answers, {result['socket_errors']} socket errors"
        )
    return result


def cpu_busy_fraction(seconds: float = 0.5) -> float:
    """Share of all CPUs busy over a short window (0..1); our servers are idle when this is called."""
    before = machine_cpu()
    time.sleep(seconds)
    return (machine_cpu() - before) / seconds / (os.cpu_count() or 1)


def wait_for_quiet(max_wait: float, threshold: float = 0.03) -> None:
    """Wait (up to max_wait s) until nothing else uses the CPUs.

    Another process on the machine (a test suite, a build) preempts the
    pinned server and shows up as multi-millisecond p99s.
    """
    deadline = time.monotonic() + max_wait
    busy = cpu_busy_fraction()
    while busy > threshold and time.monotonic() < deadline:
        log(f"  machine busy ({busy:.0%} of the CPUs used by something else), waiting ...")
        time.sleep(2)
        busy = cpu_busy_fraction()


def measure(case: Case, concurrency: int, args: argparse.Namespace, root: Path) -> dict:
    """A run undisturbed by other processes: retried while something else used the CPUs during it.

    If no attempt is clean, the least disturbed one is kept and marked.
    """
    attempts = []
    for _ in range(args.attempts):
        wait_for_quiet(args.max_wait_quiet)
        result = wrk(case, concurrency, args.duration, root)
        attempts.append(result)
        if result["foreign_cpu"] <= args.max_foreign_cpu:
            break
        log(
            f"  {case.label} c={concurrency}: {result['foreign_cpu']:.0%} of a CPU used by other processes during the run, measuring again"
        )
    best = min(attempts, key=lambda r: r["foreign_cpu"])
    return {**best, "attempts": len(attempts), "disturbed": best["foreign_cpu"] > args.max_foreign_cpu}


def run_group(group: Group, args: argparse.Namespace, root: Path) -> tuple[list[dict], list[dict]]:
    """(runs, failures): a server that dies or answers errors is left out of the rest of its group,
    with the reason and its log's tail, instead of ending the whole benchmark."""
    runs: list[dict] = []
    failures: dict[str, dict] = {}
    servers = group.servers
    log(f"== {group.name}: {group.title}")
    try:
        for server in servers:
            start(server, root)
        answers = {}
        for case in group.cases:
            answers[case.label] = wait_ready(case.server, case.body)
            log(f"{case.label:32s} ready on :{case.server.port}, answers {str(answers[case.label])[:60]}")
        check_answers(group, answers)
        for case in group.cases:
            for c in args.concurrencies:
                wrk(case, c, args.warmup, root)
        for run in range(1, args.runs + 1):
            for c in args.concurrencies:
                # Every other run in the reverse order: a case measured right after another on the same
                # server (JSON, then binary) must not always be the one that comes second.
                for case in group.cases if run % 2 else group.cases[::-1]:
                    if case.server.name in failures:
                        continue
                    try:
                        result = measure(case, c, args, root)
                    except RuntimeError as error:
                        code = case.server.process.poll()
                        failures[case.server.name] = {
                            "group": group.name, "server": case.server.name, "concurrency": c, "run": run,
                            "error": str(error)[:500], "exit_code": code,
                            "log_tail": case.server.log.read_text(errors="replace")[-1500:],
                        }
                        log(f"  {case.label} c={c}: FAILED ({'exited ' + str(code) if code is not None else 'running'}): {str(error)[:200]}")
                        continue
                    runs.append({"group": group.name, "server": case.label, "concurrency": c, "run": run, **result})
                    flag = "  (disturbed)" if result["disturbed"] else ""
                    log(
                        f"run {run} c={c:<3d} {case.label:32s} {result['rps']:>9,.0f} req/s  p50 {result['p50_us'] / 1000:6.2f} ms  p99 {result['p99_us'] / 1000:6.2f} ms  other CPU {result['foreign_cpu']:.1%}{flag}"
                    )
    finally:
        stop_all(servers)
    return runs, list(failures.values())


# ------------------------------------------------------------------------------------ results


def summarize(runs: list[dict]) -> dict:
    return {
        "rps_mean": statistics.mean(r["rps"] for r in runs),
        "rps_min": min(r["rps"] for r in runs),
        "rps_max": max(r["rps"] for r in runs),
        "p50_ms_mean": statistics.mean(r["p50_us"] for r in runs) / 1000,
        "p99_ms_mean": statistics.mean(r["p99_us"] for r in runs) / 1000,
        "p99_ms_min": min(r["p99_us"] for r in runs) / 1000,
        "p99_ms_max": max(r["p99_us"] for r in runs) / 1000,
        "foreign_cpu_max": max(r["foreign_cpu"] for r in runs),
        "disturbed_runs": sum(r["disturbed"] for r in runs),
        # per run: its req/s and the server's CPU per request (pairs of cases measured one after the other)
        "rps_by_run": {r["run"]: r["rps"] for r in runs},
        "cpu_us_by_run": {r["run"]: r["server_cpu_us"] for r in runs if "server_cpu_us" in r},
    }


def summaries(runs: list[dict]) -> dict[tuple[str, str, int], dict]:
    keys = list(dict.fromkeys((r["group"], r["server"], r["concurrency"]) for r in runs))
    return {key: summarize([r for r in runs if (r["group"], r["server"], r["concurrency"]) == key]) for key in keys}


def _verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def _throughput_target(summary: dict, group: str, c: int, factor: float, references: tuple[str, ...]) -> str | None:
    """Our worst run against the references' best run."""
    ours = summary.get((group, "slotkeeper", c))
    found = [summary[(group, name, c)] for name in references if (group, name, c) in summary]
    if not ours or not found:
        return None
    best = max(r["rps_max"] for r in found)
    ratio = ours["rps_min"] / best
    return (f"{group} c={c}: slotkeeper worst run {ours['rps_min']:,.0f} req/s = {ratio:.2f}x MLServer's best run"
            f" {best:,.0f} req/s (target >= {factor:g}x): {_verdict(ratio >= factor)}")


def _p99_target(summary: dict, group: str, slack_ms: float) -> str | None:
    ours, floor = summary.get((group, "slotkeeper", 8)), summary.get((group, "floor", 8))
    if not ours or not floor:
        return None
    ok = ours["p99_ms_max"] <= floor["p99_ms_min"] + slack_ms
    return (f"{group} c=8: slotkeeper worst p99 {ours['p99_ms_max']:.2f} ms vs floor best p99"
            f" {floor['p99_ms_min']:.2f} ms + {slack_ms:g} ms (target): {_verdict(ok)}")


def _binary_target(summary: dict, shape: str, c: int, factor: float) -> str | None:
    """Means against means: binary and JSON hit the same server, so drift hits both alike. Each run
    measures the two one right after the other (in alternating order), so the pairs are shown too:
    the median of their ratios, how many binary won, and the server's CPU per request."""
    json_ = summary.get(("binary", f"slotkeeper {shape} JSON", c))
    binary = summary.get(("binary", f"slotkeeper {shape} binary", c))
    if not json_ or not binary:
        return None
    ratio = binary["rps_mean"] / json_["rps_mean"]
    line = (f"binary c={c}: {shape} binary {binary['rps_mean']:,.0f} req/s = {ratio:.2f}x JSON"
            f" {json_['rps_mean']:,.0f} req/s (target >= {factor:g}x): {_verdict(ratio >= factor)}")
    pairs = [binary["rps_by_run"][run] / json_["rps_by_run"][run]
             for run in binary["rps_by_run"] if run in json_["rps_by_run"]]
    if len(pairs) > 1:
        line += (f"; per run {statistics.median(pairs):.2f}x (median of {len(pairs)},"
                 f" binary faster in {sum(p > 1 for p in pairs)})")
    cpu = [binary["cpu_us_by_run"][run] / json_["cpu_us_by_run"][run]
           for run in binary["cpu_us_by_run"] if run in json_["cpu_us_by_run"]]
    if cpu:
        line += (f"; server CPU per request {statistics.median(binary['cpu_us_by_run'].values()):.1f} vs"
                 f" {statistics.median(json_['cpu_us_by_run'].values()):.1f} µs (medians),"
                 f" binary/JSON per run {statistics.median(cpu):.2f} (median)")
    return line


def verdicts(summary: dict) -> list[str]:
    """The targets, judged conservatively where a reference is another server."""
    lines = [
        _throughput_target(summary, "linear", 8, 2.5, ("mlserver", "mlserver-inproc")),
        _throughput_target(summary, "linear", 32, 2.5, ("mlserver", "mlserver-inproc")),
        _p99_target(summary, "linear", 1.0),
    ]
    for group in ("forest", "xgboost"):
        lines += [_throughput_target(summary, group, 32, 4.0, MLSERVER_CONFIGS), _p99_target(summary, group, 2.0)]
    for c in CONCURRENCIES:
        lines += [_binary_target(summary, "1x4 FP64", c, 1.0), _binary_target(summary, "64x256 FP32", c, 3.0)]
    return [line for line in lines if line]


def environment() -> dict:
    import numpy
    import sklearn
    import xgboost

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
        "xgboost": xgboost.__version__,
        "wrk": wrk_version[0] if wrk_version else "?",
    }


def _reference_of(group: str) -> tuple[str, ...]:
    return MLSERVER_CONFIGS if group in ("forest", "xgboost") else ("mlserver", "mlserver-inproc")


def group_table(group: str, title: str, summary: dict, concurrencies: tuple[int, ...]) -> list[str]:
    lines = [f"### {group}: {title}", "",
             "| server | conc. | req/s | p50 ms | p99 ms | vs floor | vs MLServer (best config) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    labels = list(dict.fromkeys(name for g, name, _ in summary if g == group))
    for c in concurrencies:
        floor = summary.get((group, "floor", c))
        mls = [summary[(group, n, c)]["rps_mean"] for n in _reference_of(group) if (group, n, c) in summary]
        for name in labels:
            s = summary.get((group, name, c))
            if not s:
                continue
            vs_floor = f"{s['rps_mean'] / floor['rps_mean']:.2f}x" if floor else "-"
            vs_mls = f"{s['rps_mean'] / max(mls):.2f}x" if mls else "-"
            lines.append(
                f"| {name} | {c} | {s['rps_mean']:,.0f} | {s['p50_ms_mean']:.2f} | {s['p99_ms_mean']:.2f} ({s['p99_ms_max']:.2f}) | {vs_floor} | {vs_mls} |"
            )
    return [*lines, ""]


def write_results(path_json: Path, path_md: Path, runs: list[dict], failures: list[dict], titles: dict[str, str],
                  env: dict, args: argparse.Namespace, started: float) -> list[str]:
    summary = summaries(runs)
    checks = verdicts(summary)
    minutes = (time.monotonic() - started) / 60
    path_json.write_text(
        json.dumps(
            {
                "environment": env,
                "settings": {
                    "duration_s": args.duration,
                    "runs": args.runs,
                    "max_foreign_cpu": args.max_foreign_cpu,
                    "attempts": args.attempts,
                    "concurrencies": list(args.concurrencies),
                    "groups": list(titles),
                    "server_cpu": SERVER_CPU,
                    "load_cpu": LOAD_CPU,
                    "wall_minutes": round(minutes, 1),
                },
                "runs": runs,
                "failures": failures,
                "summary": [{"group": g, "server": name, "concurrency": c, **values}
                            for (g, name, c), values in summary.items()],
                "targets": checks,
            },
            indent=2,
        )
        + "\n"
    )
    disturbed = sum(r["disturbed"] for r in runs)
    lines = [
        "# Serving benchmark",
        "",
        f"Generated by `benchmarks/serving/run.py{' --quick' if args.quick else ''}` on {time.strftime('%Y-%m-%d %H:%M')}"
        f" in {minutes:.0f} min: {env['cpu']}, Python {env['python']}, scikit-learn {env['scikit-learn']},"
        f" xgboost {env['xgboost']}, {env['wrk']}.",
        f"Each server pinned to CPU {SERVER_CPU}, wrk (1 thread) to CPU {LOAD_CPU}; {args.runs} runs of"
        f" {args.duration:g} s per case after a warm-up. Figures are the mean of the runs (p99: the worst run in"
        f" brackets). A run during which other processes used more than {args.max_foreign_cpu:.0%} of a CPU is"
        f" measured again (up to {args.attempts} attempts); runs still disturbed: {disturbed} of {len(runs)}.",
        "",
        "Targets (against another server: slotkeeper's worst run against the reference's best run;"
        " binary vs JSON: means, same server):",
        "",
        *[f"- {line}" for line in checks],
        "",
    ]
    if failures:
        lines += ["Servers that failed during the run (left out of the rest of their group; logs in results.json):", ""]
        lines += [f"- {f['group']} {f['server']} at c={f['concurrency']}, run {f['run']}:"
                  f" {'exited ' + str(f['exit_code']) if f['exit_code'] is not None else 'still running'};"
                  f" {f['error'].splitlines()[0][:160]}" for f in failures]
        lines.append("")
    for group, title in titles.items():
        lines += group_table(group, title, summary, tuple(args.concurrencies))
    lines += [
        "Every run (other CPU: CPUs' worth used by processes other than the server and wrk during the run;"
        " server preempted: the server's involuntary context switches during the run):",
        "",
        "| group | server | conc. | run | req/s | p50 ms | p90 ms | p99 ms | max ms | other CPU | server preempted | attempts |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        lines.append(
            f"| {r['group']} | {r['server']} | {r['concurrency']} | {r['run']} | {r['rps']:,.0f} | {r['p50_us'] / 1000:.2f}"
            f" | {r['p90_us'] / 1000:.2f} | {r['p99_us'] / 1000:.2f} | {r['max_us'] / 1000:.1f}"
            f" | {r['foreign_cpu']:.3f} | {r['server_preemptions']} | {r['attempts']}{' (disturbed)' if r['disturbed'] else ''} |"
        )
    lines.append("")
    path_md.write_text("\n".join(lines))
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds per measured run (default 5)")
    parser.add_argument(
        "--warmup", type=int, default=2, help="seconds of warm-up per case and concurrency (default 2)"
    )
    parser.add_argument("--runs", type=int, default=2, help="runs per case (default 2)")
    parser.add_argument(
        "--max-wait-quiet",
        type=float,
        default=20,
        help="seconds to wait for other load to stop before each run (default 20)",
    )
    parser.add_argument(
        "--max-foreign-cpu",
        type=float,
        default=0.05,
        help="share of a CPU other processes may use during a run before it is measured again (default 0.05)",
    )
    parser.add_argument(
        "--attempts", type=int, default=3, help="attempts per run to get an undisturbed one (default 3)"
    )
    parser.add_argument("--groups", default="linear,forest,xgboost,binary,delay-sweep",
                        help="groups to run (default: all)")
    parser.add_argument("--no-mlserver", action="store_true", help="leave MLServer out")
    parser.add_argument(
        "--quick", action="store_true",
        help="smoke run: 1 run of 1 s per case, 1 s warm-up, 1 attempt, no waiting for quiet (about 4 min)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=HERE / "results",
        help="output path without suffix (default benchmarks/serving/results; --quick: a temporary directory)",
    )
    args = parser.parse_args()
    args.concurrencies = CONCURRENCIES
    if args.quick:
        args.duration, args.warmup, args.runs, args.attempts, args.max_wait_quiet = 1, 1, 1, 1, 0
        if args.out == HERE / "results":  # a smoke run never overwrites the committed figures
            args.out = Path(tempfile.mkdtemp(prefix="slotkeeper-bench-quick-")) / "results"
    include = set(args.groups.split(","))

    # A SIGTERM (e.g. from `timeout`) must still stop the servers in `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ensure_tools()
    import sklearn
    import xgboost

    mlserver = None if args.no_mlserver else ensure_mlserver_venv(sklearn.__version__, xgboost.__version__)
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="slotkeeper-bench-"))
    runs: list[dict] = []
    failures: list[dict] = []
    try:
        groups = build_groups(root, train_models(root), mlserver, include)
        for group in groups:
            group_runs, group_failures = run_group(group, args, root)
            runs += group_runs
            failures += group_failures
    finally:
        shutil.rmtree(root, ignore_errors=True)
    checks = write_results(args.out.with_suffix(".json"), args.out.with_suffix(".md"), runs, failures,
                           {g.name: g.title for g in groups}, environment(), args, started)
    log("")
    log(args.out.with_suffix(".md").read_text())
    return 0 if all(line.endswith("MET") for line in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
