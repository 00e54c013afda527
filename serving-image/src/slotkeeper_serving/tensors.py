"""The Open Inference Protocol's values, shared by the JSON codec (protocol.py), the binary tensor
data extension (binarydata.py) and the gRPC server: the errors a client can cause, the datatypes,
and a parsed request's tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


class ProtocolError(Exception):
    """The request is wrong; `status` is the HTTP status to answer with."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status

    @property
    def message(self) -> str:
        return str(self)


class PayloadTooLarge(ProtocolError):
    status = 413


class NotFound(ProtocolError):
    status = 404


class NotReady(ProtocolError):
    status = 503


# datatype -> numpy dtype
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.str_),
}


@dataclass(frozen=True, slots=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray  # already reshaped to `shape`, dtype of `datatype`


@dataclass(frozen=True, slots=True)
class InferRequest:
    id: str | None
    inputs: tuple[Tensor, ...]
    output_names: tuple[str, ...] | None  # None: the model's default outputs
    parameters: dict[str, Any]
    # Binary tensor data extension: outputs to answer in binary form. `binary_default`
    # is the request's `binary_data_output` parameter; `output_binary` the
    # per-output `binary_data` parameters, which win over it.
    binary_default: bool = False
    output_binary: dict[str, bool] | None = None

    def wants_binary(self, name: str) -> bool:
        if self.output_binary is not None and name in self.output_binary:
            return self.output_binary[name]
        return self.binary_default


def as_text(item: Any) -> str:
    """A BYTES element as text (this server passes BYTES as text)."""
    if isinstance(item, str):
        return item
    if isinstance(item, bytes):
        return item.decode("utf-8", errors="replace")
    return str(item)
