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

Record = tuple[int, Any]  # (line number, raw record)
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


def chunks(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    iterator = iter(records)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def open_reader(source: InputFile, stream: TextIO, key_column: str, model_features, n_features):
    reader = CsvReader if source.format == "csv" else JsonLinesReader
    return reader(source, stream, key_column, model_features, n_features)


def _bad(source: InputFile, line: int, reason: str) -> dict[str, Any]:
    return {"file": source.name, "line": line, "reason": reason}


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _VALUE_PREVIEW else text[: _VALUE_PREVIEW - 3] + "..."


def _finish(source: InputFile, rows: int, keys, lines, values, names, bad) -> Chunk:
    """Chunk from parsed rows (tuples of numbers or strings): rows with a non-number or non-finite value go bad."""
    width = len(names)
    try:
        X = np.array(values, dtype=np.float64).reshape(-1, width)
        parsed = list(range(len(values)))
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
    finite = np.isfinite(X).all(axis=1)
    if not finite.all():
        for position in np.flatnonzero(~finite):
            column = names[int(np.flatnonzero(~np.isfinite(X[position]))[0])]
            bad.append(_bad(source, lines[parsed[position]], f"column {column!r}: not a finite number"))
        X = np.ascontiguousarray(X[finite])
        parsed = [i for i, ok in zip(parsed, finite, strict=True) if ok]
    bad.sort(key=operator.itemgetter("line"))
    return Chunk(rows=rows, keys=[keys[i] for i in parsed], lines=[lines[i] for i in parsed], X=X, bad=bad)


def _is_number(value: Any) -> bool:
    try:
        float(value)
        return True
    except (ValueError, TypeError, OverflowError):
        return False


class CsvReader:
    """A CSV file with a header line; blank lines are not records."""

    def __init__(self, source: InputFile, stream: TextIO, key_column: str, model_features, n_features) -> None:
        self.source = source
        self._reader = csv.reader(stream)
        self.header: list[str] = next(self._reader, [])
        self.width = len(self.header)
        if not self.header:
            return  # an empty file: no records
        self._key, features = plan_features(self.header, key_column, model_features, n_features, source.name)
        self.names = tuple(self.header[i] for i in features)
        self._take = operator.itemgetter(*features) if len(features) > 1 else (lambda f, i=features[0]: (f[i],))

    def records(self) -> Iterator[Record]:
        reader = self._reader
        for fields in reader:
            if fields:
                yield reader.line_num, fields

    def parse(self, records: Sequence[Record]) -> Chunk:
        keys, lines, values, bad = [], [], [], []
        width, key, take, name = self.width, self._key, self._take, self.source.name
        for line, fields in records:
            if len(fields) != width:
                bad.append(_bad(self.source, line, f"expected {width} fields, got {len(fields)}"))
                continue
            keys.append(fields[key] if key is not None else f"{name}:{line}")
            lines.append(line)
            values.append(take(fields))
        return _finish(self.source, len(records), keys, lines, values, self.names, bad)


class JsonLinesReader:
    """One JSON object per line: the key field and one number per feature; blank lines are not records."""

    def __init__(self, source: InputFile, stream: TextIO, key_column: str, model_features, n_features) -> None:
        self.source = source
        self.key_column = key_column
        lines = ((number, text) for number, text in enumerate(stream, 1) if text.strip())
        # The first object's fields stand for the header; lines before it are read again as records.
        ahead: list[Record] = []
        header: list[str] = []
        for record in lines:
            ahead.append(record)
            first = _json_object(record[1])
            if first is not None:
                header = [str(name) for name in first]
                break
        self._records = itertools.chain(ahead, lines)
        if ahead and not header:
            raise InputError(f"{source.name}: no line is a JSON object")
        self.names: tuple[str, ...] = ()
        if header:
            _, features = plan_features(header, key_column, model_features, n_features, source.name)
            self.names = tuple(header[i] for i in features)

    def records(self) -> Iterator[Record]:
        return self._records

    def parse(self, records: Sequence[Record]) -> Chunk:
        keys, lines, values, bad = [], [], [], []
        names, key_column, name = self.names, self.key_column, self.source.name
        for line, text in records:
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
        return _finish(self.source, len(records), keys, lines, values, names, bad)


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
