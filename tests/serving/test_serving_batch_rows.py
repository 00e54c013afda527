"""Batch mode decisions without a model: which columns are features, what makes a bad row, when a run fails."""

from __future__ import annotations

import io

import numpy as np
import pytest

from slotkeeper_serving.batch.inputs import InputError, InputFile, UsageError, list_inputs, local_path
from slotkeeper_serving.batch.outcome import FailedRowLimits, decide_outcome, rows_limit_exceeded
from slotkeeper_serving.batch.rows import line_chunks, open_reader, plan_features


def read(text: str, fmt: str = "csv", *, key="id", model_features=None, n_features=None):
    source = InputFile(0, f"in.{fmt}", "unused", fmt)
    reader = open_reader(source, io.StringIO(text, newline=""), key, model_features, n_features)
    return reader.parse(*next(reader.chunks(1000)))


@pytest.mark.parametrize(
    "header, model_features, n_features, expected",
    [
        (["id", "a", "b"], None, 2, (0, (1, 2))),  # every column but the key
        (["a", "id", "b"], None, None, (1, (0, 2))),
        (["a", "b"], None, 2, (None, (0, 1))),  # no key column: keys become <file>:<line>
        (["id", "b", "x", "a"], ("a", "b"), 2, (0, (3, 1))),  # the model's names, in the model's order
        (["id", "b", "a"], ("a", "c"), 2, (0, (1, 2))),  # names not all present: file order
    ],
)
def test_plan_features_picks_key_and_feature_columns(header, model_features, n_features, expected):
    assert plan_features(header, "id", model_features, n_features, "in.csv") == expected


def test_plan_features_refuses_a_width_the_model_does_not_take():
    with pytest.raises(InputError, match="3 feature columns .a, b, c., but the model expects 2"):
        plan_features(["id", "a", "b", "c"], "id", None, 2, "in.csv")
    with pytest.raises(InputError, match="no feature columns"):
        plan_features(["id"], "id", None, None, "in.csv")


def test_csv_rows_parse_and_bad_rows_keep_file_line_and_reason():
    text = (
        "id,a,b\n"
        "r1,1.5,2\n"
        "\n"  # a blank line is no record
        "r2,x,2\n"
        "r3,1\n"
        "r4,,2\n"
        "r5,nan,2\n"
        "r6,1,-inf\n"
        '"r,7", 3 ,1e3\n'
    )
    chunk = read(text)
    assert chunk.rows == 7
    assert chunk.keys == ["r1", "r,7"]
    assert chunk.lines == [2, 9]
    np.testing.assert_array_equal(chunk.X, [[1.5, 2.0], [3.0, 1000.0]])
    assert chunk.X.dtype == np.float64 and chunk.X.flags.c_contiguous
    assert chunk.bad == [
        {"file": "in.csv", "line": 4, "reason": "column 'a': not a number: 'x'"},
        {"file": "in.csv", "line": 5, "reason": "expected 3 fields, got 2"},
        {"file": "in.csv", "line": 6, "reason": "column 'a': empty value"},
        {"file": "in.csv", "line": 7, "reason": "column 'a': not a finite number"},
        {"file": "in.csv", "line": 8, "reason": "column 'b': not a finite number"},
    ]


