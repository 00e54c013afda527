"""The fast path never changes an answer: bit-identical to predict, or not used at all."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import (
    ElasticNet,
    Lasso,
    LinearRegression,
    LogisticRegression,
    Perceptron,
    Ridge,
    RidgeClassifier,
    SGDClassifier,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier

from slotkeeper_serving import fastpath


def data(n_rows=40, n_features=4, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.randn(n_rows, n_features) * [1.0, 10.0, 0.1, 3.0][:n_features]
    return X, X @ rng.randn(n_features) + rng.randn(n_rows) * 0.1


def fitted(kind: str):
    X, target = data()
    binary = (target > 0).astype(int)
    three = np.digitize(target, np.quantile(target, [0.33, 0.66]))
    return {
        "logreg-binary": lambda: LogisticRegression().fit(X, binary),
        "logreg-multiclass": lambda: LogisticRegression().fit(X, three),
        "logreg-string-labels": lambda: LogisticRegression().fit(X, np.array(["no", "yes"])[binary]),
        "logreg-no-intercept": lambda: LogisticRegression(fit_intercept=False).fit(X, binary),
        "sgd-classifier": lambda: SGDClassifier(random_state=0).fit(X, three),
        "perceptron": lambda: Perceptron(random_state=0).fit(X, binary),
        "linear-svc": lambda: LinearSVC(random_state=0).fit(X, binary),
        "linreg": lambda: LinearRegression().fit(X, target),
        "linreg-multioutput": lambda: LinearRegression().fit(X, np.c_[target, -target]),
        "linreg-no-intercept": lambda: LinearRegression(fit_intercept=False).fit(X, target),
        "ridge": lambda: Ridge().fit(X, target),
        "lasso": lambda: Lasso(alpha=0.01).fit(X, target),
        "elasticnet": lambda: ElasticNet(alpha=0.01).fit(X, target),
        "pipeline-scaler-logreg": lambda: make_pipeline(StandardScaler(), LogisticRegression()).fit(X, three),
        "pipeline-scaler-linreg": lambda: make_pipeline(StandardScaler(with_mean=False), LinearRegression()).fit(
            X, target
        ),
    }[kind]()


SUPPORTED = [
    "logreg-binary",
    "logreg-multiclass",
    "logreg-string-labels",
    "logreg-no-intercept",
    "sgd-classifier",
    "perceptron",
    "linear-svc",
    "linreg",
    "linreg-multioutput",
    "linreg-no-intercept",
    "ridge",
    "lasso",
    "elasticnet",
    "pipeline-scaler-logreg",
    "pipeline-scaler-linreg",
]


@pytest.mark.parametrize("kind", SUPPORTED)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fast_path_is_bit_identical_to_predict(kind, dtype):
    model = fitted(kind)
    fast, why = fastpath.compile_fast_predict(model)
    assert fast is not None, why
    rng = np.random.RandomState(99)
    for rows in (1, 2, 7, 64):
        for scale in (1e-6, 1.0, 1e6):
            X = (rng.randn(rows, 4) * scale).astype(dtype)
            expected = model.predict(X)
            got = fast(X)
            assert got.dtype == expected.dtype and got.shape == expected.shape
            assert got.tobytes() == expected.tobytes()


class OverridingLogisticRegression(LogisticRegression):
    def predict(self, X):
        return super().predict(X) * 0 + 7


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(lambda X, y: DecisionTreeClassifier(random_state=0).fit(X, y), id="tree"),
        pytest.param(lambda X, y: RidgeClassifier().fit(X, y), id="ridge-classifier-overrides-predict"),
        pytest.param(lambda X, y: OverridingLogisticRegression().fit(X, y), id="subclass-overrides-predict"),
        pytest.param(
            lambda X, y: make_pipeline(MinMaxScaler(), LogisticRegression()).fit(X, y), id="unsupported-transform"
        ),
        pytest.param(lambda X, y: LogisticRegression().fit(X, y).sparsify(), id="sparse-coef"),
    ],
)
def test_unsupported_estimators_fall_back_to_predict(model):
    X, target = data()
    fast, why = fastpath.compile_fast_predict(model(X, (target > 0).astype(int)))
    assert fast is None
    assert why


def test_a_disagreeing_fast_path_is_rejected_at_load_time():
    X, target = data()
    model = LinearRegression().fit(X, target)
    assert fastpath.first_disagreement(model, lambda X: X @ model.coef_ + model.intercept_, 4) is None

    def off_by_one_ulp(X):
        return np.nextafter(X @ model.coef_ + model.intercept_, np.inf)

    def wrong_dtype(X):
        return (X @ model.coef_ + model.intercept_).astype(np.float32)

    assert "values differ" in fastpath.first_disagreement(model, off_by_one_ulp, 4)
    assert "float32" in fastpath.first_disagreement(model, wrong_dtype, 4)


@pytest.mark.parametrize(
    ("array", "ok"),
    [
        (np.zeros((1, 4)), True),
        (np.zeros((3, 4), dtype=np.float32), True),
        (np.zeros((1, 3)), False),
        (np.zeros(4), False),
        (np.zeros((0, 4)), False),
        (np.zeros((1, 4), dtype=np.int64), False),
        (np.zeros((1, 4), dtype=np.float16), False),
        (np.zeros((4, 1)).T, True),
        (np.zeros((4, 2)).T[:, :], False),
        (np.array([[0.0, np.nan, 0.0, 0.0]]), False),
        (np.array([[0.0, 0.0, -np.inf, 0.0]], dtype=np.float32), False),
    ],
)
def test_accepts_only_what_was_verified(array, ok):
    assert fastpath.accepts(array, 4) is ok


def test_fast_and_slow_servers_give_identical_responses(start_server, model_files, make_body):
    """End to end: the same requests to the pipeline model with and without the fast path."""
    fast = start_server(model_files["pipeline"], model_name="pipe", fastpath=True)
    slow = start_server(model_files["pipeline"], model_name="pipe", fastpath=False)
    assert fast.app.slot.model.has_fastpath and not slow.app.slot.model.has_fastpath
    rng = np.random.RandomState(11)
    for i in range(100):
        rows = rng.randn(1 + i % 5, 4) * 10 ** rng.uniform(-3, 3)
        body = make_body(rows, datatype="FP32" if i % 2 else "FP64", id=str(i))
        a = fast.client.post(fast.infer_url(), json=body)
        b = slow.client.post(slow.infer_url(), json=body)
        assert a.status_code == b.status_code == 200
        assert a.content == b.content
