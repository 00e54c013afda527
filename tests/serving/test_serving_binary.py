"""Binary tensor data extension (Inference-Header-Content-Length) over real HTTP, and with tritonclient.http."""

from __future__ import annotations

import math
import struct

import numpy as np
import orjson
import pytest

from slotkeeper_serving import binarydata, protocol
from slotkeeper_serving.protocol import (
    DATATYPES,
    ProtocolError,
    encode_tensor,
    parse_infer_request,
    tensor_bytes,
)

FIXED = [name for name in DATATYPES if name != "BYTES"]


def sample(datatype: str) -> np.ndarray:
    """2x3 values spanning the datatype's range (extremes included)."""
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    dtype = DATATYPES[datatype]
    if datatype == "BYTES":
        return np.array([["a", "", "héllo"], ["x" * 300, "0", "ünï"]])
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([[info.min, info.max, 0], [1, info.max - 1, info.min + 1]], dtype=dtype)
    info = np.finfo(dtype)
    return np.array([[info.max, info.tiny, -0.0], [1 / 3, -2.5e-3, info.min]], dtype=dtype)


def binary_body(tensors: dict[str, np.ndarray], datatypes: dict[str, str], **extra) -> tuple[bytes, int]:
    inputs, parts = [], []
    for name, array in tensors.items():
        raw = tensor_bytes(datatypes[name], array)
        parts.append(raw)
        inputs.append({"name": name, "shape": list(array.shape), "datatype": datatypes[name],
                       "parameters": {"binary_data_size": len(raw)}})
    header = orjson.dumps({"inputs": inputs, **extra})
    return header + b"".join(parts), len(header)


def json_body(tensors: dict[str, np.ndarray], datatypes: dict[str, str], **extra) -> bytes:
    return orjson.dumps({"inputs": [encode_tensor(name, a) | {"datatype": datatypes[name]}
                                    for name, a in tensors.items()], **extra})


def read_binary_response(response) -> tuple[dict, dict[str, bytes]]:
    length = int(response.headers["inference-header-content-length"])
    doc = orjson.loads(response.content[:length])
    raw, offset = {}, length
    for output in doc["outputs"]:
        if "data" in output:
            continue
        size = output["parameters"]["binary_data_size"]
        raw[output["name"]] = response.content[offset: offset + size]
        offset += size
    assert offset == len(response.content)
    return doc, raw


# ---------------------------------------------------------------- pure parsing


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_binary_and_json_requests_parse_to_identical_arrays(datatype):
    array = sample(datatype)
    body, length = binary_body({"x": array}, {"x": datatype})
    from_binary = parse_infer_request(body, length).inputs[0].array
    from_json = parse_infer_request(json_body({"x": array}, {"x": datatype})).inputs[0].array
    assert from_binary.dtype == from_json.dtype == (array.dtype if datatype != "BYTES" else from_json.dtype)
    assert from_binary.shape == from_json.shape == array.shape
    assert from_binary.tobytes() == from_json.tobytes()  # bit for bit, -0.0 included


def test_big_endian_hosts_are_not_assumed():
    array = np.arange(6, dtype=np.int32).reshape(2, 3)
    raw = struct.pack("<6i", *range(6))
    assert tensor_bytes("INT32", array) == raw
    header = orjson.dumps({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "INT32",
                                       "parameters": {"binary_data_size": 24}}]})
    assert parse_infer_request(header + raw, len(header)).inputs[0].array.tolist() == array.tolist()


def _one(shape, datatype, size, payload, **params):
    header = orjson.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": datatype,
                                       "parameters": {"binary_data_size": size, **params}}]})
    return header + payload, len(header)


