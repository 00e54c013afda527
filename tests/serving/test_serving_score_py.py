"""Azure ML style entry scripts: init() once with AZUREML_MODEL_DIR set, run(raw_data) per request."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slotkeeper_serving.models import ModelError, azureml_raw_data, outputs_from_run_result
from slotkeeper_serving.protocol import parse_infer_request


def mode_body(*values: int) -> dict:
    return {"inputs": [{"name": "mode", "shape": [len(values)], "datatype": "INT64", "data": list(values)}]}


@pytest.fixture(scope="module")
def inspect_server(start_server, score_py_dirs):
    return start_server(score_py_dirs["inspect"], model_name="inspect", model_version="s1")


def test_unchanged_azureml_script_serves_its_model(start_server, score_py_dirs, trained, make_body):
    server = start_server(score_py_dirs["azureml"], model_name="azure", model_format="score-py")
    doc = server.client.get("/v2/models/azure").json()
    assert (doc["platform"], doc["state"]) == ("azureml-score-py", "ready")
    rows = np.random.RandomState(4).randn(6, 4)
    response = server.client.post(server.infer_url(), json=make_body(rows, id="a1"))
    assert response.status_code == 200
    assert response.json() == {
        "model_name": "azure",
        "id": "a1",
        "outputs": [
            {"name": "predict", "shape": [6], "datatype": "INT64", "data": trained("logreg").predict(rows).tolist()}
        ],
    }


def test_script_file_uri_sets_model_dir_to_its_folder(start_server, score_py_dirs, make_body):
    server = start_server(f"file://{score_py_dirs['azureml'] / 'score.py'}", model_name="by-file")
    assert server.client.post(server.infer_url(), json=make_body([[0.0, 1.0, 0.0, 1.0]])).status_code == 200


def test_raw_data_model_dir_and_thread(inspect_server, score_py_dirs):
    response = inspect_server.client.post(inspect_server.infer_url(), json=mode_body(0, 5))
    assert response.status_code == 200
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert json.loads(outputs["raw"]["data"][0]) == {"data": [0, 5]}
    assert outputs["model_dir"]["data"] == [str(score_py_dirs["inspect"])]
    assert outputs["same_thread"] == {"name": "same_thread", "shape": [1], "datatype": "BOOL", "data": [True]}


def test_raw_data_keeps_the_first_inputs_shape_and_names_every_input():
    request = parse_infer_request(
        json.dumps(
            {
                "inputs": [
                    {"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]},
                    {"name": "b", "shape": [1], "datatype": "BYTES", "data": ["x"]},
                ]
            }
        ).encode()
    )
    assert json.loads(azureml_raw_data(request)) == {
        "data": [[1.0, 2.0], [3.0, 4.0]],
        "inputs": {"a": [[1.0, 2.0], [3.0, 4.0]], "b": ["x"]},
    }
    single = parse_infer_request(b'{"inputs": [{"name": "a", "shape": [1, 2], "datatype": "INT64", "data": [[7, 8]]}]}')
    assert json.loads(azureml_raw_data(single)) == {"data": [[7, 8]]}


def test_json_string_return_is_decoded(inspect_server):
    doc = inspect_server.client.post(inspect_server.infer_url(), json=mode_body(1, 2, 3)).json()
    assert doc["outputs"] == [{"name": "doubled", "shape": [3], "datatype": "INT64", "data": [2, 4, 6]}]


def test_plain_text_and_scalar_returns(inspect_server):
    text = inspect_server.client.post(inspect_server.infer_url(), json=mode_body(7)).json()
    assert text["outputs"] == [{"name": "predict", "shape": [1], "datatype": "BYTES", "data": ["plain text"]}]
    scalar = inspect_server.client.post(inspect_server.infer_url(), json=mode_body(9)).json()
    assert scalar["outputs"] == [{"name": "predict", "shape": [1], "datatype": "INT64", "data": [42]}]


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        (2, "run() failed: RuntimeError: the model is broken"),
        (3, "run() reported an error: scoring failed"),
        (4, "not an array"),
        (5, "returned None"),
    ],
)
def test_script_failures_are_500_with_a_reason_and_count_as_failures(inspect_server, mode, message):
    before = inspect_server.counts()
    response = inspect_server.client.post(inspect_server.infer_url(), json=mode_body(mode))
    assert response.status_code == 500
    assert message in response.json()["error"]
    after = inspect_server.counts()
    assert after["failure"] - before["failure"] == 1
    assert after["success"] == before["success"]
    assert inspect_server.client.get("/v2/health/ready").status_code == 200


@pytest.mark.parametrize(
    ("script", "reason"),
    [("broken_init", "init() failed: FileNotFoundError: model.onnx is missing"), ("no_run", "no run(raw_data)")],
)
def test_script_that_cannot_start_is_never_ready(start_server, score_py_dirs, wait_for, script, reason):
    server = start_server(score_py_dirs[script], wait_ready=False, model_name=script)
    wait_for(lambda: server.app.slot.state != "loading", what="the load to end")
    doc = server.client.get(f"/v2/models/{script}").json()
    assert doc["state"] == "failed"
    assert reason in doc["reason"]
    assert server.client.get("/v2/health/ready").status_code == 503


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ([1, 2], [{"name": "predict", "shape": [2], "datatype": "INT64", "data": [1, 2]}]),
        (np.array([[0.5], [1.5]]), [{"name": "predict", "shape": [2, 1], "datatype": "FP64", "data": [0.5, 1.5]}]),
        (
            {"label": ["a"], "score": [0.9]},
            [
                {"name": "label", "shape": [1], "datatype": "BYTES", "data": ["a"]},
                {"name": "score", "shape": [1], "datatype": "FP64", "data": [0.9]},
            ],
        ),
        ('{"predict": [true]}', [{"name": "predict", "shape": [1], "datatype": "BOOL", "data": [True]}]),
        ("[1.5]", [{"name": "predict", "shape": [1], "datatype": "FP64", "data": [1.5]}]),
        (b"[3]", [{"name": "predict", "shape": [1], "datatype": "INT64", "data": [3]}]),
        ("7", [{"name": "predict", "shape": [1], "datatype": "BYTES", "data": ["7"]}]),
    ],
)
def test_run_result_mapping(result, expected):
    assert outputs_from_run_result(result) == expected


@pytest.mark.parametrize("result", [None, {}, {"error": "boom"}, [[1], [2, 3]], {"x": [{"a": 1}]}])
def test_unmappable_run_results_are_model_errors(result):
    with pytest.raises(ModelError):
        outputs_from_run_result(result)
