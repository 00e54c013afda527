#!/usr/bin/env python3
"""Batch mode against the online route, same rows, side by side in one run.

    /work/main/.venv/bin/python benchmarks/serving/batch.py [--rows 1000000] [--duration 5]

For a LogisticRegression (linear: the verified fast path) and a
RandomForestClassifier (a tree ensemble), on a generated CSV of --rows rows
x 8 features (in a temporary directory, never committed):

  batch          `slotkeeper-serve batch` over the whole file, end to end:
                 process start to exit, model load and output writing included
  online x1      the online server (`slotkeeper-serve`, defaults), one POST per row,
                 wrk with 8 connections cycling through the first --sample rows
                 for --duration seconds; rows/s extrapolated to the whole file
  online x1000   the same with POSTs of 1,000 rows each (the sample in 1,000-row bodies)

The scorer (batch process or server) is pinned to CPU 0, wrk to CPU 1.
Rows/s are wall-clock; rows per CPU second of the scorer process are
reported too, since the machine is shared and wall-clock figures move with
its load. Writes batch_results.json and batch_results.md next to this file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SCORER_CPU, LOAD_CPU = "0", "1"
FEATURES = 8
BATCH_ROWS_PER_REQUEST = 1000


def log(message: str) -> None:
    print(message, flush=True)


def serve_command() -> str:
    return str(Path(sys.executable).parent / "slotkeeper-serve")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def machine_busy_cpu() -> float:
    """CPU seconds used on all CPUs since boot (user + nice + system + irq + softirq)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / os.sysconf("SC_CLK_TCK")


class Load:
    """How busy the machine was while something was measured: CPUs' worth in use, load average."""

    def __enter__(self) -> Load:
        self.cpu, self.wall = machine_busy_cpu(), time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        self.cpus_busy = (machine_busy_cpu() - self.cpu) / (time.monotonic() - self.wall)
        self.loadavg = os.getloadavg()[0]

    def as_dict(self) -> dict:
        return {"machine_cpus_busy": round(self.cpus_busy, 2), "loadavg_1m_after": round(self.loadavg, 2)}


def make_data(root: Path, rows: int) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(2026)
    path = root / "scores.csv"
    with open(path, "w") as out:
        out.write("id," + ",".join(f"f{j}" for j in range(FEATURES)) + "\n")
        for start in range(0, rows, 100_000):
            block = rng.standard_normal((min(100_000, rows - start), FEATURES))
            out.write("".join(f"c{start + i}," + ",".join(f"{v:.6f}" for v in row) + "\n"
                              for i, row in enumerate(block)))
    sample = np.loadtxt(path, delimiter=",", skiprows=1, usecols=range(1, FEATURES + 1), max_rows=100_000)
    return path, sample


def make_models(root: Path) -> dict[str, Path]:
    import joblib
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    X = rng.standard_normal((20_000, FEATURES))
    y = (X[:, 0] - 0.5 * X[:, 3] + 0.3 * X[:, 5] * X[:, 6] > 0).astype(int)
    models = {
        "logistic-regression": LogisticRegression().fit(X, y),
        "random-forest": RandomForestClassifier(n_estimators=50, max_depth=10, random_state=0).fit(X, y),
    }
    paths = {}
    for name, model in models.items():
        paths[name] = root / f"{name}.joblib"
        joblib.dump(model, paths[name])
    return paths


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLOTKEEPER_")}
    env.update(extra)
    return env


