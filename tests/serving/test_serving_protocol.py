"""Request parsing and response encoding as pure functions."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from slotkeeper_serving.protocol import (
    ProtocolError,
    decode_tensor,
    encode_infer_response,
    encode_tensor,
    parse_infer_request,
)


def tensor(data, shape, datatype="FP64", name="x"):
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def test_parse_full_request():
    body = orjson.dumps(
        {"id": "7", "parameters": {"a": 1}, "inputs": [tensor([1, 2, 3, 4], [2, 2])], "outputs": [{"name": "predict"}]}
    )
    request = parse_infer_request(body)
    assert request.id == "7"
    assert request.parameters == {"a": 1}
    assert request.output_names == ("predict",)
    (x,) = request.inputs
    assert (x.name, x.datatype, x.shape) == ("x", "FP64", (2, 2))
    assert x.array.dtype == np.float64
    assert x.array.tolist() == [[1.0, 2.0], [3.0, 4.0]]


@pytest.mark.parametrize("data", [[[1, 2], [3, 4]], [1, 2, 3, 4], [[[1, 2]], [[3, 4]]]])
def test_nested_and_flat_data_give_the_same_tensor(data):
    assert decode_tensor(tensor(data, [2, 2]), 0).array.tolist() == [[1.0, 2.0], [3.0, 4.0]]


@pytest.mark.parametrize(
    ("datatype", "data", "dtype"),
    [
        ("BOOL", [True, False], np.bool_),
        ("UINT8", [0, 255], np.uint8),
        ("UINT64", [0, 2**64 - 1], np.uint64),
        ("INT8", [-128, 127], np.int8),
        ("INT32", [1, -2], np.int32),
        ("INT64", [-(2**63), 2**63 - 1], np.int64),
        ("FP16", [0.5, 2], np.float16),
        ("FP32", [0.1, 3], np.float32),
        ("FP64", [0.1, 3], np.float64),
        ("BYTES", ["a", "b"], np.str_),
    ],
)
def test_every_datatype_decodes_to_its_dtype(datatype, data, dtype):
    array = decode_tensor(tensor(data, [2], datatype), 0).array
    if datatype == "BYTES":
        assert array.dtype.kind == "U"
    else:
        assert array.dtype == np.dtype(dtype)
    assert array.tolist() == np.array(data, dtype=dtype).tolist()


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("INT8", [128], "out of range"),
        ("UINT8", [-1], "out of range"),
        ("UINT64", [-1, 2**64 - 1], "out of range"),
        ("UINT64", [0.5, 2**64 - 1], "does not match"),
        ("INT64", [2**63], "out of range"),
        ("INT32", [1.5], "does not match"),
        ("FP32", ["1.5"], "does not match"),
        ("FP32", [1e39], "out of range"),
        ("FP16", [70000.0], "out of range"),
        ("BOOL", [1], "does not match"),
        ("BYTES", [1], "does not match"),
        ("FP64", [None], "does not match"),
        ("FP64", [{"a": 1}], "does not match"),
        ("FP64", [[1, 2], [3]], "rectangular"),
        ("FP64", [1, [2]], "rectangular"),
        ("FP128", [1], "datatype must be one of"),
        (None, [1], "datatype must be one of"),
    ],
)
def test_data_that_does_not_fit_its_datatype_is_a_400(datatype, data, message):
    with pytest.raises(ProtocolError, match=message) as caught:
        decode_tensor(tensor(data, [len(data)], datatype), 0)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([3], "needs 3 elements"),
        ([2, 2, 2], "needs 8 elements"),
        ([-1, 4], "non-negative"),
        ([1.0, 4], "non-negative"),
        ([True, 4], "non-negative"),
        ("1,4", "must be an array"),
        (None, "must be an array"),
        ([1] * 33, "at most 32"),
    ],
)
def test_bad_shapes_are_a_400(shape, message):
    with pytest.raises(ProtocolError, match=message):
        decode_tensor(tensor([1, 2, 3, 4], shape), 0)


def test_huge_declared_shape_allocates_nothing():
    with pytest.raises(ProtocolError, match="elements"):
        decode_tensor(tensor([1], [10**12, 10**12]), 0)


def test_empty_tensor_keeps_its_shape_and_dtype():
    array = decode_tensor(tensor([], [0, 4], "INT32"), 0).array
    assert array.shape == (0, 4) and array.dtype == np.int32


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"NaN", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'"inputs"', "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b"{}", "'inputs' must be a non-empty array"),
        (b'{"inputs": []}', "'inputs' must be a non-empty array"),
        (b'{"inputs": {}}', "'inputs' must be a non-empty array"),
        (b'{"inputs": [1]}', "must be an object"),
        (b'{"inputs": [{"shape": [1], "datatype": "FP64", "data": [1]}]}', "name must be a non-empty string"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64"}]}', "'data' is missing"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": 1}]}', "'data' must be an array"),
        (
            b'{"id": 5, "inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1]}]}',
            "'id' must be a string",
        ),
        (
            b'{"parameters": [], "inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1]}]}',
            "'parameters' must be an object",
        ),
        (
            b'{"outputs": {}, "inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1]}]}',
            "'outputs' must be an array",
        ),
        (
            b'{"outputs": [{}], "inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1]}]}',
            "outputs\\[0\\]",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1]}, {"name": "x", "shape": [1], "datatype": "FP64", "data": [1]}]}',
            "unique",
        ),
    ],
)
def test_malformed_bodies_are_a_400(body, message):
    with pytest.raises(ProtocolError, match=message) as caught:
        parse_infer_request(body)
    assert caught.value.status == 400


def test_error_messages_do_not_echo_large_payloads():
    with pytest.raises(ProtocolError) as caught:
        decode_tensor({"name": "x", "shape": [1], "datatype": "Z" * 10_000, "data": [1]}, 0)
    assert len(str(caught.value)) < 300


@pytest.mark.parametrize(
    ("value", "datatype", "shape", "data"),
    [
        (np.array([1, 0], dtype=np.int64), "INT64", [2], [1, 0]),
        (np.array([[0.25, 0.75]]), "FP64", [1, 2], [0.25, 0.75]),
        (np.array([0.5], dtype=np.float32), "FP32", [1], [0.5]),
        (np.array(["yes", "no"], dtype=object), "BYTES", [2], ["yes", "no"]),
        (np.array(["yes"]), "BYTES", [1], ["yes"]),
        (np.array([True]), "BOOL", [1], [True]),
        (np.float64(3.5), "FP64", [1], [3.5]),
        ([[1, 2], [3, 4]], "INT64", [2, 2], [1, 2, 3, 4]),
    ],
)
def test_encode_tensor(value, datatype, shape, data):
    assert encode_tensor("out", value) == {"name": "out", "shape": shape, "datatype": datatype, "data": data}


def test_encode_non_finite_floats_as_null():
    encoded = encode_tensor("out", np.array([1.0, math.nan, math.inf]))
    assert encoded["data"] == [1.0, None, None]
    orjson.dumps(encoded)  # serializable


def test_response_omits_empty_version_and_missing_id():
    outputs = [encode_tensor("predict", np.array([1]))]
    assert orjson.loads(encode_infer_response("m", "", None, outputs)) == {"model_name": "m", "outputs": outputs}
    assert orjson.loads(encode_infer_response("m", "v", "i", outputs)) == {
        "model_name": "m",
        "model_version": "v",
        "id": "i",
        "outputs": outputs,
    }
