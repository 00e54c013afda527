"""Records of an input file -> chunks of feature rows, float64, one row per record that parses.

A record that does not parse (wrong field count, a value that is not a
finite number, a missing feature, a line that is not a JSON object) becomes
a bad row with its file, line and reason; it is never dropped. Non-finite
values (nan, inf) are bad rows too: the online route's JSON cannot carry
them, so every row the batch mode scores is one the online route would
answer the same.

Which columns are features: the model's own feature names if it was fitted
with names and the header has them all (then in the model's order), else
every column but the key column, in the file's order. For JSON lines the
field names of the first object stand for the header.
"""

from __future__ import annotations

import csv
import itertools
import operator
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
import orjson

from .inputs import InputError, InputFile

_VALUE_PREVIEW = 40


@dataclass
class Chunk:
    rows: int  # records read: scored rows plus bad rows
    keys: list[Any] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # of the scored rows
    X: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))
    bad: list[dict[str, Any]] = field(default_factory=list)  # {"file", "line", "reason"}, by line


def plan_features(
    header: Sequence[str], key_column: str, model_features: Sequence[str] | None, n_features: int | None, where: str
) -> tuple[int | None, tuple[int, ...]]:
    """(index of the key column or None, indices of the feature columns) in `header`."""
    key = header.index(key_column) if key_column in header else None
    if model_features and all(name in header for name in model_features):
        features = tuple(header.index(name) for name in model_features)
    else:
        features = tuple(i for i in range(len(header)) if i != key)
    if not features:
        raise InputError(f"{where}: no feature columns besides the key column {key_column!r}")
    if n_features is not None and len(features) != n_features:
        names = ", ".join(header[i] for i in features[:8]) + (", ..." if len(features) > 8 else "")
        raise InputError(f"{where}: {len(features)} feature columns ({names}), but the model expects {n_features}")
    return key, features


def line_chunks(lines: Iterable[str], first_line: int, size: int) -> Iterator[tuple[int, list[str]]]:
    """(line number of the first, lines) for every `size` lines; the same boundaries on every run."""
    iterator = iter(lines)
    start = first_line
    while batch := list(itertools.islice(iterator, size)):
        yield start, batch
        start += len(batch)


def open_reader(source: InputFile, stream: TextIO, key_column: str, model_features, n_features):
    reader = CsvReader if source.format == "csv" else JsonLinesReader
    return reader(source, stream, key_column, model_features, n_features)


def _bad(source: InputFile, line: int, reason: str) -> dict[str, Any]:
    return {"file": source.name, "line": line, "reason": reason}


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _VALUE_PREVIEW else text[: _VALUE_PREVIEW - 3] + "..."


def _finish(source: InputFile, rows: int, keys, lines, values, names, bad) -> Chunk:
    """Chunk from parsed rows (tuples of numbers or strings): a row with a value that is no number goes bad."""
    width = len(names)
    try:
        X = np.array(values, dtype=np.float64).reshape(-1, width)
    except (ValueError, OverflowError):  # some value is not a number: find which, row by row
        parsed, arrays = [], []
        for i, row in enumerate(values):
            try:
                arrays.append(np.array(row, dtype=np.float64))
                parsed.append(i)
            except (ValueError, TypeError, OverflowError):
                column, value = next((n, v) for n, v in zip(names, row, strict=True) if not _is_number(v))
                what = "empty value" if isinstance(value, str) and not value.strip() else f"not a number: {_preview(value)}"
                bad.append(_bad(source, lines[i], f"column {column!r}: {what}"))
        X = np.array(arrays, dtype=np.float64).reshape(-1, width)
        keys, lines = [keys[i] for i in parsed], [lines[i] for i in parsed]
    return _finish_floats(source, rows, keys, lines, X, names, bad)


def _finish_floats(source: InputFile, rows: int, keys, lines, X: np.ndarray, names, bad) -> Chunk:
    """Chunk from parsed float rows: rows with a non-finite value go bad."""
    finite = np.isfinite(X).all(axis=1)
    if not finite.all():
        for position in np.flatnonzero(~finite):
            column = names[int(np.flatnonzero(~np.isfinite(X[position]))[0])]
            bad.append(_bad(source, lines[position], f"column {column!r}: not a finite number"))
        X = np.ascontiguousarray(X[finite])
        keep = finite.tolist()
        keys = [k for k, ok in zip(keys, keep, strict=True) if ok]
        lines = [n for n, ok in zip(lines, keep, strict=True) if ok]
    bad.sort(key=operator.itemgetter("line"))
    return Chunk(rows=rows, keys=keys, lines=lines, X=X, bad=bad)


def _is_number(value: Any) -> bool:
    try:
        float(value)
        return True
    except (ValueError, TypeError, OverflowError):
        return False