def run_batch(model: Path, data: Path, root: Path, rows: int) -> dict:
    output = root / f"out-{model.stem}"
    command = ["taskset", "-c", SCORER_CPU, serve_command(), "batch", "--input", str(data), "--output", str(output),
               "--run-id", "bench", "--termination-log", ""]
    env = clean_env(SLOTKEEPER_MODEL_URI=str(model), SLOTKEEPER_MODEL_VERSION="bench",
                    SLOTKEEPER_CACHE_DIR=str(root / "cache"))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with Load() as load:
        started = time.monotonic()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"batch run failed ({done.returncode}):\n{done.stderr[-2000:]}")
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["rows"] == rows and summary["failedRows"] == 0, summary
    how = "one call per chunk" if "one call per chunk" in done.stderr else "one call per row"
    return {"rows": rows, "seconds_end_to_end": round(wall, 3), "seconds_in_run": summary["seconds"],
            "rows_per_s": round(rows / wall), "scorer_cpu_seconds": round(cpu, 3),
            "rows_per_cpu_s": round(rows / cpu), "scoring": how, **load.as_dict()}


def start_server(model: Path, root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = clean_env(SLOTKEEPER_MODEL_URI=str(model), SLOTKEEPER_MODEL_NAME="bench", SLOTKEEPER_HOST="127.0.0.1",
                    SLOTKEEPER_PORT=str(port), SLOTKEEPER_CACHE_DIR=str(root / "cache"),
                    SLOTKEEPER_SHUTDOWN_DELAY_SECONDS="0", SLOTKEEPER_LOG_LEVEL="warning")
    process = subprocess.Popen(["taskset", "-c", SCORER_CPU, serve_command()], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/v2/health/ready", timeout=1) as response:
                if response.status == 200:
                    return process, base + "/v2/models/bench/infer"
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the online server did not become ready")


def write_bodies(path: Path, sample: np.ndarray, rows_per_request: int) -> Path:
    with open(path, "w") as out:
        for start in range(0, len(sample), rows_per_request):
            rows = sample[start : start + rows_per_request]
            body = {"inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP64",
                                "data": rows.tolist()}]}
            out.write(json.dumps(body, separators=(",", ":")) + "\n")
    return path


def run_wrk(url: str, bodies: Path, duration: int, connections: int = 8) -> dict:
    command = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "30s",
               "-s", str(HERE / "batch_post.lua"), url, "--", str(bodies)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    line = next(line for line in done.stdout.splitlines() if line.startswith("WRK_RESULT "))
    result = json.loads(line.removeprefix("WRK_RESULT "))
    if result["non_2xx"] or result["socket_errors"]:
        raise SystemExit(f"wrk saw errors: {result}")
    return result


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def measure_online(server: subprocess.Popen, url: str, bodies: Path, rows_per_request: int, duration: int,
                   total_rows: int) -> dict:
    run_wrk(url, bodies, 1)  # warm-up
    cpu = process_cpu_seconds(server.pid)
    with Load() as load:
        result = run_wrk(url, bodies, duration)
    cpu = process_cpu_seconds(server.pid) - cpu
    seconds = result["duration_us"] / 1e6
    rows = result["requests"] * rows_per_request
    rate = rows / seconds
    return {"rows_per_request": rows_per_request, "requests": result["requests"], "seconds": round(seconds, 3),
            "rows_per_s": round(rate), "scorer_cpu_seconds": round(cpu, 3), "rows_per_cpu_s": round(rows / cpu),
            "p50_ms": result["p50_us"] / 1000, "p99_ms": result["p99_us"] / 1000,
            "extrapolated_seconds_for_all_rows": round(total_rows / rate, 1), **load.as_dict()}


def machine() -> dict:
    import sklearn

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(), "scikit_learn": sklearn.__version__}


