"""How long a fail-over takes: two `slotkeeper run --leader-elect` processes against the API double
(tests/integration/kmock_cluster.served_double), the leader stopped, the time until the follower
holds the Lease (read from the double every 50 ms) and until it has started kopf (its log says so).

    .venv/bin/python benchmarks/leader/failover.py [--runs 3] [--lease 15 --renew 10 --retry 2]

Stops: SIGKILL (no release: the follower waits a lease duration from its last sighting of a
renewal) and SIGTERM (released: the follower takes it at its next read). Prints a Markdown table row
per stop; RESULTS.md holds the figures."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from kmock_cluster import served_double  # noqa: E402

SCRIPT = shutil.which("slotkeeper") or str(Path(sys.executable).with_name("slotkeeper"))


def holder(served) -> str:
    def read():
        for (resource, namespace, name), stored in served.emulator.objects.items():
            if resource.plural == "leases" and name == "slotkeeper-operator" and not stored.deleted:
                return (stored.raw.get("spec") or {}).get("holderIdentity") or ""
        return ""
    return served.call(read)


def wait(predicate, timeout: float = 120.0) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError
        time.sleep(0.05)
    return time.monotonic()


def one_run(served, directory: Path, stop: signal.Signals, timing: list[str]) -> tuple[float, float]:
    def start(name: str) -> tuple[subprocess.Popen, Path]:
        log = directory / f"{name}-{stop.name}-{time.monotonic_ns()}.log"
        process = subprocess.Popen([SCRIPT, "run", "--namespace", "default", "--leader-elect", "--lease-namespace",
                                    "default", *timing, "--kubeconfig", str(served.kubeconfig)],
                                   stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, "POD_NAME": name})
        return process, log

    a, _ = start("a")
    wait(lambda: holder(served).startswith("a_"))
    b, b_log = start("b")
    wait(lambda: "following the leader a_" in b_log.read_text())
    time.sleep(3)  # a few renewals seen by b
    stopped = time.monotonic()
    a.send_signal(stop)
    a.wait(60)
    leads = wait(lambda: holder(served).startswith("b_")) - stopped
    operating = wait(lambda: "Initial authentication has finished" in b_log.read_text()) - stopped
    b.send_signal(signal.SIGTERM)
    b.wait(60)
    wait(lambda: holder(served) == "")  # released: the next run starts from a free Lease
    return leads, operating


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lease", default="15")
    parser.add_argument("--renew", default="10")
    parser.add_argument("--retry", default="2")
    options = parser.parse_args()
    timing = ["--lease-duration", options.lease, "--renew-deadline", options.renew, "--retry-period", options.retry]
    with tempfile.TemporaryDirectory() as directory, served_double(directory) as served:
        print(f"| stop | lease/renew/retry (s) | runs | Lease taken after (s) min / median / max "
              f"| kopf started after (s) median |")
        print("| --- | --- | --- | --- | --- |")
        for stop in (signal.SIGKILL, signal.SIGTERM):
            results = [one_run(served, Path(directory), stop, timing) for _ in range(options.runs)]
            taken = [r[0] for r in results]
            print(f"| {stop.name} | {options.lease}/{options.renew}/{options.retry} | {options.runs} | "
                  f"{min(taken):.2f} / {statistics.median(taken):.2f} / {max(taken):.2f} | "
                  f"{statistics.median(r[1] for r in results):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
