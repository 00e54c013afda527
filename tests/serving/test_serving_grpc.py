"""OIP v2 over gRPC (inference.GRPCInferenceService) on its own port: stubs and tritonclient.grpc."""

from __future__ import annotations

import grpc
import numpy as np
import orjson
import pytest

from slotkeeper_serving.grpc_v2 import grpc_predict_v2_pb2 as pb
from slotkeeper_serving.grpc_v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from slotkeeper_serving.protocol import tensor_bytes

from .conftest import free_port


@pytest.fixture(scope="module")
def grpc_server(start_server, model_files):
    return start_server(model_files["logreg"], model_name="credit", model_version="rev1", grpc_port=free_port())


@pytest.fixture(scope="module")
def stub(grpc_server):
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_server.app.grpc_port}")
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def infer_message(X: np.ndarray, datatype: str, *, raw: bool, outputs=()) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="credit", id="r1")
    tensor = message.inputs.add(name="input-0", datatype=datatype, shape=list(X.shape))
    if raw:
        message.raw_input_contents.append(tensor_bytes(datatype, X))
    else:
        getattr(tensor.contents, {"FP64": "fp64_contents", "FP32": "fp32_contents"}[datatype]).extend(X.ravel().tolist())
    for name in outputs:
        message.outputs.add(name=name)
    return message


def test_health_and_metadata(stub, grpc_server):
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="credit")).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="credit", version="rev1")).ready
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="credit"))
    assert (meta.name, list(meta.versions), meta.platform) == ("credit", ["rev1"], "sklearn")
    assert list(meta.inputs[0].shape) == [-1, 4]
    server = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert server.name == "slotkeeper-serving" and "binary_tensor_data" in server.extensions
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelMetadata(pb.ModelMetadataRequest(name="other"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("raw", [True, False], ids=["raw_input_contents", "contents"])
@pytest.mark.parametrize("datatype", ["FP64", "FP32"])
def test_grpc_answers_equal_http_answers_bit_for_bit(stub, grpc_server, trained, raw, datatype):
    X = np.random.default_rng(6).standard_normal((7, 4)).astype(np.float64 if datatype == "FP64" else np.float32)
    response = stub.ModelInfer(infer_message(X, datatype, raw=raw, outputs=("predict", "predict_proba")))
    assert (response.model_name, response.model_version, response.id) == ("credit", "rev1", "r1")
    model = trained("logreg")
    assert [o.name for o in response.outputs] == ["predict", "predict_proba"]
    assert list(response.outputs[1].shape) == [7, 2]
    assert response.raw_output_contents[0] == model.predict(X).astype("<i8").tobytes()
    assert response.raw_output_contents[1] == model.predict_proba(X).astype("<f8").tobytes()
    http = grpc_server.client.post(grpc_server.infer_url(), content=orjson.dumps({
        "inputs": [{"name": "input-0", "shape": [7, 4], "datatype": datatype, "data": X.ravel().tolist()}],
        "outputs": [{"name": "predict_proba", "parameters": {"binary_data": True}}]}))
    length = int(http.headers["inference-header-content-length"])
    assert http.content[length:] == response.raw_output_contents[1]


def test_bad_requests_are_invalid_argument_and_counted(stub, grpc_server):
    before = grpc_server.counts()
    bad = pb.ModelInferRequest(model_name="credit")
    bad.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    bad.raw_input_contents.append(b"\0" * 8)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(bad)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs 16 bytes" in caught.value.details()
    wide = infer_message(np.zeros((1, 5)), "FP64", raw=True)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(wide)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "expects 4 features" in caught.value.details()
    stub.ModelInfer(infer_message(np.zeros((1, 4)), "FP64", raw=True))
    after = grpc_server.counts()
    assert after["failure"] - before["failure"] == 2
    assert after["success"] - before["success"] == 1
    assert after["observed"] - before["observed"] == 3


def test_unknown_model_is_not_found_and_not_recorded(stub, grpc_server):
    before = grpc_server.counts()
    message = infer_message(np.zeros((1, 4)), "FP64", raw=True)
    message.model_name = "other"
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(message)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert grpc_server.counts() == before


def test_tritonclient_grpc_with_default_arguments(grpc_server, trained):
    grpcclient = pytest.importorskip("tritonclient.grpc")
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_server.app.grpc_port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("credit")
        assert client.get_model_metadata("credit").name == "credit"
        assert "binary_tensor_data" in client.get_server_metadata().extensions
        X = np.random.default_rng(8).standard_normal((3, 4)).astype(np.float32)
        tensor = grpcclient.InferInput("input-0", list(X.shape), "FP32")
        tensor.set_data_from_numpy(X)
        model = trained("logreg")
        result = client.infer("credit", [tensor])
        assert result.as_numpy("predict").tolist() == model.predict(X).tolist()
        result = client.infer("credit", [tensor], outputs=[grpcclient.InferRequestedOutput("predict_proba")])
        assert result.as_numpy("predict_proba").tobytes() == model.predict_proba(X).tobytes()
    finally:
        client.close()


def test_keyed_server_requires_the_key_on_grpc(start_server, model_files, tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "primary").write_text("k-primary")
    (keys / "secondary").write_text("k-secondary")
    server = start_server(model_files["logreg"], model_name="credit", keys_dir=keys, grpc_port=free_port())
    with grpc.insecure_channel(f"127.0.0.1:{server.app.grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerReady(pb.ServerReadyRequest()).ready  # probes carry no key
        message = infer_message(np.zeros((1, 4)), "FP64", raw=True)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(message)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        response = stub.ModelInfer(message, metadata=[("authorization", "Bearer k-secondary")])
        assert len(response.raw_output_contents) == 1


def test_the_real_cli_serves_grpc_with_an_xgboost_model_and_counts_it_in_metrics(spawn_server, tmp_path):
    xgb = pytest.importorskip("xgboost")
    import httpx

    rng = np.random.default_rng(9)
    X = rng.standard_normal((50, 3))
    booster = xgb.train({"objective": "reg:squarederror", "max_depth": 2}, xgb.DMatrix(X, label=X[:, 0]), 5)
    path = tmp_path / "model.ubj"
    booster.save_model(path)
    port = free_port()
    server = spawn_server(["--model-uri", str(path), "--model-name", "gbm", "--grpc-port", str(port)])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerReady(pb.ServerReadyRequest()).ready
        rows = X[:4].astype(np.float32)
        message = pb.ModelInferRequest(model_name="gbm")
        message.inputs.add(name="x", datatype="FP32", shape=[4, 3])
        message.raw_input_contents.append(rows.tobytes())
        response = stub.ModelInfer(message)
        assert response.raw_output_contents[0] == booster.inplace_predict(rows).astype("<f4").tobytes()
    metrics = httpx.get(server.base_url + "/metrics").text
    assert 'slotkeeper_requests_total{model="gbm",outcome="success",version=""} 1.0' in metrics
    assert httpx.get(server.base_url + "/v2/models/gbm").json()["platform"] == "xgboost"
