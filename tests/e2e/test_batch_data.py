"""The e2e batch test's in-cluster scripts, run here on a small scale (no cluster needed): the data
they write is scored by the batch mode with the bad rows where the e2e test expects them, and the
run they show and the log they parse are what the e2e test reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .batch_data import MAKE_DATA, SHOW_RUN, bad_lines, batch_events

SERVE = str(Path(sys.executable).parent / "slotkeeper-serve")


def test_the_made_data_scores_with_the_bad_rows_the_e2e_test_expects(tmp_path):
    subprocess.run([sys.executable, "-c", MAKE_DATA, str(tmp_path), str(tmp_path), "3000", "1000"], check=True,
                   timeout=120)
    assert not list((tmp_path / "in").glob(".*"))  # written under a temporary name, then renamed
    env = {"PATH": str(Path(sys.executable).parent), "SLOTKEEPER_MODEL_URI": str(tmp_path / "model.joblib"),
           "SLOTKEEPER_MODEL_VERSION": "rev-e2e", "SLOTKEEPER_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([SERVE, "batch", "--input", f"file://{tmp_path}/in", "--output", f"file://{tmp_path}/out",
                           "--run-id", "run", "--chunk-rows", "500", "--max-failed-rows", "100"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    events = batch_events(done.stderr + "\n" + done.stdout + "\nnot json\n{\"event\": \"other\"}\n")
    assert [e["event"] for e in events] == ["chunk"] * 6 + ["summary"]
    assert (events[-1]["rows"], events[-1]["failedRows"], events[-1]["revision"]) == (3000, 3, "rev-e2e")

    shown = subprocess.run([sys.executable, "-c", SHOW_RUN, str(tmp_path / "out" / "run")], check=True,
                           capture_output=True, text=True, timeout=60)
    run = json.loads(shown.stdout)
    assert run["summary"] == {k: v for k, v in events[-1].items() if k != "event"} and run["parts"] == 6
    assert [(e["file"], e["line"]) for e in run["errors"]] == [("rows.csv", line) for line in bad_lines(3000, 1000)]
    assert bad_lines(3000, 1000) == [2, 1002, 2002]