def write_report(results: dict) -> None:
    (HERE / "batch_results.json").write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    lines = [
        "# Batch mode vs the online route",
        "",
        f"Generated by `{results['command']}` on {results['date']}: {m['cpu']}, {m['cpus']} CPUs, Python {m['python']}, "
        f"scikit-learn {m['scikit_learn']}.",
        f"{results['rows']:,} rows x {FEATURES} features in one CSV. The scorer (batch process or online server, "
        "defaults) pinned to CPU 0, wrk (1 thread, 8 connections) to CPU 1. Batch figures are end to end "
        "(process start to exit: imports, model load, verification, reading, writing, fsync per chunk). "
        f"Online figures are measured over {results['duration']} s cycling through the first {results['sample']:,} "
        "rows and extrapolated to the whole file (labelled). \"machine CPUs busy\" is what the whole 2-CPU machine "
        "used meanwhile (other helpers' work included); the machine is shared, so absolute figures move with its load. "
        "\"rows per scorer CPU s\" divides by the CPU time of the batch process or the server process alone, which "
        "moves less with the load. wrk sends prepared bodies: a real client's cost of reading the CSV and encoding "
        "JSON is not counted for the online rows, so they are upper bounds.",
        "",
        "| model | mode | rows/s | seconds for all rows | batch is ... x faster | rows per scorer CPU s | "
        "batch per CPU s | machine CPUs busy | load avg |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results["models"].items():
        batch = r["batch"]
        lines.append(f"| {name} | batch ({batch['scoring']}) | {batch['rows_per_s']:,} | "
                     f"{batch['seconds_end_to_end']} (measured) | - | {batch['rows_per_cpu_s']:,} | - | "
                     f"{batch['machine_cpus_busy']} | {batch['loadavg_1m_after']} |")
        for mode in ("online_one_row", "online_1000_rows"):
            o = r[mode]
            label = "online, 1 row per POST" if o["rows_per_request"] == 1 else "online, 1,000 rows per POST"
            lines.append(f"| {name} | {label} | {o['rows_per_s']:,} | {o['extrapolated_seconds_for_all_rows']} "
                         f"(extrapolated) | {batch['rows_per_s'] / o['rows_per_s']:.1f}x | {o['rows_per_cpu_s']:,} | "
                         f"{batch['rows_per_cpu_s'] / o['rows_per_cpu_s']:.1f}x | {o['machine_cpus_busy']} | "
                         f"{o['loadavg_1m_after']} |")
    lines += ["", "Goal (issue 17): batch mode at least 10x the rows/s of one POST per row:", ""]
    for name, r in results["models"].items():
        ratio = r["batch"]["rows_per_s"] / r["online_one_row"]["rows_per_s"]
        per_cpu = r["batch"]["rows_per_cpu_s"] / r["online_one_row"]["rows_per_cpu_s"]
        lines.append(f"- {name}: {ratio:.1f}x in rows/s ({per_cpu:.1f}x per scorer CPU second): "
                     f"{'MET' if min(ratio, per_cpu) >= 10 else 'NOT MET'}")
    lines.append("")
    (HERE / "batch_results.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=20_000, help="rows posted to the online route (cycled)")
    parser.add_argument("--duration", type=int, default=5, help="seconds of each online measurement")
    args = parser.parse_args()
    results = {"command": "python benchmarks/serving/batch.py " + " ".join(sys.argv[1:]),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
               "rows": args.rows, "sample": args.sample, "duration": args.duration, "models": {}}
    with tempfile.TemporaryDirectory(prefix="slotkeeper-batch-bench-") as tmp:
        root = Path(tmp)
        log(f"generating {args.rows:,} rows ...")
        data, sample = make_data(root, args.rows)
        sample = sample[: args.sample]
        one = write_bodies(root / "one-row.jsonl", sample, 1)
        many = write_bodies(root / "1000-rows.jsonl", sample, BATCH_ROWS_PER_REQUEST)
        for name, model in make_models(root).items():
            log(f"{name}: batch mode over {args.rows:,} rows ...")
            entry = {"batch": run_batch(model, data, root, args.rows)}
            log(f"  {entry['batch']}")
            server, url = start_server(model, root)
            try:
                for key, bodies, per_request in (("online_one_row", one, 1),
                                                 ("online_1000_rows", many, BATCH_ROWS_PER_REQUEST)):
                    log(f"{name}: {key} ...")
                    entry[key] = measure_online(server, url, bodies, per_request, args.duration, args.rows)
                    log(f"  {entry[key]}")
            finally:
                server.terminate()
                server.wait(timeout=30)
            results["models"][name] = entry
    write_report(results)
    log((HERE / "batch_results.md").read_text())


if __name__ == "__main__":
    main()
