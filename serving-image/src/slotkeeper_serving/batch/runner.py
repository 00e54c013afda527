"""One batch run: inputs -> chunks -> predictions under <output>/<run-id>/, with progress and a summary.

The model is loaded once, by the loader online serving uses, from the same
settings (SLOTKEEPER_* variables): the operator renders the batch pod from
the stable revision's slot container, so the run scores with exactly the
model that serves online, and records its revision (SLOTKEEPER_MODEL_VERSION)
in _RUN.json and the summary. A restart with another revision is refused
(rundir.RunMismatch) rather than mixing models in one output.

Sharding (an Indexed Job's pods, --shard-index I --shard-count N): chunk
ordinals count on across the input files, and shard I scores the chunks whose
ordinal is I mod N, so every shard writes the part files an unsharded run
would, and resume works per chunk as before (even with another shard count).
A shard still reads the lines of the chunks it leaves, without parsing them:
chunk boundaries are line counts and a file has no index of its lines, while
reading costs little next to parsing and scoring (an http(s) input is
downloaded by every shard). The failed-row limits hold per shard: each shard
decides its own outcome from its own rows, and the run succeeds only when
every shard did (for the operator: the Indexed Job's Complete condition).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from ..config import Settings
from ..fetch import ModelLoadError, redact_uri
from ..models import load_model
from .inputs import InputError, InputFile, list_inputs, open_text, output_root
from .outcome import FailedRowLimits, decide_outcome, rows_limit_exceeded
from .rows import Chunk, open_reader
from .rundir import RunDirectory, RunMismatch, summary_name
from .scoring import ChunkScorer, UnsupportedModel

log = logging.getLogger(__name__)

DEFAULT_CHUNK_ROWS = 10_000
_READ_ERRORS = (OSError, UnicodeDecodeError, csv.Error, httpx.HTTPError)
_TEXT_LIMIT = 1000  # keeps the summary well under the 4 KiB of a termination message

_SCALARS = (str, int, float, bool, type(None))

Emit = Callable[[dict[str, Any]], None]


class OutputError(Exception):
    """A chunk could not be written."""


@dataclass(frozen=True)
class BatchJob:
    input: str
    output: str
    run_id: str
    input_format: str = "auto"
    key_column: str = "id"
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    limits: FailedRowLimits = FailedRowLimits.from_flags(None, None)
    shard_index: int = 0
    shard_count: int = 1

    def owns(self, ordinal: int) -> bool:
        """Whether this shard scores the run's `ordinal`-th chunk (counted over all input files)."""
        return ordinal % self.shard_count == self.shard_index


@dataclass
class Tally:
    rows: int = 0
    failed: int = 0
    chunks: int = 0
    skipped_chunks: int = 0

    def add(self, rows: int, failed: int, skipped: bool) -> None:
        self.rows += rows
        self.failed += failed
        self.chunks += 1
        self.skipped_chunks += skipped


def run_batch(job: BatchJob, settings: Settings, emit: Emit, loader=load_model) -> dict[str, Any]:
    """Run the job and return its summary; UsageError (inputs.py) for a job that cannot be run as asked."""
    started = time.monotonic()
    sources = None
    ours = False  # a directory of another run (RunMismatch) keeps its own summary
    tally = Tally()
    directory = RunDirectory(output_root(job.output), job.run_id)
    try:
        sources = list_inputs(job.input, job.input_format)
        directory.prepare(_manifest(job, settings, sources), sweep=job.shard_count == 1)
        ours = True
        # Online request batching is not used here; the scorer verifies rows for its own output.
        model = loader(dataclasses.replace(settings, batching=False))
        try:
            scorer = ChunkScorer(model)
            log.info("batch mode: %s", "one call per chunk" if scorer.rows_together else
                     f"one call per row ({scorer.rows_together_reason})")
            reason = _score_all(job, sources, directory, scorer, tally, emit)
        finally:
            model.close()
        outcome, reason = ("Failed", reason) if reason else decide_outcome(tally.rows, tally.failed, job.limits)
    except (InputError, RunMismatch, ModelLoadError, UnsupportedModel, OutputError) as exc:
        outcome, reason = "Failed", str(exc)
    except OSError as exc:  # the run directory cannot be made or written
        outcome, reason = "Failed", f"output {str(directory.path)!r}: {exc.strerror or exc}"
    summary = {
        "runId": job.run_id,
        "revision": settings.model_version,
        "model": settings.model_name,
        "rows": tally.rows,
        "failedRows": tally.failed,
        "seconds": round(time.monotonic() - started, 3),
        "outcome": outcome,
        "reason": reason[:_TEXT_LIMIT],
        "chunks": tally.chunks,
        "skippedChunks": tally.skipped_chunks,
        "files": len(sources) if sources is not None else 0,
    }
    if job.shard_count > 1:
        summary.update(shard=job.shard_index, shards=job.shard_count)
    if ours:
        try:
            directory.write_summary(summary, summary_name(job.shard_index, job.shard_count))
        except OSError as exc:
            log.error("cannot write the summary to %s: %s", directory.path, exc)
    return summary


