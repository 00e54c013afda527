"""The lean forest path never changes an answer: bit-identical to the estimator, or not used."""

from __future__ import annotations

import joblib
import numpy as np
import pytest
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    RandomForestClassifier,
    RandomForestRegressor,
)

from slotkeeper_serving import forestpath
from slotkeeper_serving.models import SklearnModel


def data(n_rows=120, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.randn(n_rows, 4) * [1.0, 10.0, 0.1, 3.0]
    target = X @ rng.randn(4) + rng.randn(n_rows) * 0.1
    return X, target


def fitted(kind: str):
    X, target = data()
    three = np.digitize(target, np.quantile(target, [0.33, 0.66]))
    return {
        "forest-binary": lambda: RandomForestClassifier(n_estimators=15, random_state=0).fit(X, target > 0),
        "forest-three-classes": lambda: RandomForestClassifier(n_estimators=15, random_state=0).fit(X, three),
        "forest-string-labels": lambda: RandomForestClassifier(n_estimators=15, random_state=0).fit(
            X, np.array(["low", "mid", "high"])[three]
        ),
        "extra-trees": lambda: ExtraTreesClassifier(n_estimators=15, random_state=0).fit(X, three),
        "forest-regressor": lambda: RandomForestRegressor(n_estimators=15, random_state=0).fit(X, target),
        "extra-trees-regressor": lambda: ExtraTreesRegressor(n_estimators=15, random_state=0).fit(X, target),
    }[kind]()


OUTPUTS = {"forest-regressor": ("predict",), "extra-trees-regressor": ("predict",)}


@pytest.mark.parametrize(
    "kind",
    ["forest-binary", "forest-three-classes", "forest-string-labels", "extra-trees", "forest-regressor",
     "extra-trees-regressor"],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lean_forest_is_bit_identical_to_the_estimator(kind, dtype):
    model = fitted(kind)
    outputs = OUTPUTS.get(kind, ("predict", "predict_proba"))
    lean, why = forestpath.compile_lean_outputs(model, outputs)
    assert set(lean) == set(outputs), why
    rng = np.random.RandomState(99)
    for rows in (1, 2, 7, 64):
        for scale in (1e-6, 1.0, 1e6):
            X = (rng.randn(rows, 4) * scale).astype(dtype)
            for name in outputs:
                expected, got = getattr(model, name)(X), lean[name](X)
                assert got.dtype == expected.dtype and got.shape == expected.shape
                assert got.tobytes() == expected.tobytes()


class OverridingForest(RandomForestClassifier):
    def predict_proba(self, X):
        return super().predict_proba(X) * 0 + 0.5


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(lambda X, y: OverridingForest(n_estimators=5, random_state=0).fit(X, y), id="subclass-overrides"),
        pytest.param(lambda X, y: GradientBoostingClassifier(n_estimators=5).fit(X, y), id="boosting"),
        pytest.param(
            lambda X, y: RandomForestClassifier(n_estimators=5, random_state=0).fit(X, np.c_[y, 1 - y]),
            id="multi-output",
        ),
    ],
)
def test_other_estimators_keep_their_own_methods(model):
    X, target = data()
    lean, why = forestpath.compile_lean_outputs(model(X, (target > 0).astype(int)), ("predict",))
    assert lean == {}
    assert why


def test_input_outside_what_was_verified_goes_to_the_estimator():
    model = fitted("forest-binary")
    lean, _ = forestpath.compile_lean_outputs(model, ("predict",))
    with pytest.raises(ValueError, match="infinity"):  # the estimator's own validation, not a prediction
        lean["predict"](np.array([[np.inf, 0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="features"):
        lean["predict"](np.zeros((1, 3)))
    ints = np.array([[1, -2, 3, 0]])
    assert lean["predict"](ints).tobytes() == model.predict(ints).tobytes()


def test_the_served_forest_uses_the_lean_path_unless_the_fast_paths_are_off(tmp_path):
    model = fitted("forest-three-classes")
    served = SklearnModel(model)
    assert set(served._lean) == {"predict", "predict_proba"}
    assert SklearnModel(model, use_fastpath=False)._lean == {}
    X = np.random.RandomState(3).randn(9, 4)
    predict, proba = served._predict(X, ("predict", "predict_proba"))
    assert predict.tobytes() == model.predict(X).tobytes()
    assert proba.tobytes() == model.predict_proba(X).tobytes()


def test_forest_answers_over_http_are_the_same_with_and_without_the_lean_path(start_server, tmp_path, make_body):
    path = tmp_path / "forest.joblib"
    joblib.dump(fitted("forest-three-classes"), path)
    lean = start_server(path, model_name="forest", fastpath=True)
    plain = start_server(path, model_name="forest", fastpath=False)
    assert lean.app.slot.model._lean and not plain.app.slot.model._lean
    rng = np.random.RandomState(5)
    for i in range(40):
        body = make_body(rng.randn(1 + i % 4, 4) * 10 ** rng.uniform(-3, 3), datatype="FP32" if i % 2 else "FP64")
        body["outputs"] = [{"name": "predict"}, {"name": "predict_proba"}]
        a = lean.client.post(lean.infer_url(), json=body)
        b = plain.client.post(plain.infer_url(), json=body)
        assert a.status_code == b.status_code == 200
        assert a.content == b.content
