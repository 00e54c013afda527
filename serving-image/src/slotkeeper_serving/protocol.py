"""Open Inference Protocol v2 (REST) request parsing and response encoding (the JSON part; the
binary tensor data extension's bytes: binarydata.py).

Everything a client can get wrong raises a `ProtocolError` carrying the HTTP
status to answer with, so bad input is never a 500. Functions are pure:
bytes in, typed values (or bytes) out.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from .binarydata import BinaryReader, binary_to_array, remember_header, remembered, tensor_bytes
from .tensors import DATATYPES, InferRequest, ProtocolError, Tensor, as_text
# Imported from here by the app and the gRPC server (they live in binarydata.py and tensors.py).
from .binarydata import BINARY_EXTENSION  # noqa: F401, E402
from .tensors import NotFound, NotReady, PayloadTooLarge  # noqa: F401, E402

# The numpy "kinds" that JSON data may arrive as for each datatype (np.array() on JSON numbers gives
# int64/uint64/float64, on strings "U", on booleans "b"; anything else is "O" and never accepted).
_ACCEPTED_KINDS = {
    name: ("b" if name == "BOOL" else "iu" if name[0] in "IU" else "iuf" if name.startswith("FP") else "U")
    for name in DATATYPES
}
_INTEGER_INFO = {name: np.iinfo(dtype) for name, dtype in DATATYPES.items() if dtype.kind in "iu"}
_DTYPE_TO_DATATYPE = {dtype: name for name, dtype in DATATYPES.items() if name != "BYTES"}

MAX_DIMS = 32  # numpy's own limit is 64; nothing sane needs more


def parse_infer_request(body: bytes, json_length: int | None = None) -> InferRequest:
    """Parse and validate an infer request body into typed tensors.

    `json_length` is the Inference-Header-Content-Length header (binary tensor
    data extension): the body is that many bytes of JSON followed by the raw
    tensor data of every input whose parameters carry `binary_data_size`, in
    input order. None: the body is JSON only.
    """
    if not body:
        raise ProtocolError("request body is empty; expected a JSON object with 'inputs'")
    if json_length is None:
        header, binary = body, None
    else:
        if json_length > len(body):
            raise ProtocolError(
                f"Inference-Header-Content-Length is {json_length} but the body has only {len(body)} bytes"
            )
        header, binary = bytes(body[:json_length]), memoryview(body)[json_length:]
        known = remembered(header)
        if known is not None:
            return known.bind(binary)
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        hint = ""
        if json_length is None:
            hint = " (binary tensor data needs the Inference-Header-Content-Length header)"
        elif json_length == 0:
            hint = " (Inference-Header-Content-Length is 0)"
        raise ProtocolError(f"request body is not valid JSON: {exc}{hint}") from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"request body must be a JSON object, got {_json_type(doc)}")

    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("'id' must be a string")
    parameters = doc.get("parameters", {})
    if not isinstance(parameters, dict):
        raise ProtocolError("'parameters' must be an object")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise ProtocolError("parameter 'binary_data_output' must be a boolean")

    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("'inputs' must be a non-empty array of tensors")
    reader = BinaryReader(binary)
    inputs = tuple(decode_tensor(raw, i, reader) for i, raw in enumerate(raw_inputs))
    reader.finish()
    names = [t.name for t in inputs]
    if len(set(names)) != len(names):
        raise ProtocolError("input names must be unique")

    output_names = None
    output_binary = None
    raw_outputs = doc.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise ProtocolError("'outputs' must be an array of {\"name\": ...} objects")
        output_names = []
        for i, raw in enumerate(raw_outputs):
            if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
                raise ProtocolError(f"outputs[{i}] must be an object with a non-empty string 'name'")
            output_names.append(raw["name"])
            out_params = raw.get("parameters")
            if out_params is None:
                continue
            if not isinstance(out_params, dict):
                raise ProtocolError(f"outputs[{i}].parameters must be an object")
            if "binary_data" in out_params:
                flag = out_params["binary_data"]
                if not isinstance(flag, bool):
                    raise ProtocolError(f"outputs[{i}]: parameter 'binary_data' must be a boolean")
                if output_binary is None:
                    output_binary = {}
                output_binary[raw["name"]] = flag
        output_names = tuple(output_names)
    request = InferRequest(
        id=request_id,
        inputs=inputs,
        output_names=output_names,
        parameters=parameters,
        binary_default=binary_default,
        output_binary=output_binary,
    )
    if binary is not None and request_id is None:
        remember_header(header, raw_inputs, request)
    return request


def decode_tensor(raw: Any, index: int, reader: BinaryReader | None = None) -> Tensor:
    """One entry of 'inputs' -> Tensor, checking name, datatype, shape and data."""
    where = f"inputs[{index}]"
    if not isinstance(raw, dict):
        raise ProtocolError(f"{where} must be an object, got {_json_type(raw)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"{where}.name must be a non-empty string")
    where = f"input {name!r}"
    datatype = raw.get("datatype")
    if datatype not in DATATYPES:
        raise ProtocolError(f"{where}: datatype must be one of {', '.join(DATATYPES)}, got {_short(datatype)}")
    shape = _decode_shape(raw.get("shape"), where)
    params = raw.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise ProtocolError(f"{where}: 'parameters' must be an object")
    if params and "binary_data_size" in params:
        size = params["binary_data_size"]
        if type(size) is not int or size < 0:
            raise ProtocolError(f"{where}: 'binary_data_size' must be a non-negative integer, got {_short(size)}")
        if "data" in raw:
            raise ProtocolError(f"{where}: has both 'data' and 'binary_data_size'; send one")
        chunk = (reader or BinaryReader(None)).take(size, where)
        array = binary_to_array(chunk, datatype, shape, where)
        return Tensor(name=name, datatype=datatype, shape=shape, array=array)
    if "data" not in raw:
        raise ProtocolError(f"{where}: 'data' is missing")
    data = raw["data"]
    if not isinstance(data, list):
        raise ProtocolError(f"{where}: 'data' must be an array, got {_json_type(data)}")

    array = _data_to_array(data, datatype, where)
    expected = math.prod(shape)
    if array.size != expected:
        raise ProtocolError(f"{where}: shape {list(shape)} needs {expected} elements, data has {array.size}")
    return Tensor(name=name, datatype=datatype, shape=shape, array=array.reshape(shape))


def _decode_shape(shape: Any, where: str) -> tuple[int, ...]:
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise ProtocolError(f"{where}: 'shape' must be an array of at most {MAX_DIMS} non-negative integers")
    for dim in shape:
        # type() rather than isinstance(): JSON true must not pass as 1.
        if type(dim) is not int or dim < 0:
            raise ProtocolError(f"{where}: 'shape' must contain non-negative integers, got {_short(dim)}")
    return tuple(shape)


def _data_to_array(data: list, datatype: str, where: str) -> np.ndarray:
    target = DATATYPES[datatype]
    if not data:
        return np.empty(0, dtype=target)
    try:
        # Let numpy infer first: converting straight to the target dtype would
        # silently accept "1.5" strings, truncate floats to ints and wrap
        # integers that do not fit.
        array = np.array(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise ProtocolError(
            f"{where}: 'data' must be a flat or nested array of scalars with a rectangular shape"
        ) from None
    kind = array.dtype.kind
    if kind in "fO" and datatype in _INTEGER_INFO:
        # Integers above 2**63 next to negative or small ones make numpy
        # infer float64 or object; look at the Python values themselves.
        return _exact_integers(data, datatype, where)
    if kind not in _ACCEPTED_KINDS[datatype]:
        raise ProtocolError(f"{where}: data does not match datatype {datatype}")
    if array.dtype == target:
        return array
    if datatype in _INTEGER_INFO:
        info = _INTEGER_INFO[datatype]
        if array.min() < info.min or array.max() > info.max:
            raise ProtocolError(f"{where}: a value is out of range for {datatype}")
        return array.astype(target)
    if datatype == "BYTES":
        return array
    with np.errstate(over="ignore"):
        converted = array.astype(target)
    if target.itemsize < 8 and not np.isfinite(converted).all():
        raise ProtocolError(f"{where}: a value is out of range for {datatype}")
    return converted


def _exact_integers(data: list, datatype: str, where: str) -> np.ndarray:
    try:
        values = np.array(data, dtype=object)
    except (ValueError, TypeError, RecursionError):
        raise ProtocolError(
            f"{where}: 'data' must be a flat or nested array of scalars with a rectangular shape"
        ) from None
    flat = values.reshape(-1).tolist()
    if not all(type(v) is int for v in flat):
        raise ProtocolError(f"{where}: data does not match datatype {datatype}")
    info = _INTEGER_INFO[datatype]
    if min(flat) < info.min or max(flat) > info.max:
        raise ProtocolError(f"{where}: a value is out of range for {datatype}")
    return np.array(flat, dtype=DATATYPES[datatype]).reshape(values.shape)


def datatype_of(array: np.ndarray) -> str:
    if array.dtype.kind in "USO":
        return "BYTES"
    try:
        return _DTYPE_TO_DATATYPE[array.dtype]
    except KeyError:
        raise TypeError(f"no Open Inference Protocol datatype for numpy dtype {array.dtype}") from None


class OutputTensor(dict):
    """A v2 output tensor as JSON (a dict, serialized as is) that keeps its array for binary answers."""

    __slots__ = ("array",)


def encode_tensor(name: str, value: Any, *, binary: bool = False) -> dict[str, Any]:
    """A numpy array (or anything np.asarray takes) -> a v2 output tensor, data flattened row-major.

    binary: the request wants this output in binary form (InferRequest.wants_binary), so
    encode_answer sends the array's bytes and the tensor gets no JSON 'data'."""
    array = np.asarray(value)
    datatype = datatype_of(array)
    shape = list(array.shape) or [1]
    if binary:
        tensor = OutputTensor(name=name, shape=shape, datatype=datatype)
        tensor.array = array
        return tensor
    data = array.reshape(-1).tolist()
    if datatype == "BYTES":
        data = [as_text(item) for item in data]
    elif array.dtype.kind == "f" and not np.isfinite(array).all():
        # JSON has no NaN/Infinity; null is what other v2 servers emit.
        data = [x if math.isfinite(x) else None for x in data]
    tensor = OutputTensor(name=name, shape=shape, datatype=datatype, data=data)
    tensor.array = array
    return tensor