def _manifest(job: BatchJob, settings: Settings, sources: list[InputFile]) -> dict[str, Any]:
    return {
        "runId": job.run_id,
        "revision": settings.model_version,
        "model": settings.model_name,
        "modelUri": redact_uri(settings.model_uri)[:_TEXT_LIMIT],
        "inputs": [source.name for source in sources],
        "inputFormats": [source.format for source in sources],
        "keyColumn": job.key_column,
        "chunkRows": job.chunk_rows,
    }


def _score_all(job, sources, directory, scorer, tally: Tally, emit: Emit) -> str | None:
    """Score every chunk of this shard not written yet; the reason the run stopped early, or None."""
    ordinal = -1
    for source in sources:
        try:
            with open_text(source) as stream:
                reader = open_reader(source, stream, job.key_column, scorer.feature_names, scorer.n_features)
                for index, (start, texts) in enumerate(reader.chunks(job.chunk_rows)):
                    ordinal += 1
                    if not job.owns(ordinal):
                        continue  # another shard's
                    finished = directory.finished_counts(source.index, index)
                    if finished is not None:
                        scored, failed = finished
                        rows, skipped = scored + failed, True
                    else:
                        rows, failed = _score_chunk(reader.parse(start, texts), scorer, directory, source, index)
                        skipped = False
                    tally.add(rows, failed, skipped)
                    emit({"event": "chunk", "file": source.name, "chunk": index, "rows": rows,
                          "failedRows": failed, "skipped": skipped})
                    if (reason := rows_limit_exceeded(tally.failed, job.limits)) is not None:
                        return reason
        except _READ_ERRORS as exc:
            text = str(exc).replace(source.location, redact_uri(source.location))  # no URL credentials
            raise InputError(f"reading {source.name} failed: {type(exc).__name__}: {text}"[:_TEXT_LIMIT]) from exc
    return None


def json_lines(rows: list[dict[str, Any]], *, plain: bool = False) -> bytes:
    """One compact JSON object per line, as orjson.dumps of each with a newline would give.

    `plain`: no value holds a JSON object (keys are scalars, predictions come
    from ndarray.tolist()). Then one dumps does the chunk and a newline goes
    between objects: inside a JSON string every quote is escaped, so
    `},{"<first field>":` occurs only where one object ends and the next begins.
    """
    if not rows:
        return b""
    if plain:
        between = b'},{"' + next(iter(rows[0])).encode() + b'":'
        return orjson.dumps(rows, default=str)[1:-1].replace(between, b"}\n" + between[2:]) + b"\n"
    return b"".join(orjson.dumps(row, default=str, option=orjson.OPT_APPEND_NEWLINE) for row in rows)


def _score_chunk(chunk: Chunk, scorer: ChunkScorer, directory, source: InputFile, index: int) -> tuple[int, int]:
    predictions, failures = scorer.score(chunk.X)
    bad = chunk.bad
    if failures:
        bad = sorted(bad + [{"file": source.name, "line": chunk.lines[i], "reason": reason}
                            for i, reason in failures.items()], key=lambda row: row["line"])
    pairs = zip(chunk.keys, predictions, strict=True)
    if failures:
        pairs = (pair for i, pair in enumerate(pairs) if i not in failures)
    rows = [{"key": key, "prediction": prediction} for key, prediction in pairs]
    try:
        plain = all(type(key) in _SCALARS for key in chunk.keys)  # CSV keys always; JSON keys may be objects
        directory.write_chunk(source.index, index, json_lines(rows, plain=plain), json_lines(bad, plain=True))
    except OSError as exc:
        raise OutputError(f"writing chunk {index} of {source.name} failed: {exc.strerror or exc}") from exc
    return chunk.rows, len(bad)