@pytest.mark.parametrize(
    "body, length, message",
    [
        (*_one([2], "FP32", 8, b"\0" * 4), "only 4 bytes of binary data are left"),
        (*_one([1], "FP32", 4, b"\0" * 8), "4 bytes of binary data after the last input"),
        (*_one([3], "FP32", 8, b"\0" * 8), "needs 12 bytes of binary data"),
        (*_one([2], "FP32", -1, b""), "'binary_data_size' must be a non-negative integer"),
        (*_one([2], "FP32", "8", b"\0" * 8), "'binary_data_size' must be a non-negative integer"),
        (*_one([2], "BOOL", 2, b"\x01\x02"), "BOOL binary data must be bytes 0 or 1"),
        (*_one([1], "BYTES", 3, b"\x05\0\0"), "no room for its 4-byte length"),
        (*_one([1], "BYTES", 6, b"\x05\0\0\0ab"), "declares 5 bytes but only 2 are left"),
        (*_one([1], "BYTES", 6, b"\x02\0\0\0\xff\xfe"), "not valid UTF-8"),
        (*_one([1], "BYTES", 7, b"\x02\0\0\0abc"), "1 bytes of BYTES binary data left after 1 elements"),
        (b'{"inputs": []}', 400, "Inference-Header-Content-Length is 400 but the body has only 14 bytes"),
        (b'\x00\x00', 0, "Inference-Header-Content-Length is 0"),
    ],
)
def test_malformed_binary_bodies_name_the_problem(body, length, message):
    with pytest.raises(ProtocolError) as caught:
        parse_infer_request(body, length)
    assert caught.value.status == 400
    assert message in caught.value.message


def _header_of(shape, datatype, size):
    return orjson.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": datatype,
                                     "parameters": {"binary_data_size": size}}]})


@pytest.mark.parametrize(
    "shape, datatype, size, valid, malformed, message",
    [
        ([2], "FP32", 8, b"\0" * 8, b"\0" * 4, "only 4 bytes of binary data are left"),
        ([1], "FP32", 4, b"\0" * 4, b"\0" * 8, "4 bytes of binary data after the last input"),
        ([2], "BOOL", 2, b"\x01\x00", b"\x01\x02", "BOOL binary data must be bytes 0 or 1"),
        ([1], "BYTES", 6, b"\x02\0\0\0ab", b"\x05\0\0\0ab", "declares 5 bytes but only 2 are left"),
        ([1], "BYTES", 6, b"\x02\0\0\0ab", b"\x02\0\0\0\xff\xfe", "not valid UTF-8"),
        ([1], "BYTES", 7, b"\x03\0\0\0abc", b"\x02\0\0\0abc", "1 bytes of BYTES binary data left after 1 elements"),
    ],
)
def test_a_remembered_header_checks_every_body_as_a_first_parse_does(shape, datatype, size, valid, malformed, message):
    header = _header_of(shape, datatype, size)
    parse_infer_request(header + valid, len(header))
    assert header in binarydata._BINARY_HEADERS  # the malformed body below meets the remembered header
    with pytest.raises(ProtocolError) as caught:
        parse_infer_request(header + malformed, len(header))
    assert caught.value.status == 400 and message in caught.value.message


def test_a_repeated_binary_header_is_decoded_once_and_gives_the_same_request(monkeypatch):
    array = sample("FP32")
    body, length = binary_body({"x": array}, {"x": "FP32"}, parameters={"binary_data_output": True, "note": 1},
                               outputs=[{"name": "predict", "parameters": {"binary_data": False}}])
    first = parse_infer_request(body, length)

    def no_json(*_):
        raise AssertionError("the JSON part was decoded again")

    monkeypatch.setattr(protocol.orjson, "loads", no_json)
    second = parse_infer_request(body[:length] + tensor_bytes("FP32", array / 2), length)
    assert second.inputs[0].array.tobytes() == (array / 2).tobytes()
    assert second.inputs[0].array.dtype == first.inputs[0].array.dtype and second.inputs[0].shape == (2, 3)
    assert (second.output_names, second.binary_default, second.output_binary) == (
        first.output_names, first.binary_default, first.output_binary) == (("predict",), True, {"predict": False})
    assert second.parameters == first.parameters and second.parameters is not first.parameters