def encode_infer_response(
    model_name: str, model_version: str, request_id: str | None, outputs: list[dict[str, Any]]
) -> bytes:
    """A JSON-only infer response body."""
    return encode_answer(model_name, model_version, request_id, outputs)[0]


def encode_answer(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[dict[str, Any]],
    request: InferRequest | None = None,
) -> tuple[bytes, int | None]:
    """(body, json_length): json_length is None for a plain JSON body, else the
    Inference-Header-Content-Length of a body with binary output data appended."""
    binary_parts: list[bytes] = []
    known = None
    if request is not None and (request.binary_default or request.output_binary):
        # Each output's binary data, None for one in JSON; and, if all are binary and there is no id,
        # what the JSON part depends on (see _ANSWER_HEADERS).
        raws: list[bytes | None] = []
        key: list[Any] | None = [model_name, model_version] if request_id is None else None
        for output in outputs:
            array = getattr(output, "array", None)
            if array is None or not request.wants_binary(output["name"]):
                raws.append(None)
                key = None
                continue
            raw = tensor_bytes(output["datatype"], array)
            raws.append(raw)
            binary_parts.append(raw)
            if key is not None:
                key += (output["name"], output["datatype"], tuple(output["shape"]), len(raw))
        if key is not None and binary_parts:
            known = tuple(key)
            header = _ANSWER_HEADERS.get(known)
            if header is not None:
                return b"".join([header, *binary_parts]), len(header)
        outputs = [output if raw is None else _binary_output(output, len(raw)) for output, raw in zip(outputs, raws)]
    response: dict[str, Any] = {"model_name": model_name}
    if model_version:
        response["model_version"] = model_version
    if request_id is not None:
        response["id"] = request_id
    response["outputs"] = outputs
    header = orjson.dumps(response)
    if not binary_parts:
        return header, None
    if known is not None:
        if len(_ANSWER_HEADERS) >= ANSWER_HEADERS_KEPT:  # many shapes: start again
            _ANSWER_HEADERS.clear()
        _ANSWER_HEADERS[known] = header
    return b"".join([header, *binary_parts]), len(header)


# The JSON part of an answer whose outputs are all binary (and without an id) depends only on the
# model's name and version and each output's name, datatype, shape and byte count: made once per
# such key, as a client of one shape gets the same one with every answer.
_ANSWER_HEADERS: dict[tuple, bytes] = {}
ANSWER_HEADERS_KEPT = 256


def _binary_output(output: dict[str, Any], size: int) -> dict[str, Any]:
    """An output tensor's JSON in a binary answer: its data follows the JSON part."""
    return {
        "name": output["name"],
        "shape": output["shape"],
        "datatype": output["datatype"],
        "parameters": {"binary_data_size": size},
    }


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _short(value: Any) -> str:
    # Echo a little of what was sent, never a whole payload.
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
