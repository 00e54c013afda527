"""`slotkeeper-serve batch` over real files: chunks, resume after SIGKILL, bad rows, thresholds, online parity.

Runs go through the installed console script where the process boundary
matters (exit status, termination log, kill -9), else through run_batch in
this process with the real model loader.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest

from slotkeeper_serving.batch.outcome import FailedRowLimits
from slotkeeper_serving.batch.runner import BatchJob, run_batch
from slotkeeper_serving.batch.scoring import ChunkScorer
from slotkeeper_serving.config import Settings
from slotkeeper_serving.models import SklearnModel, load_model

SERVE = str(Path(sys.executable).parent / "slotkeeper-serve")


def write_csv(path: Path, X: np.ndarray, *, bad_every: int = 0) -> Path:
    """id,f0..fn rows keyed r<i>; every bad_every-th row gets a non-number (so it must be reported)."""
    lines = ["id," + ",".join(f"f{j}" for j in range(X.shape[1]))]
    for i, row in enumerate(X):
        values = [repr(float(v)) for v in row]
        if bad_every and i % bad_every == bad_every - 1:
            values[1] = "n/a"
        lines.append(f"r{i}," + ",".join(values))
    path.write_text("\n".join(lines) + "\n")
    return path


def cli_env(model: Path, cache: Path, version: str = "rev1") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLOTKEEPER_")}
    env.update(SLOTKEEPER_MODEL_URI=str(model), SLOTKEEPER_MODEL_VERSION=version, SLOTKEEPER_CACHE_DIR=str(cache))
    return env


def run_cli(args: list[str], env: dict[str, str]) -> tuple[int, list[dict], str]:
    done = subprocess.run([SERVE, "batch", *args], env=env, capture_output=True, text=True, timeout=120)
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()], done.stderr


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def predictions(run_dir: Path) -> dict:
    """key -> prediction over every part file of a run."""
    return {row["key"]: row["prediction"] for part in sorted(run_dir.glob("part-*.jsonl")) for row in read_jsonl(part)}


def run_in_process(tmp_path: Path, model_uri, input_uri: str, **job) -> tuple[dict, list[dict], Path]:
    events: list[dict] = []
    settings = Settings(model_uri=str(model_uri), model_version="rev1", cache_dir=tmp_path / "cache")
    loader = job.pop("loader", None)
    kwargs = {"loader": loader} if loader else {}
    spec = BatchJob(input=input_uri, output=str(tmp_path / "out"), run_id="run", **job)
    summary = run_batch(spec, settings, emit=events.append, **kwargs)
    return summary, events, tmp_path / "out" / "run"


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((25, 4))


def test_batch_scores_a_csv_in_chunks_and_records_the_revision(tmp_path, model_files, trained, features):
    data = write_csv(tmp_path / "in.csv", features)
    termination = tmp_path / "termination-log"
    status, events, stderr = run_cli(
        ["--input", f"file://{data}", "--output", f"file://{tmp_path}/out", "--run-id", "nightly-1",
         "--chunk-rows", "10", "--termination-log", str(termination)],
        cli_env(model_files["logreg"], tmp_path / "cache"),
    )
    assert status == 0
    assert "batch mode: one call per chunk" in stderr  # a classifier's labels are verified row-independent
    assert [(e["chunk"], e["rows"], e["skipped"]) for e in events[:-1]] == [(0, 10, False), (1, 10, False), (2, 5, False)]
    run_dir = tmp_path / "out" / "nightly-1"
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "_RUN.json", "_SUMMARY.json", "part-0-0.jsonl", "part-0-1.jsonl", "part-0-2.jsonl"]
    expected = trained("logreg").predict(features).tolist()
    assert predictions(run_dir) == {f"r{i}": p for i, p in enumerate(expected)}
    summary = json.loads((run_dir / "_SUMMARY.json").read_text())
    assert events[-1] == {"event": "summary", **summary}
    assert {k: summary[k] for k in ("runId", "revision", "rows", "failedRows", "outcome")} == {
        "runId": "nightly-1", "revision": "rev1", "rows": 25, "failedRows": 0, "outcome": "Succeeded"}
    assert json.loads((run_dir / "_RUN.json").read_text())["revision"] == "rev1"
    message = termination.read_bytes()
    assert json.loads(message) == summary and len(message) < 4096


def test_bad_rows_are_reported_and_the_threshold_fails_the_run(tmp_path, model_files, features):
    data = write_csv(tmp_path / "in.csv", features, bad_every=5)  # rows 4, 9, 14, 19, 24: 5 of 25
    env = cli_env(model_files["logreg"], tmp_path / "cache")
    common = ["--input", str(data), "--output", str(tmp_path / "out"), "--chunk-rows", "10"]
    status, events, _ = run_cli([*common, "--run-id", "strict"], env)  # default: at most 1 % may fail
    assert status == 1
    assert events[-1]["outcome"] == "Failed" and events[-1]["failedRows"] == 5
    assert "5 of 25 rows failed" in events[-1]["reason"]
    errors = [row for path in sorted((tmp_path / "out" / "strict").glob("errors-*.jsonl")) for row in read_jsonl(path)]
    assert errors == [{"file": "in.csv", "line": i + 2, "reason": "column 'f1': not a number: 'n/a'"}
                      for i in (4, 9, 14, 19, 24)]
    assert len(predictions(tmp_path / "out" / "strict")) == 20  # every good row still scored

    status, events, _ = run_cli([*common, "--run-id", "lenient", "--max-failed-rows", "5"], env)
    assert (status, events[-1]["outcome"], events[-1]["failedRows"]) == (0, "Succeeded", 5)

    status, events, _ = run_cli([*common, "--run-id", "early", "--max-failed-rows", "1"], env)
    assert status == 1
    assert events[-1]["reason"] == "2 failed rows exceed the limit of 1"
    assert [e["chunk"] for e in events if e["event"] == "chunk"] == [0]  # rows 4 and 9: stopped after chunk 0


def test_resume_after_sigkill_skips_written_chunks_and_matches_an_uninterrupted_run(tmp_path, model_files):
    X = np.random.default_rng(5).standard_normal((40_000, 4))
    data = write_csv(tmp_path / "in.csv", X, bad_every=997)
    env = cli_env(model_files["logreg"], tmp_path / "cache")
    common = ["--input", str(data), "--chunk-rows", "200", "--max-failed-rows", "1000"]
    status, whole, _ = run_cli([*common, "--output", str(tmp_path / "whole"), "--run-id", "r"], env)
    assert status == 0

    killed_dir = tmp_path / "killed" / "r"
    process = subprocess.Popen([SERVE, "batch", *common, "--output", str(tmp_path / "killed"), "--run-id", "r"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    seen = [json.loads(process.stdout.readline()) for _ in range(3)]
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    process.stdout.close()
    assert [e["chunk"] for e in seen] == [0, 1, 2]
    written = len(list(killed_dir.glob("part-*.jsonl")))
    assert 3 <= written < 200 and not (killed_dir / "_SUMMARY.json").exists()

    status, resumed, _ = run_cli([*common, "--output", str(tmp_path / "killed"), "--run-id", "r"], env)
    assert status == 0
    chunk_events = [e for e in resumed if e["event"] == "chunk"]
    assert [e["skipped"] for e in chunk_events] == [True] * written + [False] * (200 - written)
    assert resumed[-1]["skippedChunks"] == written
    for key in ("rows", "failedRows", "outcome"):
        assert resumed[-1][key] == whole[-1][key]
    assert (resumed[-1]["rows"], resumed[-1]["failedRows"]) == (40_000, 40)
    whole_dir = tmp_path / "whole" / "r"
    names = sorted(p.name for p in whole_dir.glob("*-*.jsonl"))
    assert names == sorted(p.name for p in killed_dir.glob("*-*.jsonl"))
    assert not list(killed_dir.glob(".*"))  # no temporary file left behind
    for name in names:
        assert (killed_dir / name).read_bytes() == (whole_dir / name).read_bytes(), name


def test_resume_with_another_revision_is_refused(tmp_path, model_files, features):
    data = write_csv(tmp_path / "in.csv", features)
    args = ["--input", str(data), "--output", str(tmp_path / "out"), "--run-id", "pinned"]
    assert run_cli(args, cli_env(model_files["logreg"], tmp_path / "cache", "rev1"))[0] == 0
    status, events, _ = run_cli(args, cli_env(model_files["logreg"], tmp_path / "cache", "rev2"))
    assert status == 1
    assert "revision: 'rev1' then, 'rev2' now" in events[-1]["reason"]
    summary = json.loads((tmp_path / "out" / "pinned" / "_SUMMARY.json").read_text())
    assert (summary["revision"], summary["outcome"]) == ("rev1", "Succeeded")  # the first run's record stands


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input", "pvc://claim/in.csv", "--output", "/tmp/x"], "resolved by the operator"),
        (["--input", "in.csv", "--output", "/tmp/x", "--chunk-rows", "0"], "--chunk-rows must be >= 1"),
        (["--output", "/tmp/x"], "--input"),
    ],
)
def test_usage_errors_exit_2(tmp_path, model_files, args, message):
    status, _, stderr = run_cli(args, cli_env(model_files["logreg"], tmp_path / "cache"))
    assert status == 2 and message in stderr


def test_unreadable_input_and_score_py_models_fail_the_run(tmp_path, model_files, score_py_dirs, features):
    summary, _, _ = run_in_process(tmp_path / "a", model_files["logreg"], str(tmp_path / "missing.csv"))
    assert summary["outcome"] == "Failed" and "does not exist" in summary["reason"]
    data = write_csv(tmp_path / "in.csv", features)
    summary, _, _ = run_in_process(tmp_path / "b", score_py_dirs["azureml"], str(data))
    assert summary["outcome"] == "Failed" and "vectorised predict" in summary["reason"]


def test_directory_input_scores_csv_and_jsonl_files_in_name_order(tmp_path, model_files, trained, features):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_csv(inputs / "a.csv", features[:10])
    (inputs / "b.jsonl").write_text("".join(
        json.dumps({"id": f"j{i}", **{f"f{j}": float(v) for j, v in enumerate(row)}}) + "\n"
        for i, row in enumerate(features[10:])))
    summary, events, run_dir = run_in_process(tmp_path, model_files["logreg"], f"file://{inputs}", chunk_rows=8)
    assert (summary["outcome"], summary["rows"], summary["files"]) == ("Succeeded", 25, 2)
    assert [(e["file"], e["chunk"]) for e in events] == [("a.csv", 0), ("a.csv", 1), ("b.jsonl", 0), ("b.jsonl", 1)]
    assert sorted(p.name for p in run_dir.glob("part-*")) == [
        "part-0-0.jsonl", "part-0-1.jsonl", "part-1-0.jsonl", "part-1-1.jsonl"]
    expected = trained("logreg").predict(features).tolist()
    keys = [f"r{i}" for i in range(10)] + [f"j{i}" for i in range(15)]
    assert predictions(run_dir) == dict(zip(keys, expected))


def test_http_input_is_streamed(tmp_path, model_files, trained, static_http, features):
    base, root = static_http
    write_csv(root / "batch-input.csv", features)
    summary, _, run_dir = run_in_process(tmp_path, model_files["tree"], f"{base}/batch-input.csv", chunk_rows=7)
    assert (summary["outcome"], summary["rows"], summary["chunks"]) == ("Succeeded", 25, 4)
    expected = trained("tree").predict(features).tolist()
    assert predictions(run_dir) == {f"r{i}": p for i, p in enumerate(expected)}


class RefusesAValue:
    """An estimator that refuses rows holding 12345 (never in the probe rows), like a validating model."""

    n_features_in_ = 2

    def predict(self, X):
        if (X == 12345).any():
            raise ValueError("12345 is out of range")
        return X.sum(axis=1)


def test_a_row_the_model_refuses_fails_alone(tmp_path):
    data = tmp_path / "in.csv"
    data.write_text("id,a,b\nk1,1,2\nk2,12345,0\nk3,3,4\n")
    summary, _, run_dir = run_in_process(
        tmp_path, "unused", str(data), loader=lambda settings: SklearnModel(RefusesAValue()),
        limits=FailedRowLimits.from_flags(1, None))
    assert (summary["outcome"], summary["rows"], summary["failedRows"]) == ("Succeeded", 3, 1)
    assert predictions(run_dir) == {"k1": 3.0, "k3": 7.0}
    assert read_jsonl(run_dir / "errors-0-0.jsonl") == [
        {"file": "in.csv", "line": 3, "reason": "the model rejected the input: ValueError: 12345 is out of range"}]


@pytest.fixture(scope="module")
def xgboost_file(tmp_path_factory) -> Path:
    import xgboost as xgb

    rng = np.random.default_rng(11)
    X = rng.standard_normal((200, 4))
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3},
                        xgb.DMatrix(X, label=(X[:, 0] + X[:, 3] > 0).astype(int)), 10)
    path = tmp_path_factory.mktemp("xgb") / "model.json"
    booster.save_model(path)
    return path


@pytest.mark.parametrize("model", ["logreg", "linreg", "pipeline", "tree", "xgboost"])
def test_batch_answers_equal_the_online_route(tmp_path, start_server, model_files, xgboost_file, model, features):
    uri = xgboost_file if model == "xgboost" else model_files[model]
    _, _, run_dir = run_in_process(tmp_path, uri, str(write_csv(tmp_path / "in.csv", features)), chunk_rows=10)
    batch = predictions(run_dir)
    server = start_server(uri, model_name=f"parity-{model}")

    def online(rows: np.ndarray) -> list:
        body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": list(rows.shape), "data": rows.tolist()}]}
        response = server.client.post(server.infer_url(), json=body)
        assert response.status_code == 200, response.text
        return response.json()["outputs"][0]["data"]

    one_per_row = [online(features[i : i + 1])[0] for i in range(len(features))]
    assert [batch[f"r{i}"] for i in range(len(features))] == one_per_row
    if ChunkScorer(load_model(Settings(model_uri=str(uri), cache_dir=tmp_path / "c"))).rows_together:
        # Verified row-independent (one call per chunk): one request for all rows answers the same.
        assert one_per_row == online(features)


@pytest.mark.filterwarnings("ignore:X does not have valid feature names")  # the batch mode predicts on arrays
def test_columns_are_picked_by_the_models_feature_names(tmp_path, training_data):
    from sklearn.linear_model import LogisticRegression

    X, y = training_data
    estimator = LogisticRegression().fit(X[:, :3], y)
    estimator.feature_names_in_ = np.array(["c", "a", "b"], dtype=object)  # as if fitted on a DataFrame
    data = tmp_path / "in.csv"
    # Another order and an extra column: without the names the width (4) would not fit the model (3).
    data.write_text("id,a,b,extra,c\n" + "".join(
        f"k{i},{float(row[1])!r},{float(row[2])!r},99,{float(row[0])!r}\n" for i, row in enumerate(X[:, :3])))
    summary, _, run_dir = run_in_process(tmp_path, "unused", str(data), loader=lambda s: SklearnModel(estimator))
    assert (summary["outcome"], summary["rows"]) == ("Succeeded", len(X))
    with pytest.warns(UserWarning, match="feature names"):
        expected = estimator.predict(X[:, :3]).tolist()
    assert predictions(run_dir) == {f"k{i}": p for i, p in enumerate(expected)}