@pytest.mark.parametrize(
    "extra",
    [pytest.param({"id": "r-1"}, id="with-an-id"), pytest.param({"json_input": True}, id="with-json-data")],
)
def test_headers_that_change_per_request_are_not_remembered(extra):
    inputs = [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]
    if extra.pop("json_input", False):
        inputs.append({"name": "y", "shape": [1], "datatype": "FP32", "data": [0.5]})
    header = orjson.dumps({"inputs": inputs, **extra})
    request = parse_infer_request(header + b"\0" * 4, len(header))
    assert len(request.inputs) == len(inputs)
    assert header not in binarydata._BINARY_HEADERS


def test_the_remembered_headers_are_bounded(monkeypatch):
    monkeypatch.setattr(binarydata, "BINARY_HEADERS_KEPT", 3)
    binarydata._BINARY_HEADERS.clear()
    for n in range(1, 8):
        header = _header_of([n], "FP32", 4 * n)
        parse_infer_request(header + b"\0" * 4 * n, len(header))
        assert len(binarydata._BINARY_HEADERS) <= 3


@pytest.mark.parametrize("datatype", [name for name in FIXED if name != "BOOL"])
def test_a_remembered_header_copies_binary_data_as_the_checked_path_does(datatype):
    tensors = {"x": sample(datatype), "empty": np.empty((0, 3), dtype=DATATYPES[datatype]),
               "y": sample(datatype)[:1, 1:]}
    body, length = binary_body(tensors, dict.fromkeys(tensors, datatype))
    first = parse_infer_request(body, length)  # checked in full, then remembered
    assert binarydata._BINARY_HEADERS[body[:length]].copied_size == len(body) - length
    second = parse_infer_request(body, length)  # copied, the checks having nothing left to catch
    for a, b in zip(first.inputs, second.inputs, strict=True):
        assert (a.name, a.datatype, a.shape) == (b.name, b.datatype, b.shape)
        assert b.array.dtype == a.array.dtype == DATATYPES[datatype] and b.array.shape == a.array.shape
        assert b.array.tobytes() == a.array.tobytes()
        flags = b.array.flags
        assert flags.writeable and flags.aligned and flags.c_contiguous


def test_headers_with_bool_or_bytes_inputs_are_not_copied_unchecked():
    for datatype in ("BOOL", "BYTES"):
        body, length = binary_body({"x": sample(datatype)}, {"x": datatype})
        parse_infer_request(body, length)
        assert binarydata._BINARY_HEADERS[body[:length]].copied_size is None


def _expected_answer(model_version, outputs):
    doc = {"model_name": "m", **({"model_version": model_version} if model_version else {}),
           "outputs": [{"name": o["name"], "shape": o["shape"], "datatype": o["datatype"],
                        "parameters": {"binary_data_size": len(tensor_bytes(o["datatype"], o.array))}}
                       for o in outputs]}
    header = orjson.dumps(doc)
    return header + b"".join(tensor_bytes(o["datatype"], o.array) for o in outputs), len(header)


def test_remembered_answer_headers_give_the_bytes_a_fresh_encoding_does():
    request = parse_infer_request(*binary_body({"x": sample("FP32")}, {"x": "FP32"},
                                               parameters={"binary_data_output": True}))
    protocol._ANSWER_HEADERS.clear()
    cases = [
        ("", [encode_tensor("predict", np.array([1, 0]), binary=True)]),
        ("", [encode_tensor("predict", np.array([1, 0, 1]), binary=True)]),  # another shape
        ("", [encode_tensor("predict", np.array([1.5, 0.5]), binary=True)]),  # another datatype
        ("", [encode_tensor("predict", np.array(["ab", "c"]), binary=True)]),  # same shape, BYTES sizes differ:
        ("", [encode_tensor("predict", np.array(["abc", "d"]), binary=True)]),
        ("", [encode_tensor("other", np.array([1, 0]), binary=True)]),  # another name
        ("2", [encode_tensor("predict", np.array([1, 0]), binary=True)]),  # a version
        ("", [encode_tensor("predict", np.array([[1, 0]]), binary=True),
              encode_tensor("proba", np.array([[0.25, 0.75]]), binary=True)]),
    ]
    for _ in range(2):  # made, then remembered
        for version, outputs in cases:
            assert protocol.encode_answer("m", version, None, outputs, request) == _expected_answer(version, outputs)
    assert len(protocol._ANSWER_HEADERS) == len(cases)