def test_csv_without_key_column_keys_rows_by_file_and_line():
    chunk = read("a,b\n1,2\n3,4\n")
    assert chunk.keys == ["in.csv:2", "in.csv:3"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_empty_file_has_no_records(fmt):
    source = InputFile(0, f"in.{fmt}", "unused", fmt)
    assert list(open_reader(source, io.StringIO(""), "id", None, 3).chunks(10)) == []


def test_jsonl_rows_parse_and_bad_rows_keep_file_line_and_reason():
    text = (
        '{"id": 7, "a": 1, "b": 2.5}\n'
        "not json\n"
        "[1, 2]\n"
        '{"id": 8, "a": 1}\n'
        '{"id": 9, "a": "1.5", "b": 1}\n'
        '{"id": 10, "a": true, "b": 1}\n'
        '{"id": 11, "a": null, "b": 1}\n'
        '{"b": 4, "a": 3, "extra": "kept aside"}\n'
    )
    chunk = read(text, "jsonl")
    assert chunk.rows == 8
    assert chunk.keys == [7, "in.jsonl:8"]
    np.testing.assert_array_equal(chunk.X, [[1.0, 2.5], [3.0, 4.0]])
    assert [(b["line"], b["reason"]) for b in chunk.bad] == [
        (2, "not a JSON object"),
        (3, "not a JSON object"),
        (4, "missing feature 'b'"),
        (5, "column 'a': not a number: '1.5'"),
        (6, "column 'a': not a number: True"),
        (7, "column 'a': not a number: null"),
    ]


def test_jsonl_header_comes_from_the_first_object_even_after_bad_lines():
    chunk = read('oops\n{"id": "k", "x": 1}\n', "jsonl")
    assert (chunk.rows, chunk.keys, chunk.X.tolist()) == (2, ["k"], [[1.0]])
    assert chunk.bad == [{"file": "in.jsonl", "line": 1, "reason": "not a JSON object"}]


def test_line_chunks_number_lines_from_the_first():
    lines = [f"{i}\n" for i in range(25)]
    assert [(start, len(c)) for start, c in line_chunks(lines, 2, 10)] == [(2, 10), (12, 10), (22, 5)]
    assert list(line_chunks([], 2, 10)) == []


@pytest.mark.parametrize(
    "rows, failed, max_rows, max_fraction, outcome",
    [
        (1000, 10, None, None, "Succeeded"),  # default: at most 1 %
        (1000, 11, None, None, "Failed"),
        (1000, 11, 20, None, "Succeeded"),  # an absolute limit alone replaces the default
        (1000, 21, 20, None, "Failed"),
        (1000, 0, 0, None, "Succeeded"),
        (1000, 1, 0, None, "Failed"),
        (1000, 30, 50, 0.02, "Failed"),  # both: either one fails the run
        (1000, 60, 50, 0.1, "Failed"),
        (1000, 15, 50, 0.02, "Succeeded"),
        (0, 0, None, None, "Succeeded"),
    ],
)
def test_decide_outcome_from_failed_row_limits(rows, failed, max_rows, max_fraction, outcome):
    assert decide_outcome(rows, failed, FailedRowLimits.from_flags(max_rows, max_fraction))[0] == outcome


def test_absolute_limit_stops_a_run_early_but_the_fraction_waits_for_the_end():
    assert rows_limit_exceeded(6, FailedRowLimits.from_flags(5, None)) == "6 failed rows exceed the limit of 5"
    assert rows_limit_exceeded(10**6, FailedRowLimits.from_flags(None, 0.01)) is None


def test_inputs_directory_lists_csv_and_jsonl_sorted(tmp_path):
    for name in ("b.jsonl", "a.csv", "c.txt", "d.CSV"):
        (tmp_path / name).write_text("")
    files = list_inputs(f"file://{tmp_path}")
    assert [(f.index, f.name, f.format) for f in files] == [(0, "a.csv", "csv"), (1, "b.jsonl", "jsonl"),
                                                           (2, "d.CSV", "csv")]
    assert [f.name for f in list_inputs(str(tmp_path), "jsonl")] == ["b.jsonl"]


@pytest.mark.parametrize("uri", ["pvc://claim/data.csv", "s3://bucket/data.csv"])
def test_inputs_refuse_schemes_the_pod_cannot_read(uri):
    with pytest.raises(UsageError):
        local_path(uri)


def test_http_input_needs_a_known_suffix_or_format():
    assert list_inputs("https://user:pw@example.com/d/scores.csv?sig=1")[0].name == "scores.csv"
    with pytest.raises(UsageError, match="--input-format"):
        list_inputs("https://example.com/export")
    assert list_inputs("https://example.com/export", "jsonl")[0].format == "jsonl"


@pytest.mark.parametrize("key_at", [0, 2, 4, None])
def test_numpy_reader_and_line_by_line_parse_give_the_same_chunk(key_at):
    rng = np.random.default_rng(9)
    values = rng.standard_normal((300, 4)) * rng.choice([1e-300, 1e-3, 1.0, 1e5, 1e300], size=(300, 1))
    names = ["a", "b", "c", "d"]
    header = names.copy()
    if key_at is not None:
        header.insert(key_at, "id")
    lines = [",".join(header)]
    for i, row in enumerate(values):
        fields = [repr(float(v)) for v in row] if i % 3 else [f"{v:.17g}" for v in row]
        if key_at is not None:
            fields.insert(key_at, f"k{i}")
        lines.append(",".join(fields))
    source = InputFile(0, "in.csv", "unused", "csv")
    reader = open_reader(source, io.StringIO("\r\n".join(lines) + "\r\n", newline=""), "id", None, 4)
    start, texts = next(reader.chunks(1000))
    fast, slow = reader.parse(start, texts), reader.parse(start, texts, fast=False)
    assert reader._parse_plain(start, texts) is not None  # the plain file takes numpy's reader
    assert fast.X.tobytes() == slow.X.tobytes() and fast.X.tobytes() == values.tobytes()
    assert (fast.keys, fast.lines, fast.rows, fast.bad) == (slow.keys, slow.lines, slow.rows, slow.bad)
    assert fast.keys[:2] == (["k0", "k1"] if key_at is not None else ["in.csv:2", "in.csv:3"])


@pytest.mark.parametrize(
    "text",
    [
        "id,a,b\nk1,1,2\n\nk2,3,4\n",  # a blank line
        "id,a,b\nk1,1,2,5\nk2,3\n",  # the comma total is right, the lines are not
        "a,b,id\n1,2,k1\n3,k2\n4,5,6,7\n",  # the same with the key last (no feature column missing)
        "id,a,b\nk1,1_0,2\n",  # float() takes underscores, numpy does not
    ],
)
def test_chunks_numpy_refuses_are_parsed_line_by_line(text):
    source = InputFile(0, "in.csv", "unused", "csv")
    reader = open_reader(source, io.StringIO(text, newline=""), "id", None, 2)
    start, texts = next(reader.chunks(1000))
    assert reader._parse_plain(start, texts) is None
    chunk, slow = reader.parse(start, texts), reader.parse(start, texts, fast=False)
    assert (chunk.keys, chunk.lines, chunk.rows, chunk.bad, chunk.X.tolist()) == (
        slow.keys, slow.lines, slow.rows, slow.bad, slow.X.tolist())


def test_json_lines_fast_join_equals_one_dumps_per_row():
    import orjson

    from slotkeeper_serving.batch.runner import json_lines

    keys = ['a},{"key":1', 'quote " and \\ backslash', "ünïcode", "", "},{", "k\n2"]
    rows = [{"key": key, "prediction": p} for key, p in zip(keys, [1, 2.5, "yes", [0.1, 0.9], None, True])]
    expected = b"".join(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE) for row in rows)
    assert json_lines(rows, plain=True) == expected == json_lines(rows)
    assert json_lines([], plain=True) == b""
