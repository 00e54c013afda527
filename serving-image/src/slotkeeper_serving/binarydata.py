"""The binary tensor data extension (Triton's and KServe's ``Inference-Header-Content-Length``
form): the raw bytes of the inputs after the JSON part of a request, and of the outputs after the
JSON part of an answer. protocol.py parses the JSON part and calls on this for the bytes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .tensors import DATATYPES, InferRequest, ProtocolError, Tensor, as_text

# The header of the binary tensor data extension: the length of the JSON part.
BINARY_HEADER = "inference-header-content-length"
BINARY_EXTENSION = "binary_tensor_data"
# The binary extension's byte order, made once: newbyteorder() builds a new dtype on every call.
_WIRE_DTYPES = {name: dtype.newbyteorder("<") for name, dtype in DATATYPES.items() if name != "BYTES"}


# A client of the binary extension sends the same JSON part with every request of one shape
# (tritonclient does): once one parsed and validated in full, the next ones with the very same
# bytes skip orjson and the checks, and only their binary data is read (sizes checked, as below).
# Headers with an "id" differ per request and are not kept; nor are those with any JSON "data".
_BINARY_HEADERS: dict[bytes, _BinaryHeader] = {}
BINARY_HEADERS_KEPT = 256


# The datatypes whose wire form is this host's own (fixed width, little-endian host), not BOOL: their
# arrays are a plain copy of the bytes. BOOL's bytes need checking, BYTES' parsing.
_COPIED_DTYPES = {
    name: dtype for name, dtype in _WIRE_DTYPES.items() if name != "BOOL" and dtype == DATATYPES[name]
}


@dataclass(frozen=True, slots=True)
class _BinaryInput:
    name: str
    datatype: str
    shape: tuple[int, ...]
    size: int


@dataclass(frozen=True, slots=True)
class _BinaryHeader:
    inputs: tuple[_BinaryInput, ...]
    output_names: tuple[str, ...] | None
    parameters: dict[str, Any]
    binary_default: bool
    output_binary: dict[str, bool] | None
    # The sum of the inputs' binary_data_size, if every input is of a _COPIED_DTYPES datatype, else None.
    copied_size: int | None

    def bind(self, binary: memoryview) -> InferRequest:
        if len(binary) == self.copied_size:
            tensors = self._copied(binary)
        else:
            reader = BinaryReader(binary)
            tensors = []
            for spec in self.inputs:
                where = f"input {spec.name!r}"
                array = binary_to_array(reader.take(spec.size, where), spec.datatype, spec.shape, where)
                tensors.append(Tensor(spec.name, spec.datatype, spec.shape, array))
            reader.finish()
        return InferRequest(
            None,
            tuple(tensors),
            self.output_names,
            dict(self.parameters),  # each request its own: a model may add to it
            self.binary_default,
            self.output_binary,
        )

    def _copied(self, binary: memoryview) -> list[Tensor]:
        # What the loop above would give without its checks, which cannot fail here: this header's
        # first request passed them, so each size is its shape's byte count (binary_to_array), and the
        # body has exactly their sum (so no take() runs short, nothing is left for finish()).
        tensors = []
        offset = 0
        for spec in self.inputs:
            end = offset + spec.size
            # A copy (the body buffer is read-only and may be reused), in a buffer of its own so it is aligned.
            array = np.frombuffer(bytearray(binary[offset:end]), _COPIED_DTYPES[spec.datatype]).reshape(spec.shape)
            tensors.append(Tensor(spec.name, spec.datatype, spec.shape, array))
            offset = end
        return tensors


def remember_header(header: bytes, raw_inputs: list[Any], request: InferRequest) -> None:
    """Keep the JSON part of a request that parsed in full (without an id: protocol.py), if every
    input's data is binary: JSON data was checked with its values, which differ per request."""
    if not all("binary_data_size" in (raw.get("parameters") or {}) for raw in raw_inputs):
        return
    inputs = tuple(
        _BinaryInput(t.name, t.datatype, t.shape, raw["parameters"]["binary_data_size"])
        for t, raw in zip(request.inputs, raw_inputs, strict=True)
    )
    if len(_BINARY_HEADERS) >= BINARY_HEADERS_KEPT:  # many shapes or clients: start again
        _BINARY_HEADERS.clear()
    copied = all(spec.datatype in _COPIED_DTYPES for spec in inputs)
    _BINARY_HEADERS[header] = _BinaryHeader(
        inputs, request.output_names, dict(request.parameters), request.binary_default, request.output_binary,
        sum(spec.size for spec in inputs) if copied else None,
    )