def test_answers_with_an_id_or_json_outputs_are_not_remembered():
    mixed = parse_infer_request(*binary_body({"x": sample("FP32")}, {"x": "FP32"},
                                             parameters={"binary_data_output": True},
                                             outputs=[{"name": "a"},
                                                      {"name": "b", "parameters": {"binary_data": False}}]))
    protocol._ANSWER_HEADERS.clear()
    outputs = [encode_tensor("a", np.array([1]), binary=True), encode_tensor("b", np.array([2]))]
    body, length = protocol.encode_answer("m", "", None, outputs, mixed)
    assert orjson.loads(body[:length])["outputs"][1]["data"] == [2]
    assert body[length:] == tensor_bytes("INT64", np.array([1]))
    body, length = protocol.encode_answer("m", "", "r-1", outputs[:1], mixed)
    assert orjson.loads(body[:length])["id"] == "r-1"
    assert not protocol._ANSWER_HEADERS


def test_the_remembered_answer_headers_are_bounded(monkeypatch):
    monkeypatch.setattr(protocol, "ANSWER_HEADERS_KEPT", 3)
    protocol._ANSWER_HEADERS.clear()
    request = parse_infer_request(*binary_body({"x": sample("FP32")}, {"x": "FP32"},
                                               parameters={"binary_data_output": True}))
    for n in range(1, 8):
        outputs = [encode_tensor("predict", np.arange(n), binary=True)]
        assert protocol.encode_answer("m", "", None, outputs, request) == _expected_answer("", outputs)
        assert len(protocol._ANSWER_HEADERS) <= 3


def test_a_binary_output_tensor_carries_its_array_and_no_json_data():
    encoded = encode_tensor("predict", np.array([[0.5, math.nan]]), binary=True)
    assert encoded == {"name": "predict", "shape": [1, 2], "datatype": "FP64"}
    assert encoded.array.tobytes() == np.array([[0.5, math.nan]]).tobytes()


def test_binary_data_size_without_the_header_is_refused():
    header = orjson.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
                                       "parameters": {"binary_data_size": 4}}]})
    with pytest.raises(ProtocolError, match="no Inference-Header-Content-Length header"):
        parse_infer_request(header)


def test_data_and_binary_data_size_together_are_refused():
    header = orjson.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0],
                                       "parameters": {"binary_data_size": 4}}]})
    with pytest.raises(ProtocolError, match="both 'data' and 'binary_data_size'"):
        parse_infer_request(header + b"\0" * 4, len(header))


# ---------------------------------------------------------------- over HTTP


class EchoModel:
    """Answers every input as an output of the same name and dtype (tests every datatype end to end)."""

    platform = "echo"

    def metadata(self):
        return {"inputs": [], "outputs": []}

    def infer_inline(self, request):
        return [encode_tensor(t.name, t.array) for t in request.inputs]

    async def infer(self, request):
        raise AssertionError("not reached")

    def close(self):
        pass


