"""The output of one run, under <output>/<run-id>/, laid out so a restarted run resumes.

- part-<file>-<chunk>.jsonl: {"key", "prediction"} per scored row of a chunk.
  It is written under a temporary name, flushed to disk and renamed, after
  the chunk's errors-<file>-<chunk>.jsonl ({"file", "line", "reason"} per bad
  row, only if there are any): an existing part file means a finished chunk,
  which a restarted run skips (counting its lines instead).
- _RUN.json: what the run was started with (revision, model, inputs, chunk
  size, key column). A restart with anything else would mix models or shift
  chunk boundaries, so it is refused. It is the same for every shard of a
  sharded run (the shard count is not in it: which shard scores a chunk does
  not change the chunk), and shards start at once, so it is published with
  a link: the first writer wins, the others compare.
- _SUMMARY.json (a sharded run: _SUMMARY-<shard>.json per shard): written
  last, the summary of the run (or of the shard).

Temporary files are named after the file they become, and a chunk belongs to
one shard, so shards never write the same temporary file; a killed writer's
leftover is overwritten when its chunk is scored again (every unfinished
chunk is). Only an unsharded run sweeps leftovers at the start: a shard
would sweep away a running neighbour's.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path
from typing import Any

import orjson

MANIFEST = "_RUN.json"
SUMMARY = "_SUMMARY.json"
_TEMPORARY = ".tmp"
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK}


class RunMismatch(Exception):
    """The run id names a run started with other settings."""


def check_run_id(run_id: str) -> str:
    if not run_id or run_id in (".", "..") or "/" in run_id or any(ord(c) < 32 for c in run_id):
        raise ValueError(f"run id must be one path segment, got {run_id!r}")
    return run_id


def _temporary(path: Path, tag: str = "") -> Path:
    return path.with_name(f".{path.name}{tag}{_TEMPORARY}")


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())  # the rename must never publish a part the disk does not hold


def write_atomically(path: Path, data: bytes) -> None:
    temporary = _temporary(path)
    _write_synced(temporary, data)
    os.replace(temporary, path)


def publish_once(path: Path, data: bytes) -> bytes:
    """Write `path` unless it exists; the content it holds afterwards (ours, or an earlier writer's).

    A link, unlike a rename, fails on an existing name, so of shards starting
    together exactly one publishes and none sees a half-written file."""
    # Not the pid: every shard is PID 1 of its own container, on one shared volume.
    temporary = _temporary(path, f".{secrets.token_hex(8)}")
    _write_synced(temporary, data)
    try:
        try:
            os.link(temporary, path)
        except FileExistsError:
            return path.read_bytes()
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            # A volume without hard links (some network file systems): check, then rename. Shards
            # of one Job start with the same settings, so a race here writes the same bytes twice.
            if path.exists():
                return path.read_bytes()
            os.replace(temporary, path)
        return data
    finally:
        temporary.unlink(missing_ok=True)


class RunDirectory:
    def __init__(self, root: Path, run_id: str) -> None:
        self.path = root / check_run_id(run_id)

    def prepare(self, manifest: dict[str, Any], *, sweep: bool = True) -> None:
        """Create the directory, or check it belongs to this run (a resume, or a sibling shard's start):
        RunMismatch if it does not.

        `sweep`: remove the temporary files a killed run left (only when no other shard writes here)."""
        self.path.mkdir(parents=True, exist_ok=True)
        if sweep:
            for leftover in self.path.glob(f".*{_TEMPORARY}"):  # chunks a killed run was writing
                leftover.unlink(missing_ok=True)
        ours = orjson.dumps(manifest, option=orjson.OPT_INDENT_2)
        found = publish_once(self.path / MANIFEST, ours)
        if found == ours:
            return  # published now, before by this run, or by a shard started with the same settings
        started = orjson.loads(found)
        differs = sorted(k for k in set(started) | set(manifest) if started.get(k) != manifest.get(k))
        if differs:
            shown = "; ".join(f"{k}: {started.get(k)!r} then, {manifest.get(k)!r} now" for k in differs)
            raise RunMismatch(f"run {self.path.name!r} was started with other settings ({shown}): use a new run id")

    def part(self, file_index: int, chunk: int) -> Path:
        return self.path / f"part-{file_index}-{chunk}.jsonl"

    def errors(self, file_index: int, chunk: int) -> Path:
        return self.path / f"errors-{file_index}-{chunk}.jsonl"

    def finished_counts(self, file_index: int, chunk: int) -> tuple[int, int] | None:
        """(scored rows, bad rows) of a chunk written before, or None if it is not finished."""
        part = self.part(file_index, chunk)
        if not part.exists():
            return None
        errors = self.errors(file_index, chunk)
        return _lines(part), _lines(errors) if errors.exists() else 0

    def write_chunk(self, file_index: int, chunk: int, predictions: bytes, bad_rows: bytes) -> None:
        errors = self.errors(file_index, chunk)
        if bad_rows:
            write_atomically(errors, bad_rows)
        else:
            errors.unlink(missing_ok=True)
            _temporary(errors).unlink(missing_ok=True)  # a killed writer's, when this chunk had bad rows then
        write_atomically(self.part(file_index, chunk), predictions)

    def write_summary(self, summary: dict[str, Any], name: str = SUMMARY) -> None:
        write_atomically(self.path / name, orjson.dumps(summary, option=orjson.OPT_INDENT_2))


def summary_name(shard_index: int, shard_count: int) -> str:
    return SUMMARY if shard_count == 1 else f"_SUMMARY-{shard_index}.json"


def _lines(path: Path) -> int:
    with open(path, "rb") as stream:
        return sum(block.count(b"\n") for block in iter(lambda: stream.read(1 << 20), b""))
