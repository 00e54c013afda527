"""Adaptive batching: concurrent infer requests for a row-independent model become one model call.

A model qualifies only if, at load time, predicting deterministic probe rows
in one call gives exactly (bit for bit, same dtype) what predicting them in
chunks of several sizes gives, for every output and both float dtypes (the
same idea as the fast path's verification). Otherwise every request keeps its
own call.

Batches are adaptive: a request that finds the model idle is dispatched at
once (after `max_delay` seconds, 0 by default), and requests arriving while the
model is busy queue and go together in the next call, up to `max_rows` rows.
Only requests with the same input dtype and the same requested outputs are
combined. A batch of at most `inline_rows` rows (0 unless the model says its
call is that cheap: forestpath.py) is predicted on the event loop itself. If
a combined call raises (one request's rows are bad, say), every request in it
is retried on its own, so a failing row fails only its request.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray, tuple[str, ...]], list[np.ndarray]]
BATCH_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))
CHUNK_SIZES = (1, 2, 3, 5, 7, 16)


def probe_rows(n_features: int) -> np.ndarray:
    rng = np.random.default_rng(20240917)
    blocks = [rng.standard_normal((16, n_features)) * scale for scale in (1e-3, 1.0, 1e3)]
    blocks.append(rng.integers(-5, 5, size=(8, n_features)).astype(np.float64))
    blocks.append(np.zeros((2, n_features)))
    return np.concatenate(blocks)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind == "f":
        return np.array_equal(np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8))
    return np.array_equal(a, b)


def first_row_dependence(predict: Predict, n_features: int, outputs: tuple[str, ...]) -> str | None:
    """None if rows are independent on the probe set (any chunking gives the same bits), else what differed."""
    base = probe_rows(n_features)
    for dtype in BATCH_DTYPES:
        X = base.astype(dtype)
        try:
            whole = [np.asarray(r) for r in predict(X, outputs)]
        except Exception as exc:
            return f"predict failed on the probe rows: {type(exc).__name__}"
        for name, result in zip(outputs, whole, strict=True):
            if result.ndim == 0 or result.shape[0] != len(X):
                return f"output {name!r} has no row per input row"
        for size in CHUNK_SIZES:
            for start in range(0, len(X), size):
                chunk = X[start : start + size]
                try:
                    parts = [np.asarray(r) for r in predict(np.ascontiguousarray(chunk), outputs)]
                except Exception as exc:
                    return f"predict failed on a probe chunk: {type(exc).__name__}"
                for name, part, result in zip(outputs, parts, whole, strict=True):
                    if not _same(part, result[start : start + size]):
                        return f"{dtype} output {name!r}: rows {start}..{start + len(chunk) - 1} differ when predicted in chunks of {size}"
    return None


class _Item:
    __slots__ = ("X", "future")

    def __init__(self, X: np.ndarray, future: asyncio.Future) -> None:
        self.X = X
        self.future = future


class Batcher:
    """Combines concurrent calls of `predict(X, outputs)` (run on `executor`) for the same key."""

    def __init__(
        self, predict: Predict, executor: Executor, *, max_rows: int = 512, max_delay: float = 0.0, inline_rows: int = 0
    ) -> None:
        self._predict = predict
        self._executor = executor
        self.max_rows = max_rows
        self.max_delay = max_delay
        self.inline_rows = inline_rows
        self._queue: deque[tuple[tuple, _Item]] = deque()
        self._busy = False
        # Observability for tests and logs: model calls made, and requests they answered.
        self.calls = 0
        self.batched_requests = 0
        self.retries = 0

    @staticmethod
    def accepts(X: np.ndarray) -> bool:
        return X.ndim == 2 and X.shape[0] > 0 and X.dtype in BATCH_DTYPES

    async def submit(self, X: np.ndarray, outputs: tuple[str, ...]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        item = _Item(X, loop.create_future())
        self._queue.append(((X.dtype.str, outputs), item))
        if not self._busy:
            self._busy = True
            loop.create_task(self._drain())
        return await item.future

    def _take(self) -> tuple[tuple, list[_Item], int]:
        key, first = self._queue.popleft()
        batch, rows, kept = [first], first.X.shape[0], deque()
        while self._queue:
            other_key, item = self._queue.popleft()
            if other_key == key and rows + item.X.shape[0] <= self.max_rows:
                batch.append(item)
                rows += item.X.shape[0]
            else:
                kept.append((other_key, item))
        self._queue.extendleft(reversed(kept))
        return key, batch, rows

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self.max_delay > 0:
                await asyncio.sleep(self.max_delay)
            while self._queue:
                key, batch, rows = self._take()
                Xs = [i.X for i in batch]
                if rows <= self.inline_rows:
                    # Cheaper than the hand-off to the model thread and back (and the GIL
                    # ping-pong with this loop while it runs) on a CPU both share.
                    outcomes = self._run(key[1], Xs)
                else:
                    outcomes = await loop.run_in_executor(self._executor, self._run, key[1], Xs)
                for item, (ok, value) in zip(batch, outcomes, strict=True):
                    if item.future.done():
                        continue
                    if ok:
                        item.future.set_result(value)
                    else:
                        item.future.set_exception(value)
        except BaseException as exc:  # the loop is closing: nobody may wait forever
            for _, item in self._queue:
                if not item.future.done():
                    item.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("shutting down"))
            raise
        finally:
            self._busy = False

    def _run(self, outputs: tuple[str, ...], Xs: Sequence[np.ndarray]) -> list[tuple[bool, Any]]:
        """On the model thread: one call for all, split by rows; each on its own if that fails."""
        self.calls += 1
        self.batched_requests += len(Xs)
        if len(Xs) == 1:
            return [attempt(self._predict, Xs[0], outputs)]
        results = predict_combined(self._predict, np.concatenate(Xs), outputs)
        if results is not None:
            split, start = [], 0
            for X in Xs:
                end = start + X.shape[0]
                split.append((True, [r[start:end] for r in results]))
                start = end
            return split
        self.retries += 1
        self.calls += len(Xs)
        return [attempt(self._predict, X, outputs) for X in Xs]


def attempt(predict: Predict, X: np.ndarray, outputs: tuple[str, ...]) -> tuple[bool, Any]:
    """(True, results) or (False, the exception): one model call that never raises."""
    try:
        return True, predict(X, outputs)
    except Exception as exc:
        return False, exc


def predict_combined(predict: Predict, X: np.ndarray, outputs: tuple[str, ...]) -> list[np.ndarray] | None:
    """The outputs of one call over all rows of X, or None if it raised or gave no row per input row.

    None means: predict the parts (requests, rows) on their own, so a bad one fails only itself.
    Shared by the online batcher and the batch mode (batch/scoring.py).
    """
    ok, results = attempt(predict, X, outputs)
    if not ok:
        return None
    results = [np.asarray(r) for r in results]
    if all(r.ndim > 0 and r.shape[0] == X.shape[0] for r in results):
        return results
    return None
