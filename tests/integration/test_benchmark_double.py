"""The operator benchmark's API double (benchmarks/operator/apidouble.py) answers as this harness does.

The double is the harness's ClusterEmulator with speed-ups; a speed-up that changed an answer
would make the benchmark's figures those of a laxer apiserver. check_double.py compares the
double's replacements of harness helpers directly, then sends the same requests (creates, 409s,
merge/JSON/strategic patches, server-side apply, /status and /scale, lists and watches, a watch
replayed from a resourceVersion after later writes, deletes) to both, each in a process of its
own (importing apidouble patches the harness module, so never in this one), and compares the
answers and watch events.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHECK = Path(__file__).resolve().parents[2] / "benchmarks" / "operator" / "check_double.py"


def test_the_double_answers_every_request_as_the_harness() -> None:
    done = subprocess.run([sys.executable, str(CHECK)], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "same answers: 41 requests and watches" in done.stdout
