"""A lean `predict` for models whose prediction is plain arithmetic.

scikit-learn's `predict` spends most of its ~85 us per call validating its
input (dtype, finiteness, feature names, namespaces), not computing. For a
linear model (optionally behind a StandardScaler in a Pipeline) the server
has already validated the input, so we run the very numpy expressions
scikit-learn runs after validation, on the same array, and get the same
bits back.

Two guards keep answers unchanged:
- we only compile estimators whose `predict` is scikit-learn's own generic
  implementation (checked by method identity, so subclasses that override it
  and look-alikes fall back to `predict`);
- at load time the compiled function must reproduce `estimator.predict`
  exactly (same dtype, same values, bit for bit) on deterministic probe
  inputs, or it is discarded.
Inputs outside what was verified (anything but a finite, C-contiguous 2-D
float32/float64 array with the right number of columns) go to `predict`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FastPredict = Callable[[np.ndarray], np.ndarray]
FAST_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))


def compile_fast_predict(estimator: Any) -> tuple[FastPredict | None, str]:
    """Return (function, why) where function is None if no verified fast path exists."""
    try:
        fast = _compile(estimator)
    except Exception as exc:  # an unusual estimator must never break loading
        return None, f"not compiled: {type(exc).__name__}: {exc}"
    if fast is None:
        return None, f"no fast path for {type(estimator).__name__}"
    n_features = getattr(estimator, "n_features_in_", None)
    if not isinstance(n_features, int) or n_features < 1:
        return None, "estimator does not declare n_features_in_"
    mismatch = first_disagreement(estimator, fast, n_features)
    if mismatch:
        return None, f"fast path disagreed with predict ({mismatch}); using predict"
    return fast, f"verified fast path for {type(estimator).__name__}"


def accepts(array: np.ndarray, n_features: int) -> bool:
    """True if `array` is of the kind the fast path was verified for."""
    return (
        array.ndim == 2
        and array.shape[1] == n_features
        and array.shape[0] > 0
        and array.dtype in FAST_DTYPES
        and array.flags.c_contiguous
        # JSON cannot carry NaN or inf, binary tensor data can: predict refuses them (a 400), so must we.
        and bool(np.isfinite(array).all())
    )


def probe_inputs(n_features: int) -> list[np.ndarray]:
    """Deterministic inputs spanning scales, signs, single rows and batches, both float dtypes."""
    rng = np.random.default_rng(20240601)
    probes = []
    for scale in (1e-3, 1.0, 1e3):
        batch = rng.standard_normal((16, n_features)) * scale
        probes.extend([batch, batch[:1].copy()])
    probes.append(np.zeros((1, n_features)))
    probes.append(rng.integers(-5, 5, size=(8, n_features)).astype(np.float64))
    probes.extend([p.astype(np.float32) for p in list(probes)])
    return probes


def first_disagreement(estimator: Any, fast: FastPredict, n_features: int) -> str | None:
    """None if fast(X) equals estimator.predict(X) exactly on every probe, else what differed."""
    return first_mismatch(estimator.predict, fast, n_features)


def first_mismatch(reference: Callable[[np.ndarray], Any], fast: FastPredict, n_features: int) -> str | None:
    """None if fast(X) equals reference(X) exactly (dtype, shape, bits) on every probe, else what differed."""
    for i, probe in enumerate(probe_inputs(n_features)):
        try:
            expected = np.asarray(reference(probe))
        except Exception as exc:
            return f"predict failed on probe {i}: {type(exc).__name__}"
        got = fast(probe)
        if got.dtype != expected.dtype or got.shape != expected.shape:
            return f"probe {i}: {got.dtype}{got.shape} vs {expected.dtype}{expected.shape}"
        if got.dtype.kind == "f":
            same = np.array_equal(got.view(np.uint8), expected.view(np.uint8))  # bitwise, NaN-safe
        else:
            same = np.array_equal(got, expected)
        if not same:
            return f"probe {i}: values differ"
    return None


def _method(cls: type, name: str) -> Any:
    # Static lookup: some sklearn methods are descriptors (available_if) that
    # build a new wrapper on every attribute access, defeating `is`.
    return inspect.getattr_static(cls, name, None)


def _compile(estimator: Any) -> FastPredict | None:
    from sklearn.linear_model import ElasticNet, Ridge
    from sklearn.linear_model._base import LinearClassifierMixin, LinearModel, MultiOutputLinearModel
    from sklearn.pipeline import Pipeline

    # Ridge.predict only re-documents LinearModel.predict, and ElasticNet's
    # (and so Lasso's) _decision_function hands dense input to LinearModel's.
    regressor_predicts = [_method(c, "predict") for c in (LinearModel, MultiOutputLinearModel, Ridge)]
    regressor_decisions = [_method(c, "_decision_function") for c in (LinearModel, ElasticNet)]

    cls = type(estimator)
    if isinstance(estimator, Pipeline):
        return _compile_pipeline(estimator) if _method(cls, "predict") is _method(Pipeline, "predict") else None
    coef = getattr(estimator, "coef_", None)
    if not isinstance(coef, np.ndarray) or coef.ndim not in (1, 2):
        return None  # e.g. sparse coef_ after sparsify()
    if _method(cls, "predict") is _method(LinearClassifierMixin, "predict") and _method(
        cls, "decision_function"
    ) is _method(LinearClassifierMixin, "decision_function"):
        return _linear_classifier(estimator)
    if any(_method(cls, "predict") is m for m in regressor_predicts) and any(
        _method(cls, "_decision_function") is m for m in regressor_decisions
    ):
        return _linear_regressor(estimator)
    return None


def _linear_classifier(est: Any) -> FastPredict | None:
    # Mirrors LinearClassifierMixin.decision_function + predict.
    classes = getattr(est, "classes_", None)
    if not isinstance(classes, np.ndarray):
        return None
    coef_t = est.coef_.T if est.coef_.ndim == 2 else est.coef_
    intercept = est.intercept_

    def predict(X: np.ndarray) -> np.ndarray:
        scores = X @ coef_t + intercept
        if scores.ndim > 1 and scores.shape[1] == 1:
            scores = scores.reshape(-1)
        if scores.ndim == 1:
            indices = (scores > 0).astype(np.intp)
        else:
            indices = scores.argmax(axis=1)
        return classes.take(indices, axis=0)

    return predict


def _linear_regressor(est: Any) -> FastPredict:
    # Mirrors LinearModel._decision_function.
    coef = est.coef_ if est.coef_.ndim == 1 else est.coef_.T
    intercept = est.intercept_

    def predict(X: np.ndarray) -> np.ndarray:
        return X @ coef + intercept

    return predict


def _compile_pipeline(pipeline: Any) -> FastPredict | None:
    steps = [step for _, step in pipeline.steps if step is not None and step != "passthrough"]
    if not steps:
        return None
    transforms = [_compile_transform(step) for step in steps[:-1]]
    if any(t is None for t in transforms):
        return None
    final = _compile(steps[-1])
    if final is None:
        return None

    def predict(X: np.ndarray) -> np.ndarray:
        for transform in transforms:
            X = transform(X)
        return final(X)

    return predict


def _compile_transform(step: Any) -> FastPredict | None:
    from sklearn.preprocessing import StandardScaler

    if not isinstance(step, StandardScaler) or _method(type(step), "transform") is not _method(
        StandardScaler, "transform"
    ):
        return None
    mean = step.mean_ if step.with_mean else None
    scale = step.scale_ if step.with_std else None

    def transform(X: np.ndarray) -> np.ndarray:
        # Mirrors StandardScaler.transform: copy, then in-place ops in X's dtype.
        X = X.copy()
        if mean is not None:
            X -= mean.astype(X.dtype, copy=False)
        if scale is not None:
            X /= scale.astype(X.dtype, copy=False)
        return X

    return transform