@pytest.fixture(scope="module")
def echo_server(start_server, model_files):
    return start_server(model_files["logreg"], model_name="echo", loader=lambda settings: EchoModel())


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_every_datatype_round_trips_in_binary_and_matches_json(echo_server, datatype):
    array = sample(datatype)
    url = echo_server.infer_url()
    body, length = binary_body({"x": array}, {"x": datatype}, parameters={"binary_data_output": True})
    response = echo_server.client.post(url, content=body, headers={"Inference-Header-Content-Length": str(length)})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    doc, raw = read_binary_response(response)
    assert doc["outputs"][0]["datatype"] == datatype and doc["outputs"][0]["shape"] == [2, 3]
    assert raw["x"] == tensor_bytes(datatype, array)
    # The same request as JSON, answered as JSON, says the same.
    as_json = echo_server.client.post(url, content=json_body({"x": array}, {"x": datatype}))
    assert as_json.status_code == 200
    assert "inference-header-content-length" not in as_json.headers
    out = as_json.json()["outputs"][0]
    assert out["datatype"] == datatype
    decoded = np.array(out["data"], dtype=DATATYPES[datatype]).reshape(2, 3)
    assert tensor_bytes(datatype, decoded) == raw["x"]


def test_per_output_binary_data_wins_and_mixes_with_json(echo_server):
    a, b = np.array([1.5, 2.5], dtype=np.float32), np.array([7, 8], dtype=np.int64)
    body, length = binary_body(
        {"a": a, "b": b}, {"a": "FP32", "b": "INT64"},
        parameters={"binary_data_output": True},
        outputs=[{"name": "a", "parameters": {"binary_data": False}}, {"name": "b"}],
    )
    response = echo_server.client.post(echo_server.infer_url(), content=body,
                                       headers={"Inference-Header-Content-Length": str(length)})
    assert response.status_code == 200, response.text
    doc, raw = read_binary_response(response)
    assert doc["outputs"][0] == {"name": "a", "shape": [2], "datatype": "FP32", "data": [1.5, 2.5]}
    assert raw == {"b": b.tobytes()}


def test_json_request_with_binary_output(credit_server, trained):
    X = np.random.default_rng(3).standard_normal((5, 4))
    request = {"inputs": [{"name": "input-0", "shape": [5, 4], "datatype": "FP64", "data": X.ravel().tolist()}],
               "outputs": [{"name": "predict_proba", "parameters": {"binary_data": True}}]}
    response = credit_server.client.post(credit_server.infer_url(), content=orjson.dumps(request))
    assert response.status_code == 200, response.text
    doc, raw = read_binary_response(response)
    expected = trained("logreg").predict_proba(X)
    assert doc["outputs"][0]["shape"] == [5, 2]
    assert raw["predict_proba"] == expected.astype("<f8").tobytes()


@pytest.mark.parametrize("datatype", ["FP64", "FP32"])
def test_binary_and_json_bodies_get_the_same_answer_from_a_model(credit_server, datatype):
    X = np.random.default_rng(4).standard_normal((16, 4)).astype(DATATYPES[datatype])
    url = credit_server.infer_url()
    for outputs in (None, [{"name": "predict"}, {"name": "predict_proba"}]):
        extra = {"outputs": outputs} if outputs else {}
        body, length = binary_body({"input-0": X}, {"input-0": datatype}, **extra)
        binary = credit_server.client.post(url, content=body, headers={"Inference-Header-Content-Length": str(length)})
        plain = credit_server.client.post(url, content=json_body({"input-0": X}, {"input-0": datatype}, **extra))
        assert binary.status_code == plain.status_code == 200
        assert binary.content == plain.content  # JSON answers, byte for byte


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_binary_input_is_refused_as_without_the_fast_path(credit_server, value):
    """JSON cannot carry NaN or inf, binary tensor data can: the linear fast path must not answer it."""
    assert credit_server.app.slot.model.has_fastpath
    X = np.array([[0.5, value, -1.0, 2.0]])
    body, length = binary_body({"input-0": X}, {"input-0": "FP64"})
    response = credit_server.client.post(credit_server.infer_url(), content=body,
                                         headers={"Inference-Header-Content-Length": str(length)})
    assert response.status_code == 400, response.text
    assert "the model rejected the input" in response.json()["error"]