class CsvReader:
    """A CSV file with a header line, one record per line; blank lines are not records.

    A chunk without quotes or blank lines is parsed by numpy's C reader (a
    subset of Python's float syntax); a chunk it refuses, or one with quotes,
    is parsed again line by line with the csv module and float(), which finds
    and names the bad rows. Both give the same numbers (test_serving_batch_rows.py).
    """

    def __init__(self, source: InputFile, stream: TextIO, key_column: str, model_features, n_features) -> None:
        self.source = source
        self._stream = stream
        self.header: list[str] = []
        self._first_line = 1
        for text in stream:
            self._first_line += 1
            if text.strip():
                self.header = _csv_fields(text) or []
                break
        self.width = len(self.header)
        if not self.header:
            return  # an empty file: no records
        self._key, self._features = plan_features(self.header, key_column, model_features, n_features, source.name)
        self.names = tuple(self.header[i] for i in self._features)

    def chunks(self, size: int) -> Iterator[tuple[int, list[str]]]:
        return line_chunks(self._stream, self._first_line, size) if self.header else iter(())

    def parse(self, start: int, texts: Sequence[str], *, fast: bool = True) -> Chunk:
        if fast and (chunk := self._parse_plain(start, texts)) is not None:
            return chunk
        keys, lines, values, bad = [], [], [], []
        width, key, features, name = self.width, self._key, self._features, self.source.name
        rows = 0
        for line, text in enumerate(texts, start):
            if not text.strip():
                continue
            rows += 1
            fields = _csv_fields(text)
            if fields is None:
                bad.append(_bad(self.source, line, "unterminated quoted field"))
                continue
            if len(fields) != width:
                bad.append(_bad(self.source, line, f"expected {width} fields, got {len(fields)}"))
                continue
            keys.append(fields[key] if key is not None else f"{name}:{line}")
            lines.append(line)
            values.append(tuple(fields[i] for i in features))
        return _finish(self.source, rows, keys, lines, values, self.names, bad)

    def _parse_plain(self, start: int, texts: Sequence[str]) -> Chunk | None:
        """The chunk through numpy's reader if every line is plain (no quotes, right width) and parses, else None."""
        blob = "".join(texts)
        commas = self.width - 1
        if '"' in blob or blob.count(",") != commas * len(texts):
            return None
        try:
            X = np.loadtxt(texts, delimiter=",", usecols=self._features, dtype=np.float64, comments=None, ndmin=2)
        except ValueError:
            return None
        # The comma total is right; a line short of a column fails the reader only if that column is used.
        if len(X) != len(texts) or (
            max(self._features) != self.width - 1 and any(text.count(",") != commas for text in texts)
        ):
            return None  # numpy skips blank lines; the slow path counts them out properly
        lines = range(start, start + len(texts))
        key = self._key
        if key is None:
            keys = [f"{self.source.name}:{line}" for line in lines]
        elif key == 0:
            keys = [text[: text.index(",")] for text in texts]
        else:
            keys = [text.split(",", key + 1)[key].rstrip("\r\n") for text in texts]
        return _finish_floats(self.source, len(texts), keys, list(lines), X, self.names, [])


def _csv_fields(text: str) -> list[str] | None:
    """The fields of one CSV line (quotes allowed), or None if a quote is left open."""
    if '"' not in text:
        return text.rstrip("\r\n").split(",")
    try:
        return next(csv.reader((text,), strict=True), [])
    except csv.Error:
        return None


class JsonLinesReader:
    """One JSON object per line: the key field and one number per feature; blank lines are not records."""

    def __init__(self, source: InputFile, stream: TextIO, key_column: str, model_features, n_features) -> None:
        self.source = source
        self.key_column = key_column
        # The first object's fields stand for the header; lines before it are read again as records.
        self._ahead: list[str] = []
        header: list[str] = []
        for text in stream:
            self._ahead.append(text)
            first = _json_object(text) if text.strip() else None
            if first is not None:
                header = [str(name) for name in first]
                break
        self._stream = stream
        if not header and any(text.strip() for text in self._ahead):
            raise InputError(f"{source.name}: no line is a JSON object")
        self.names: tuple[str, ...] = ()
        if header:
            _, features = plan_features(header, key_column, model_features, n_features, source.name)
            self.names = tuple(header[i] for i in features)

    def chunks(self, size: int) -> Iterator[tuple[int, list[str]]]:
        return line_chunks(itertools.chain(self._ahead, self._stream), 1, size) if self.names else iter(())

    def parse(self, start: int, texts: Sequence[str]) -> Chunk:
        keys, lines, values, bad = [], [], [], []
        names, key_column, name = self.names, self.key_column, self.source.name
        rows = 0
        for line, text in enumerate(texts, start):
            if not text.strip():
                continue
            rows += 1
            row = _json_object(text)
            if row is None:
                bad.append(_bad(self.source, line, "not a JSON object"))
                continue
            reason = _json_row_problem(row, names)
            if reason is not None:
                bad.append(_bad(self.source, line, reason))
                continue
            keys.append(row[key_column] if key_column in row else f"{name}:{line}")
            lines.append(line)
            values.append(tuple(row[n] for n in names))
        return _finish(self.source, rows, keys, lines, values, names, bad)


def _json_row_problem(row: dict, names: Sequence[str]) -> str | None:
    for feature in names:
        if feature not in row:
            return f"missing feature {feature!r}"
        value = row[feature]
        # Only JSON numbers: a bool would pass as 0/1 and a string "1.5" as 1.5, which the online route refuses.
        if type(value) not in (int, float):
            return f"column {feature!r}: not a number: {'null' if value is None else _preview(value)}"
    return None


def _json_object(text: str) -> dict | None:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
