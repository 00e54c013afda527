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


@pytest.mark.parametrize("kind", ["forest-three-classes", "forest-string-labels", "extra-trees", "forest-regressor"])
def test_the_flat_walk_alone_is_bit_identical_for_every_row_count_it_serves(kind):
    model = fitted(kind)
    trees = [t.tree_ for t in model.estimators_]
    regressor = kind == "forest-regressor"
    flat = forestpath._FlatForest.of(trees, 1 if regressor else int(model.n_classes_))
    rng = np.random.RandomState(7)
    for rows in range(1, forestpath.FLAT_MAX_ROWS + 1):
        X = (rng.randn(rows, 4) * 10 ** rng.uniform(-3, 3)).astype(np.float32 if rows % 2 else np.float64)
        got = flat.mean_value(X)
        expected = model.predict(X) if regressor else model.predict_proba(X)
        got = got[:, 0] if regressor else got
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert got.tobytes() == expected.tobytes(), rows


def test_rows_on_a_threshold_go_left_in_the_flat_walk_as_in_the_trees():
    # Integer features make thresholds like 1.5, exact in float32, so a row can sit on one.
    rng = np.random.RandomState(2)
    X_train = rng.randint(0, 6, size=(200, 4)).astype(float)
    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(X_train, X_train.sum(axis=1) > 10)
    tree = model.estimators_[0].tree_
    inner = np.flatnonzero(tree.children_left >= 0)
    X = np.tile(X_train[:1], (len(inner), 1)).astype(np.float32)
    X[np.arange(len(inner)), tree.feature[inner]] = tree.threshold[inner]
    assert (X[np.arange(len(inner)), tree.feature[inner]] == tree.threshold[inner]).all()
    flat = forestpath._FlatForest.of([t.tree_ for t in model.estimators_], 2)
    assert flat.mean_value(X).tobytes() == model.predict_proba(X).tobytes()


def test_a_forest_too_large_for_the_flat_walk_keeps_the_per_tree_walk(monkeypatch):
    model = fitted("forest-three-classes")
    monkeypatch.setattr(forestpath, "FLAT_MAX_NODES", 10)
    lean, why = forestpath.compile_lean_outputs(model, ("predict", "predict_proba"))
    assert set(lean) == {"predict", "predict_proba"} and "per-tree walk" in why and "flat" not in why
    assert forestpath.inline_rows(lean, ("predict", "predict_proba")) == 0
    X = np.random.RandomState(1).randn(3, 4)
    assert lean["predict_proba"](X).tobytes() == model.predict_proba(X).tobytes()


def test_a_flat_walk_that_disagrees_is_not_used(monkeypatch):
    model = fitted("forest-binary")
    monkeypatch.setattr(forestpath._FlatForest, "mean_value", lambda self, X: np.full((len(X), 2), 0.5))
    lean, why = forestpath.compile_lean_outputs(model, ("predict_proba",))
    assert lean == {} and "disagreed" in why


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
