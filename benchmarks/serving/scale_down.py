#!/usr/bin/env python3
"""Failed requests while scaling 3 -> 1 under load: no shutdown delay against a delay longer than the lag.

    .venv/bin/python benchmarks/serving/scale_down.py [--runs 3] [--delays 0 0.5 3] [--lag 1]

Each run is one episode of tests/serving/scaledown.py (the harness the test
suite's test_serving_scale_down.py uses): three `slotkeeper-serve` processes
(the middle one with two workers) behind an in-process TCP round-robin
balancer that drops a backend from its pool `--lag` seconds after sending it
SIGTERM, as kube-proxy does once the endpoint removal has propagated; four
keep-alive and four new-connection-per-request clients run throughout; two
backends get SIGTERM at once. Runs alternate between the delays, so drift on
a shared machine hits all alike. Prints every run and a summary, and writes
scale_down.json next to this file.

Failures with no delay are a race and vary from run to run; that is why the
test suite asserts only the delayed case (0 failures).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from tests.serving.scaledown import scale_down, train_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="episodes per delay (default: 3)")
    parser.add_argument("--delays", type=float, nargs="+", default=[0.0, 0.5, 3.0], help="shutdown delays, seconds")
    parser.add_argument("--lag", type=float, default=1.0, help="balancer removal lag after SIGTERM (default: 1 s)")
    parser.add_argument("--output", type=Path, default=HERE / "scale_down.json")
    args = parser.parse_args()

    runs = []
    with tempfile.TemporaryDirectory(prefix="scale-down-") as tmp:
        root = Path(tmp)
        model = train_model(root / "model.joblib")
        for run in range(1, args.runs + 1):
            for delay in args.delays:
                started = time.monotonic()
                figures = scale_down(model, root / f"run{run}-delay{delay:g}", shutdown_delay=delay, lag=args.lag)
                figures["run"] = run
                runs.append(figures)
                print(
                    f"run {run} delay {delay:>4g} s: {figures['failed']:>4} failed of {figures['requests']:>5} "
                    f"{dict(figures['failures']) or ''} exits {figures['exit_codes']} "
                    f"refused {figures['refused']} ({time.monotonic() - started:.1f} s)",
                    flush=True,
                )

    summary = []
    for delay in args.delays:
        mine = [r for r in runs if r["shutdown_delay_s"] == delay]
        kinds: collections.Counter[str] = collections.Counter()
        for r in mine:
            kinds.update(r["failures"])
        requests = sum(r["requests"] for r in mine)
        failed = sum(r["failed"] for r in mine)
        summary.append(
            {
                "shutdown_delay_s": delay,
                "lag_s": args.lag,
                "runs": len(mine),
                "requests": requests,
                "failed": failed,
                "failed_per_run": [r["failed"] for r in mine],
                "failed_ratio": round(failed / requests, 5) if requests else None,
                "failure_kinds": dict(kinds),
                "all_exits_0": all(code == 0 for r in mine for code in r["exit_codes"].values()),
            }
        )
    print("\ndelay s  lag s  runs  requests  failed  per run            exits 0")
    for s in summary:
        print(
            f"{s['shutdown_delay_s']:>7g}  {s['lag_s']:>5g}  {s['runs']:>4}  {s['requests']:>8}  {s['failed']:>6}  "
            f"{str(s['failed_per_run']):<18} {s['all_exits_0']}"
        )

    import numpy
    import sklearn
    import uvicorn

    args.output.write_text(
        json.dumps(
            {
                "environment": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "uvicorn": uvicorn.__version__,
                    "numpy": numpy.__version__,
                    "scikit-learn": sklearn.__version__,
                    "load_average_at_end": os.getloadavg(),
                },
                "settings": {
                    "runs": args.runs,
                    "delays_s": args.delays,
                    "lag_s": args.lag,
                    "backends": "3 (workers 1, 2, 1), 2 removed at once",
                    "clients": "4 keep-alive + 4 new connection per request, httpx, in-process",
                },
                "summary": summary,
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {args.output.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
