"""The output of one run, under <output>/<run-id>/, laid out so a restarted run resumes.

- part-<file>-<chunk>.jsonl: {"key", "prediction"} per scored row of a chunk.
  It is written under a temporary name, flushed to disk and renamed, after
  the chunk's errors-<file>-<chunk>.jsonl ({"file", "line", "reason"} per bad
  row, only if there are any): an existing part file means a finished chunk,
  which a restarted run skips (counting its lines instead).
- _RUN.json: what the run was started with (revision, model, inputs, chunk
  size, key column). A restart with anything else would mix models or shift
  chunk boundaries, so it is refused.
- _SUMMARY.json: written last, the summary of the run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

MANIFEST = "_RUN.json"
SUMMARY = "_SUMMARY.json"
_TEMPORARY = ".tmp"


class RunMismatch(Exception):
    """The run id names a run started with other settings."""


def check_run_id(run_id: str) -> str:
    if not run_id or run_id in (".", "..") or "/" in run_id or any(ord(c) < 32 for c in run_id):
        raise ValueError(f"run id must be one path segment, got {run_id!r}")
    return run_id


def write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}{_TEMPORARY}")
    with open(temporary, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())  # the rename must never publish a part the disk does not hold
    os.replace(temporary, path)


class RunDirectory:
    def __init__(self, root: Path, run_id: str) -> None:
        self.path = root / check_run_id(run_id)

    def prepare(self, manifest: dict[str, Any]) -> bool:
        """Create the directory or check it belongs to this run; True if resuming. Raises RunMismatch."""
        self.path.mkdir(parents=True, exist_ok=True)
        for leftover in self.path.glob(f".*{_TEMPORARY}"):  # chunks a killed run was writing
            leftover.unlink(missing_ok=True)
        existing = self.path / MANIFEST
        if not existing.exists():
            write_atomically(existing, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
            return False
        started = orjson.loads(existing.read_bytes())
        differs = sorted(k for k in set(started) | set(manifest) if started.get(k) != manifest.get(k))
        if differs:
            shown = "; ".join(f"{k}: {started.get(k)!r} then, {manifest.get(k)!r} now" for k in differs)
            raise RunMismatch(f"run {self.path.name!r} was started with other settings ({shown}): use a new run id")
        return True

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
        write_atomically(self.part(file_index, chunk), predictions)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_atomically(self.path / SUMMARY, orjson.dumps(summary, option=orjson.OPT_INDENT_2))


def _lines(path: Path) -> int:
    with open(path, "rb") as stream:
        return sum(block.count(b"\n") for block in iter(lambda: stream.read(1 << 20), b""))
