"""XGBoost and LightGBM native model files, served over real HTTP."""

from __future__ import annotations

import sys

import numpy as np
import orjson
import pytest

from slotkeeper_serving.config import Settings
from slotkeeper_serving.fetch import ModelLoadError
from slotkeeper_serving.models import detect_format, load_model

xgb = pytest.importorskip("xgboost")
lgb = pytest.importorskip("lightgbm")


@pytest.fixture(scope="session")
def booster_files(tmp_path_factory):
    rng = np.random.default_rng(11)
    X = rng.standard_normal((200, 6))
    y_bin = (X[:, 0] + X[:, 3] > 0).astype(int)
    y_multi = np.digitize(X[:, 1], [-0.5, 0.5])
    root = tmp_path_factory.mktemp("boosters")
    files = {}
    binary = xgb.train({"objective": "binary:logistic", "max_depth": 3}, xgb.DMatrix(X, label=y_bin), 10)
    files["xgb-json"] = root / "binary.json"
    binary.save_model(files["xgb-json"])
    files["xgb-ubj"] = root / "binary.ubj"
    binary.save_model(files["xgb-ubj"])
    multi = xgb.train({"objective": "multi:softprob", "num_class": 3, "max_depth": 3},
                      xgb.DMatrix(X, label=y_multi), 10)
    files["xgb-multi"] = root / "multi.json"
    multi.save_model(files["xgb-multi"])
    lgbm = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 7},
                     lgb.Dataset(X, label=y_bin), num_boost_round=10)
    files["lgb-txt"] = root / "model.txt"
    lgbm.save_model(str(files["lgb-txt"]))
    files["lgb-bin"] = root / "model.bin"
    files["lgb-bin"].write_bytes(files["lgb-txt"].read_bytes())
    folder = root / "folder"
    folder.mkdir()
    (folder / "model.json").write_bytes(files["xgb-json"].read_bytes())
    files["xgb-dir"] = folder
    return files


def reference(files, key, X):
    path = files[key]
    if key.startswith("xgb"):
        booster = xgb.Booster()
        booster.load_model(str(path if path.is_file() else path / "model.json"))
        return booster.predict(xgb.DMatrix(X))
    return lgb.Booster(model_file=str(path)).predict(X)


@pytest.mark.parametrize(
    "key, kind", [("xgb-json", "xgboost"), ("xgb-ubj", "xgboost"), ("xgb-dir", "xgboost"),
                  ("lgb-txt", "lightgbm"), ("lgb-bin", "lightgbm")]
)
def test_format_is_detected_from_the_file(booster_files, key, kind):
    assert detect_format(booster_files[key]) == kind


@pytest.mark.parametrize("key", ["xgb-json", "xgb-ubj", "xgb-multi", "xgb-dir", "lgb-txt", "lgb-bin"])
@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_served_predictions_equal_the_library_bit_for_bit(start_server, booster_files, key, datatype):
    fmt = "xgboost" if key.startswith("xgb") else "lightgbm"
    server = start_server(booster_files[key], model_name="gbm", model_format=fmt)
    X = np.random.default_rng(12).standard_normal((9, 6)).astype(np.float32 if datatype == "FP32" else np.float64)
    body = {"inputs": [{"name": "input-0", "shape": [9, 6], "datatype": datatype, "data": X.ravel().tolist()}],
            "outputs": [{"name": "predict", "parameters": {"binary_data": True}}]}
    response = server.client.post(server.infer_url(), content=orjson.dumps(body))
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    doc = orjson.loads(response.content[:length])
    expected = np.asarray(reference(booster_files, key, X))
    out = doc["outputs"][0]
    assert out["shape"] == list(expected.shape)
    assert response.content[length:] == expected.astype(expected.dtype.newbyteorder("<")).tobytes()
    meta = server.client.get("/v2/models/gbm").json()
    assert meta["platform"] == fmt
    assert meta["inputs"][0]["shape"] == [-1, 6]
    assert meta["outputs"][0]["datatype"] == out["datatype"]


def test_wrong_width_and_unknown_output_are_400(start_server, booster_files):
    server = start_server(booster_files["xgb-json"], model_name="gbm")
    bad = {"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [0.0] * 5}]}
    response = server.client.post(server.infer_url(), content=orjson.dumps(bad))
    assert response.status_code == 400 and "expects 6 features" in response.json()["error"]
    bad = {"inputs": [{"name": "x", "shape": [1, 6], "datatype": "FP32", "data": [0.0] * 6}],
           "outputs": [{"name": "predict_proba"}]}
    response = server.client.post(server.infer_url(), content=orjson.dumps(bad))
    assert response.status_code == 400 and "unknown output 'predict_proba'" in response.json()["error"]


def test_missing_library_is_a_load_error_naming_the_extra(booster_files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lightgbm", None)  # import lightgbm now raises ImportError
    settings = Settings(model_uri=str(booster_files["lgb-txt"]), cache_dir=tmp_path)
    with pytest.raises(ModelLoadError, match=r"slotkeeper-serving\[lightgbm\]"):
        load_model(settings)