def test_malformed_binary_bodies_are_400_over_http_and_count_as_failures(credit_server):
    url = credit_server.infer_url()
    before = credit_server.counts()
    body, length = _one([1, 4], "FP64", 32, b"\0" * 16)
    response = credit_server.client.post(url, content=body, headers={"Inference-Header-Content-Length": str(length)})
    assert response.status_code == 400
    assert "only 16 bytes of binary data are left" in response.json()["error"]
    response = credit_server.client.post(url, content=body, headers={"Inference-Header-Content-Length": "x1"})
    assert response.status_code == 400
    assert "invalid Inference-Header-Content-Length header" in response.json()["error"]
    response = credit_server.client.post(url, content=b"\x93NUMPY\x01\x00")
    assert response.status_code == 400
    assert "needs the Inference-Header-Content-Length header" in response.json()["error"]
    after = credit_server.counts()
    assert after["failure"] - before["failure"] == 3


@pytest.mark.parametrize("model", ["linreg", "tree"])  # float outputs on the fast path; the model thread
def test_binary_answers_carry_the_json_answers_values(start_server, model_files, model):
    server = start_server(model_files[model], model_name=model)
    url = server.infer_url()
    for rows in (1, 3, 1, 3):  # a shape again meets its remembered request and answer headers
        X = np.random.default_rng(rows).standard_normal((rows, 4))
        body, length = binary_body({"input-0": X}, {"input-0": "FP64"}, parameters={"binary_data_output": True})
        binary = server.client.post(url, content=body, headers={"Inference-Header-Content-Length": str(length)})
        plain = server.client.post(url, content=json_body({"input-0": X}, {"input-0": "FP64"}))
        assert binary.status_code == plain.status_code == 200, binary.text
        assert binary.headers["content-type"] == "application/octet-stream"
        assert int(binary.headers["content-length"]) == len(binary.content)
        doc, raw = read_binary_response(binary)
        (expected,) = plain.json()["outputs"]
        (output,) = doc["outputs"]
        assert {k: output[k] for k in ("name", "shape", "datatype")} == {
            k: expected[k] for k in ("name", "shape", "datatype")}
        assert raw[expected["name"]] == np.array(expected["data"], dtype=DATATYPES[expected["datatype"]]).tobytes()


def test_text_model_takes_binary_bytes(start_server, model_files, trained):
    server = start_server(model_files["text"], model_name="text")
    texts = np.array(["great value", "awful delay"])
    body, length = binary_body({"t": texts}, {"t": "BYTES"}, parameters={"binary_data_output": True})
    response = server.client.post(server.infer_url(), content=body,
                                  headers={"Inference-Header-Content-Length": str(length)})
    assert response.status_code == 200, response.text
    doc, raw = read_binary_response(response)
    assert raw["predict"] == trained("text").predict(texts).astype("<i8").tobytes()


# ---------------------------------------------------------------- tritonclient.http, default arguments


def test_tritonclient_http_with_default_arguments(credit_server, trained):
    httpclient = pytest.importorskip("tritonclient.http")
    client = httpclient.InferenceServerClient(credit_server.base_url.removeprefix("http://"))
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("credit")
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        assert client.get_model_metadata("credit")["name"] == "credit"
        X = np.random.default_rng(5).standard_normal((3, 4))
        model = trained("logreg")
        for dtype, datatype in ((np.float64, "FP64"), (np.float32, "FP32")):
            Xd = X.astype(dtype)
            tensor = httpclient.InferInput("input-0", list(Xd.shape), datatype)
            tensor.set_data_from_numpy(Xd)  # binary_data=True by default
            result = client.infer("credit", [tensor])  # no outputs: binary_data_output=true
            assert result.as_numpy("predict").tolist() == model.predict(Xd).tolist()
            wanted = [httpclient.InferRequestedOutput("predict_proba")]  # binary_data=True by default
            result = client.infer("credit", [tensor], outputs=wanted)
            got = result.as_numpy("predict_proba")
            assert got.tobytes() == model.predict_proba(Xd).astype(np.float64).tobytes()
    finally:
        client.close()
