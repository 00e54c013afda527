"""The in-cluster pieces of the batch scoring e2e test, as plain manifests: two claims (the model, the
data), a Job that trains a small model and writes a 1,000,000-row CSV with known bad rows onto them,
a pod that prints what a run left on the data claim, and a parser for the batch mode's log.

The data is made in the cluster (the serving image has numpy and scikit-learn), so nothing large is
copied in, and the model is a scikit-learn file: the batch mode scores row-wise models, not score.py
entry scripts.
"""

from __future__ import annotations

import json
from typing import Any

from .workloads import RESTRICTED_CONTAINER, RESTRICTED_POD

MODEL_CLAIM = "batch-models"
DATA_CLAIM = "batch-data"
ROWS = 1_000_000
BAD_EVERY = 100_000  # the first row of every 100,000 has "n/a" in f1: 10 bad rows, on known lines
SERVING_UID = 10001  # the serving image's user and group (its Dockerfile)

MAKE_DATA = r"""
import os, sys, numpy as np, joblib
from sklearn.linear_model import LogisticRegression
models, data, rows, bad_every = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(17)
X = rng.standard_normal((2000, 3))
joblib.dump(LogisticRegression().fit(X, (X @ [1.5, -2.0, 0.5] > 0).astype(int)), f"{models}/model.joblib")
os.makedirs(f"{data}/in", exist_ok=True)
with open(f"{data}/in/.rows.csv", "w") as out:
    out.write("id,f0,f1,f2\n")
    for start in range(0, rows, bad_every):
        block = rng.standard_normal((min(bad_every, rows - start), 3))
        lines = [f"r{start + i},{a:.6f},{b:.6f},{c:.6f}" for i, (a, b, c) in enumerate(block)]
        lines[0] = f"r{start},{block[0][0]:.6f},n/a,{block[0][2]:.6f}"
        out.write("\n".join(lines) + "\n")
os.replace(f"{data}/in/.rows.csv", f"{data}/in/rows.csv")
print("wrote", rows, "rows", flush=True)
"""

# Prints one JSON object: the run's _SUMMARY.json and its bad rows (every errors-*.jsonl line).
SHOW_RUN = r"""
import glob, json, sys
run = sys.argv[1]
errors = [json.loads(line) for path in sorted(glob.glob(f"{run}/errors-*.jsonl")) for line in open(path)]
parts = len(glob.glob(f"{run}/part-*.jsonl"))
print(json.dumps({"summary": json.load(open(f"{run}/_SUMMARY.json")), "errors": errors, "parts": parts}))
"""


def claim(name: str, size: str = "1Gi") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}}


def _pod_spec(image: str, args: list[str], mounts: list[tuple[str, str, bool]]) -> dict[str, Any]:
    """A restricted pod running python in the serving image with the claims mounted (claim, path, read-only)."""
    volumes = [{"name": c, "persistentVolumeClaim": {"claimName": c, "readOnly": ro}} for c, _, ro in mounts]
    volumes.append({"name": "tmp", "emptyDir": {}})
    return {
        "restartPolicy": "Never",
        "securityContext": {**RESTRICTED_POD, "runAsUser": SERVING_UID, "runAsGroup": SERVING_UID,
                            "fsGroup": SERVING_UID},
        "volumes": volumes,
        "containers": [{
            "name": "main", "image": image, "imagePullPolicy": "IfNotPresent", "command": ["python", "-c"],
            "args": args, "securityContext": RESTRICTED_CONTAINER,
            "volumeMounts": [{"name": c, "mountPath": path, "readOnly": ro} for c, path, ro in mounts]
            + [{"name": "tmp", "mountPath": "/tmp"}],
        }],
    }


def make_data_job(image: str, name: str = "make-data") -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": {"spec": _pod_spec(
                image, [MAKE_DATA, "/models", "/data", str(ROWS), str(BAD_EVERY)],
                [(MODEL_CLAIM, "/models", False), (DATA_CLAIM, "/data", False)])}}}


def show_run_pod(image: str, run_dir: str, name: str = "show-run") -> dict[str, Any]:
    """`run_dir` is the run's directory under the data claim's mount at /data."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": _pod_spec(image, [SHOW_RUN, run_dir], [(DATA_CLAIM, "/data", True)])}


def bad_lines(rows: int = ROWS, every: int = BAD_EVERY) -> list[int]:
    """The file lines (the header is line 1) of the bad rows MAKE_DATA writes."""
    return [start + 2 for start in range(0, rows, every)]


def batch_events(log: str) -> list[dict[str, Any]]:
    """The batch mode's progress and summary lines from a pod log (stderr's log lines interleave)."""
    events = []
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") in ("chunk", "summary"):
            events.append(event)
    return events
