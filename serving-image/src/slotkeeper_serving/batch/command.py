"""`slotkeeper-serve batch`: score input files with the model named by the SLOTKEEPER_* variables.

Exit status: 0 the run succeeded; 1 it failed (failed rows over the limit,
the input or the model cannot be read, a resume with other settings);
2 the command line is wrong.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from ..cli import add_loading_flags, add_model_flags
from ..config import ConfigError, settings_from_env
from .inputs import UsageError
from .outcome import FailedRowLimits
from .rundir import check_run_id
from .runner import DEFAULT_CHUNK_ROWS, BatchJob, run_batch

RUN_ID_ENV = "SLOTKEEPER_BATCH_RUN_ID"
SHARD_INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by the Job controller in each pod of an Indexed Job
DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slotkeeper-serve batch",
        description="Score CSV or JSON-lines files in chunks with the served model; a restarted run with the "
        "same run id skips the chunks already written. Model flags fall back to the SLOTKEEPER_* variables.",
    )
    add = parser.add_argument
    add("--input", required=True, help="file:// URI, path or http(s):// URL of a file, or a directory (file://)")
    add("--output", required=True, help="file:// URI or path; the run writes under <output>/<run-id>/")
    add("--input-format", choices=("auto", "csv", "jsonl"), default="auto", help="default: from the file suffix")
    add("--key-column", default="id", help="column echoed as each prediction's key (default: id; "
        "rows without one get <file>:<line>)")
    add("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, help=f"rows per chunk (default: {DEFAULT_CHUNK_ROWS})")
    add("--max-failed-rows", type=int, help="fail the run when more rows than this fail")
    add("--max-failed-fraction", type=float, help="fail the run when more than this fraction of rows fail "
        "(default: 0.01 when no limit is given)")
    add("--run-id", help=f"output subdirectory; reuse it to resume (default: ${RUN_ID_ENV} or a UTC timestamp)")
    add("--shard-index", type=int, help=f"score only this shard's chunks (default: ${SHARD_INDEX_ENV} or 0)")
    add("--shard-count", type=int, default=1, help="shards of the run: shard I scores the chunks whose ordinal "
        "is I mod N, into the same part files; its summary is _SUMMARY-<I>.json (default: 1, no sharding)")
    add("--termination-log", help=f"also write the summary here (default: {DEFAULT_TERMINATION_LOG} if writable; "
        "'' for none)")
    add_model_flags(parser)
    add_loading_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    model_flags = ("model_uri", "model_name", "model_format", "model_version", "cache_dir", "log_level", "fastpath")
    overrides = {name: getattr(args, name) for name in model_flags if getattr(args, name) is not None}
    try:
        settings = settings_from_env(os.environ, overrides)
        job = _job(args)
    except (ConfigError, ValueError) as exc:
        print(f"slotkeeper-serve batch: {exc}", file=sys.stderr)
        return 2

    from ..server import configure_logging

    configure_logging(settings.log_level)
    try:
        summary = run_batch(job, settings, emit=_print_line)
    except UsageError as exc:
        print(f"slotkeeper-serve batch: {exc}", file=sys.stderr)
        return 2
    _print_line({"event": "summary", **summary})
    _write_termination_log(args.termination_log, summary)
    return 0 if summary["outcome"] == "Succeeded" else 1


def _job(args: argparse.Namespace) -> BatchJob:
    if args.chunk_rows < 1:
        raise ValueError(f"--chunk-rows must be >= 1, got {args.chunk_rows}")
    if args.max_failed_rows is not None and args.max_failed_rows < 0:
        raise ValueError(f"--max-failed-rows must be >= 0, got {args.max_failed_rows}")
    fraction = args.max_failed_fraction
    if fraction is not None and not (math.isfinite(fraction) and 0 <= fraction <= 1):
        raise ValueError(f"--max-failed-fraction must be 0..1, got {fraction}")
    shard_index, shard_count = _shard(args.shard_index, args.shard_count)
    run_id = args.run_id or os.environ.get(RUN_ID_ENV, "").strip() or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return BatchJob(
        input=args.input,
        output=args.output,
        run_id=check_run_id(run_id),
        input_format=args.input_format,
        key_column=args.key_column,
        chunk_rows=args.chunk_rows,
        limits=FailedRowLimits.from_flags(args.max_failed_rows, fraction),
        shard_index=shard_index,
        shard_count=shard_count,
    )


def _shard(index: int | None, count: int) -> tuple[int, int]:
    if count < 1:
        raise ValueError(f"--shard-count must be >= 1, got {count}")
    if index is None:
        text = os.environ.get(SHARD_INDEX_ENV, "").strip() or "0"
        if not text.isdigit():
            raise ValueError(f"${SHARD_INDEX_ENV} must be a shard index, got {text!r}")
        index = int(text)
    if not 0 <= index < count:
        raise ValueError(f"the shard index must be 0..{count - 1} (--shard-count {count}), got {index}")
    return index, count


def _print_line(event: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(event).decode() + "\n")
    sys.stdout.flush()


def _write_termination_log(requested: str | None, summary: dict[str, Any]) -> None:
    """Kubernetes shows this file's content as the container's termination message (4 KiB at most)."""
    if requested == "":
        return
    path = Path(requested) if requested else DEFAULT_TERMINATION_LOG
    if requested is None and not (path.exists() and os.access(path, os.W_OK)):
        return
    try:
        path.write_bytes(orjson.dumps(summary)[:4096])
    except OSError as exc:
        print(f"slotkeeper-serve batch: cannot write the termination log {path}: {exc}", file=sys.stderr)