def remembered(header: bytes) -> _BinaryHeader | None:
    """The JSON part of an earlier request with these very bytes, parsed and validated in full."""
    return _BINARY_HEADERS.get(header)


class BinaryReader:
    """Hands out the binary part of a request body, input by input, and checks nothing is left over."""

    def __init__(self, data: memoryview | None) -> None:
        self.data = data
        self.offset = 0

    def take(self, size: int, where: str) -> memoryview:
        if self.data is None:
            raise ProtocolError(
                f"{where}: 'binary_data_size' is set but the request has no Inference-Header-Content-Length "
                "header, so there is no binary data"
            )
        left = len(self.data) - self.offset
        if size > left:
            raise ProtocolError(
                f"{where}: binary_data_size is {size} but only {left} bytes of binary data are left in the body"
            )
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def finish(self) -> None:
        if self.data is not None and self.offset != len(self.data):
            extra = len(self.data) - self.offset
            raise ProtocolError(
                f"the body has {extra} bytes of binary data after the last input's binary_data_size; "
                "the sizes must add up to the body length minus Inference-Header-Content-Length"
            )


def binary_to_array(chunk: memoryview, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        return _binary_bytes(chunk, count, where).reshape(shape)
    dtype = _WIRE_DTYPES[datatype]
    expected = count * dtype.itemsize
    if len(chunk) != expected:
        raise ProtocolError(
            f"{where}: shape {list(shape)} of {datatype} needs {expected} bytes of binary data "
            f"({count} x {dtype.itemsize}), binary_data_size is {len(chunk)}"
        )
    if datatype == "BOOL":
        raw = np.frombuffer(chunk, dtype=np.uint8)
        if raw.size and raw.max() > 1:
            raise ProtocolError(f"{where}: BOOL binary data must be bytes 0 or 1")
        return raw.astype(np.bool_).reshape(shape)
    # A copy in native byte order: the body buffer is read-only and may be reused.
    array = np.frombuffer(chunk, dtype=dtype).astype(DATATYPES[datatype])
    return array.reshape(shape)


def _binary_bytes(chunk: memoryview, count: int, where: str) -> np.ndarray:
    # Each element: a 4-byte little-endian length, then that many bytes.
    data = bytes(chunk)
    items: list[str] = []
    offset, end = 0, len(data)
    for i in range(count):
        if offset + 4 > end:
            raise ProtocolError(
                f"{where}: BYTES binary data ends before element {i} of {count} (no room for its 4-byte length)"
            )
        length = int.from_bytes(data[offset : offset + 4], "little")
        offset += 4
        if offset + length > end:
            raise ProtocolError(
                f"{where}: BYTES element {i} declares {length} bytes but only {end - offset} are left"
            )
        try:
            items.append(data[offset : offset + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise ProtocolError(f"{where}: BYTES element {i} is not valid UTF-8 (this server passes BYTES as text)") from None
        offset += length
    if offset != end:
        raise ProtocolError(f"{where}: {end - offset} bytes of BYTES binary data left after {count} elements")
    if not items:
        return np.empty(0, dtype=np.str_)
    return np.array(items, dtype=np.str_)


def tensor_bytes(datatype: str, array: np.ndarray) -> bytes:
    """The binary tensor data extension's form of an array: row-major little-endian; BYTES length-prefixed."""
    if datatype == "BYTES":
        parts = []
        for item in array.reshape(-1).tolist():
            raw = item if isinstance(item, bytes) else as_text(item).encode("utf-8")
            parts.append(len(raw).to_bytes(4, "little"))
            parts.append(raw)
        return b"".join(parts)
    if datatype == "BOOL":
        return np.ascontiguousarray(array, dtype=np.bool_).tobytes()
    wire = _WIRE_DTYPES[datatype]
    if array.dtype == wire and array.flags.c_contiguous:  # the common case on little-endian hosts
        return array.tobytes()
    return np.ascontiguousarray(array, dtype=wire).tobytes()
