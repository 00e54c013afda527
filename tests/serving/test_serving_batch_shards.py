"""Sharded batch runs (--shard-index/--shard-count, an Indexed Job's pods): the shards, run at once as
separate processes into one run directory, write exactly the part files of an unsharded run, and a
killed shard resumes on its own."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from slotkeeper_serving.batch.rundir import publish_once

from .test_serving_batch_mode import SERVE, cli_env, read_jsonl, run_cli, write_csv

SHARDS = 3


@pytest.fixture()
def inputs(tmp_path) -> Path:
    """Two CSV files (chunk ordinals go on across files: 14 chunks of 100 rows over both), with bad rows."""
    directory = tmp_path / "in"
    directory.mkdir()
    rng = np.random.default_rng(11)
    write_csv(directory / "a.csv", rng.standard_normal((650, 4)), bad_every=97)
    write_csv(directory / "b.csv", rng.standard_normal((630, 4)), bad_every=101)
    return directory


def common_args(inputs: Path, output: Path) -> list[str]:
    return ["--input", f"file://{inputs}", "--output", str(output), "--run-id", "r", "--chunk-rows", "100",
            "--max-failed-rows", "100"]


def start_shard(args: list[str], env: dict[str, str], index: int) -> subprocess.Popen:
    return subprocess.Popen([SERVE, "batch", *args, "--shard-index", str(index), "--shard-count", str(SHARDS)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> tuple[int, list[dict]]:
    out, _ = process.communicate(timeout=120)
    return process.returncode, [json.loads(line) for line in out.splitlines()]


def outputs(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.glob("*-*.jsonl")) if not p.name.startswith("_")}


def test_three_shards_at_once_write_exactly_the_unsharded_output(tmp_path, inputs, model_files):
    env = cli_env(model_files["logreg"], tmp_path / "cache")
    status, whole, _ = run_cli(common_args(inputs, tmp_path / "whole"), env)
    assert status == 0
    whole_dir, sharded_dir = tmp_path / "whole" / "r", tmp_path / "sharded" / "r"

    processes = [start_shard(common_args(inputs, tmp_path / "sharded"), env, i) for i in range(SHARDS)]
    results = [finish(p) for p in processes]
    assert [status for status, _ in results] == [0] * SHARDS

    # Shard i scored the chunks with ordinal i mod 3, counted over a.csv (7 chunks) then b.csv (7 chunks).
    ordinals = {("a.csv", c): c for c in range(7)} | {("b.csv", c): 7 + c for c in range(7)}
    for index, (_, events) in enumerate(results):
        chunks = [(e["file"], e["chunk"]) for e in events if e["event"] == "chunk"]
        assert chunks and all(ordinals[chunk] % SHARDS == index for chunk in chunks)
    assert sorted(c for _, events in results for c in ((e["file"], e["chunk"]) for e in events
                                                        if e["event"] == "chunk")) == sorted(ordinals)

    assert outputs(sharded_dir) == outputs(whole_dir)  # same names, byte for byte
    assert any(name.startswith("errors-") for name in outputs(whole_dir))
    assert (sharded_dir / "_RUN.json").read_bytes() == (whole_dir / "_RUN.json").read_bytes()
    assert not (sharded_dir / "_SUMMARY.json").exists()
    summaries = [json.loads((sharded_dir / f"_SUMMARY-{i}.json").read_text()) for i in range(SHARDS)]
    assert [s["shard"] for s in summaries] == list(range(SHARDS)) and {s["shards"] for s in summaries} == {SHARDS}
    assert [results[i][1][-1] for i in range(SHARDS)] == [{"event": "summary", **s} for s in summaries]
    for key in ("rows", "failedRows", "chunks"):
        assert sum(s[key] for s in summaries) == whole[-1][key]
    assert {s["revision"] for s in summaries} == {"rev1"}
    assert not list(sharded_dir.glob(".*"))


def test_a_killed_shard_resumes_alone(tmp_path, model_files):
    X = np.random.default_rng(7).standard_normal((60_000, 4))
    data = write_csv(tmp_path / "in.csv", X, bad_every=997)
    env = cli_env(model_files["logreg"], tmp_path / "cache")
    args = ["--input", str(data), "--chunk-rows", "200", "--max-failed-rows", "1000", "--run-id", "r"]
    status, whole, _ = run_cli([*args, "--output", str(tmp_path / "whole")], env)
    assert status == 0

    out = ["--output", str(tmp_path / "sharded")]
    victim = start_shard([*args, *out], env, 1)
    others = [start_shard([*args, *out], env, i) for i in (0, 2)]
    seen = [json.loads(victim.stdout.readline()) for _ in range(3)]
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    victim.stdout.close()
    victim.stderr.close()
    assert [e["chunk"] for e in seen] == [1, 4, 7]  # ordinals 1 mod 3
    assert [finish(p)[0] for p in others] == [0, 0]
    run_dir = tmp_path / "sharded" / "r"
    mine = {f"part-0-{c}.jsonl" for c in range(1, 300, SHARDS)}
    written = mine & {p.name for p in run_dir.glob("part-*.jsonl")}
    assert 3 <= len(written) < len(mine) and not (run_dir / "_SUMMARY-1.json").exists()

    status, resumed = finish(start_shard([*args, *out], env, 1))
    assert status == 0
    chunks = [e for e in resumed if e["event"] == "chunk"]
    assert [e["skipped"] for e in chunks] == [True] * len(written) + [False] * (len(mine) - len(written))
    assert resumed[-1]["skippedChunks"] == len(written)
    assert outputs(run_dir) == outputs(tmp_path / "whole" / "r")
    summaries = [json.loads((run_dir / f"_SUMMARY-{i}.json").read_text()) for i in range(SHARDS)]
    assert (sum(s["rows"] for s in summaries), sum(s["failedRows"] for s in summaries)) == (60_000, 60)
    assert not list(run_dir.glob(".*"))  # the killed shard's temporary files were overwritten and renamed


def test_the_shard_index_comes_from_the_job_controller(tmp_path, model_files):
    data = write_csv(tmp_path / "in.csv", np.random.default_rng(2).standard_normal((50, 4)))
    env = {**cli_env(model_files["logreg"], tmp_path / "cache"), "JOB_COMPLETION_INDEX": "1"}
    args = ["--input", str(data), "--output", str(tmp_path / "out"), "--run-id", "r", "--chunk-rows", "10"]
    status, events, _ = run_cli([*args, "--shard-count", "2"], env)
    assert status == 0
    assert [e["chunk"] for e in events if e["event"] == "chunk"] == [1, 3]
    assert (events[-1]["shard"], events[-1]["rows"]) == (1, 20)

    for extra, message in ((["--shard-count", "1"], "must be 0..0"), (["--shard-count", "0"], "must be >= 1"),
                           (["--shard-count", "2", "--shard-index", "2"], "must be 0..1")):
        status, _, stderr = run_cli([*args, *extra], env)
        assert status == 2 and message in stderr, (extra, stderr)


def test_the_run_manifest_is_published_once(tmp_path):
    path = tmp_path / "_RUN.json"
    assert publish_once(path, b"first") == b"first"
    assert publish_once(path, b"second") == b"first"  # a later writer reads the first one's, never overwrites
    assert path.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["_RUN.json"]


def test_without_hard_links_the_manifest_is_still_published_once(tmp_path, monkeypatch):
    def no_links(source, target):
        raise OSError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "_RUN.json"
    assert publish_once(path, b"first") == b"first"
    assert publish_once(path, b"second") == b"first"
    assert path.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["_RUN.json"]
