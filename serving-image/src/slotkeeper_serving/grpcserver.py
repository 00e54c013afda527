"""Open Inference Protocol v2 over gRPC: KServe's inference.GRPCInferenceService on its own port.

The gRPC server shares the HTTP app's model, readiness, keys and metrics. Its
handlers run on gRPC's threads and hand each call to the app's event loop,
where the very code of the HTTP infer lane answers it, so both protocols give
the same answers and every ModelInfer is counted like an HTTP infer request.
Tensors arrive as `contents` or `raw_input_contents`; outputs always go back
as `raw_output_contents` (as Triton does; clients decode both).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from . import __version__
from .binarydata import binary_to_array
from .grpc_v2 import grpc_predict_v2_pb2 as pb
from .grpc_v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from .keys import presented_key
from .models import ModelError
from .protocol import (
    DATATYPES,
    InferRequest,
    NotFound,
    NotReady,
    ProtocolError,
    Tensor,
    _data_to_array,
    _decode_shape,
    tensor_bytes,
)

if TYPE_CHECKING:
    from .app import ServingApp

log = logging.getLogger(__name__)

_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def _param_value(param: pb.InferParameter) -> Any:
    which = param.WhichOneof("parameter_choice")
    return getattr(param, which) if which else None


def decode_request(message: pb.ModelInferRequest) -> InferRequest:
    """A ModelInferRequest -> the InferRequest the HTTP lane builds, validated the same way."""
    if not message.inputs:
        raise ProtocolError("'inputs' must be a non-empty array of tensors")
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise ProtocolError(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs; send one per input or none"
        )
    inputs = []
    for i, tensor in enumerate(message.inputs):
        if not tensor.name:
            raise ProtocolError(f"inputs[{i}].name must be a non-empty string")
        where = f"input {tensor.name!r}"
        datatype = tensor.datatype
        if datatype not in DATATYPES:
            raise ProtocolError(f"{where}: datatype must be one of {', '.join(DATATYPES)}, got {datatype!r}")
        shape = _decode_shape(list(tensor.shape), where)
        if raw:
            array = binary_to_array(memoryview(raw[i]), datatype, shape, where)
        else:
            field = _CONTENTS_FIELD.get(datatype)
            if field is None:
                raise ProtocolError(f"{where}: {datatype} has no 'contents' field; send it in raw_input_contents")
            values = list(getattr(tensor.contents, field))
            if datatype == "BYTES":
                try:
                    values = [v.decode("utf-8") for v in values]
                except UnicodeDecodeError:
                    raise ProtocolError(f"{where}: a BYTES element is not valid UTF-8") from None
            array = _data_to_array(values, datatype, where)
            count = int(np.prod(shape)) if shape else 1
            if array.size != count:
                raise ProtocolError(f"{where}: shape {list(shape)} needs {count} elements, contents has {array.size}")
            array = array.reshape(shape)
        inputs.append(Tensor(name=tensor.name, datatype=datatype, shape=shape, array=array))
    names = [t.name for t in inputs]
    if len(set(names)) != len(names):
        raise ProtocolError("input names must be unique")
    outputs = tuple(o.name for o in message.outputs) or None
    if outputs is not None and not all(outputs):
        raise ProtocolError("every requested output needs a name")
    parameters = {k: _param_value(v) for k, v in message.parameters.items()}
    return InferRequest(id=message.id or None, inputs=tuple(inputs), output_names=outputs, parameters=parameters)


def encode_response(name: str, version: str, request_id: str | None, outputs: list[dict]) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=name, model_version=version, id=request_id or "")
    for output in outputs:
        array = getattr(output, "array", None)
        if array is None:
            array = np.asarray(output["data"])
        response.outputs.add(name=output["name"], datatype=output["datatype"], shape=output["shape"])
        response.raw_output_contents.append(tensor_bytes(output["datatype"], array))
    return response


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, app: ServingApp, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.loop = loop

    # ------------------------------------------------------------ helpers

    def _authorize(self, context) -> None:
        keyring = self.app.keyring
        if keyring is None:
            return
        headers = [(k.encode(), v.encode() if isinstance(v, str) else v) for k, v in context.invocation_metadata()]
        if not keyring.accepts(presented_key(headers)):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid endpoint key is required: authorization: Bearer <key>")

    def _check_model(self, name: str, version: str) -> None:
        slot = self.app.slot
        if name != slot.name:
            raise NotFound(f"unknown model {name!r}")
        if version and version != slot.version:
            raise NotFound(f"model {name!r} has no version {version!r}")

    @staticmethod
    def _abort(context, exc: ProtocolError) -> None:
        context.abort(_STATUS.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT), exc.message)

    # ------------------------------------------------------------ RPCs

    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.app._not_ready_reason() is None)

    def ModelReady(self, request, context):
        try:
            self._check_model(request.name, request.version)
        except ProtocolError as exc:
            self._abort(context, exc)
        return pb.ModelReadyResponse(ready=self.app._not_ready_reason() is None)

    def ServerMetadata(self, request, context):
        from .app import EXTENSIONS, SERVER_NAME

        self._authorize(context)
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)

    def ModelMetadata(self, request, context):
        self._authorize(context)
        try:
            self._check_model(request.name, request.version)
        except ProtocolError as exc:
            self._abort(context, exc)
        doc = self.app.slot.metadata()
        response = pb.ModelMetadataResponse(name=doc["name"], versions=doc["versions"], platform=doc["platform"])
        for kind in ("inputs", "outputs"):
            for tensor in doc[kind]:
                getattr(response, kind).add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        return response

    def ModelInfer(self, request, context):
        self._authorize(context)
        try:
            self._check_model(request.model_name, request.model_version)
        except ProtocolError as exc:
            self._abort(context, exc)  # unknown models are not recorded, as over HTTP
        future = asyncio.run_coroutine_threadsafe(self._infer(request), self.loop)
        status, result = future.result()
        if status is not None:
            context.abort(status, result)
        return result

    async def _infer(self, message) -> tuple[grpc.StatusCode | None, Any]:
        app = self.app
        metrics = app.metrics
        started = time.perf_counter()
        metrics.in_flight.inc()
        ok = False
        try:
            slot = app.slot
            if not slot.ready:
                raise NotReady(f"model {slot.name!r} is not ready ({slot.state})")
            request = decode_request(message)
            model = slot.model
            outputs = model.infer_inline(request)
            if outputs is None:
                outputs = await model.infer(request)
            response = encode_response(slot.name, slot.version, request.id, outputs)
            ok = True
            return None, response
        except ProtocolError as exc:
            return _STATUS.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT), exc.message
        except ModelError as exc:
            log.warning("model error: %s", exc)
            return grpc.StatusCode.INTERNAL, str(exc)
        except Exception:
            log.exception("unexpected error in gRPC infer")
            return grpc.StatusCode.INTERNAL, "internal error"
        finally:
            metrics.in_flight.dec()
            metrics.record(ok, time.perf_counter() - started)


def start(app: ServingApp, loop: asyncio.AbstractEventLoop, host: str, port: int, max_message: int) -> tuple[grpc.Server, int]:
    """Start the gRPC server; (server, bound port)."""
    server = grpc.server(
        ThreadPoolExecutor(max_workers=32, thread_name_prefix="slotkeeper-grpc"),
        options=[
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 1),  # workers > 1 share the port, as uvicorn's workers share the HTTP one
        ],
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(app, loop), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = server.add_insecure_port(address)
    if not bound:
        raise RuntimeError(f"cannot bind the gRPC port {address}")
    server.start()
    log.info("gRPC (inference.GRPCInferenceService) listening on %s", f"{host}:{bound}")
    return server, bound
