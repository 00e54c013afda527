"""A lean `predict`/`predict_proba` for scikit-learn random forests and extra-trees.

A forest's `predict` hands every tree to joblib (even with n_jobs=None) and
every tree validates its input again: for 100 trees that is ~3.5 ms of
bookkeeping around ~0.4 ms of tree walking on one row (benchmarks/serving).
The trees' own Cython `tree_.predict` on the float32 array scikit-learn would
have made, summed in the same order into the same float64 buffer and divided
the same way, gives the same bits without the bookkeeping.

The same two guards as the linear fast path (fastpath.py):
- only scikit-learn's own forest and tree classes, with their own methods
  (method identity), one output, dense trees;
- at load time each lean function must reproduce the estimator's method bit
  for bit on deterministic probe inputs, or it is not used.
Anything but a finite 2-D float32/float64 array with the right width (NaN,
inf, integers, other widths) goes to the estimator itself, so its validation
and errors stay the estimator's.

Unlike the linear fast path this runs on the model thread (it costs a
fraction of a millisecond per call, not microseconds), and is combined with
adaptive batching: one lean call answers a whole batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .fastpath import _method, first_mismatch

Lean = Callable[[np.ndarray], np.ndarray]
LEAN_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))


def compile_lean_outputs(estimator: Any, outputs: tuple[str, ...]) -> tuple[dict[str, Lean], str]:
    """({output name: verified lean function}, why); empty if the estimator is not a plain forest."""
    try:
        lean = _compile(estimator)
    except Exception as exc:  # an unusual estimator must never break loading
        return {}, f"not compiled: {type(exc).__name__}: {exc}"
    if not lean:
        return {}, f"no lean forest path for {type(estimator).__name__}"
    verified = {}
    for name in outputs:
        if name in lean:
            mismatch = first_mismatch(getattr(estimator, name), lean[name], estimator.n_features_in_)
            if mismatch:
                return {}, f"lean forest {name} disagreed ({mismatch}); using the estimator"
            verified[name] = _guarded(lean[name], getattr(estimator, name), estimator.n_features_in_)
    return verified, f"verified lean forest path for {type(estimator).__name__} ({', '.join(verified)})"


def _guarded(lean: Lean, method: Callable[[np.ndarray], Any], n_features: int) -> Lean:
    def predict(X: np.ndarray) -> np.ndarray:
        if (
            X.ndim == 2
            and X.shape[1] == n_features
            and X.shape[0] > 0
            and X.dtype in LEAN_DTYPES
            and np.isfinite(X).all()
        ):
            return lean(X)
        return method(X)

    return predict


def _compile(estimator: Any) -> dict[str, Lean]:
    from sklearn.ensemble import ExtraTreesClassifier, ExtraTreesRegressor, RandomForestClassifier, RandomForestRegressor
    from sklearn.ensemble._forest import ForestClassifier, ForestRegressor
    from sklearn.tree import BaseDecisionTree, DecisionTreeClassifier, ExtraTreeClassifier, ExtraTreeRegressor
    from sklearn.tree import DecisionTreeRegressor

    cls = type(estimator)
    trees = getattr(estimator, "estimators_", None)
    if not isinstance(trees, list) or not trees or getattr(estimator, "n_outputs_", None) != 1:
        return {}
    if not isinstance(getattr(estimator, "n_features_in_", None), int):
        return {}
    if cls in (RandomForestClassifier, ExtraTreesClassifier):
        same = all(
            _method(cls, name) is _method(ForestClassifier, name) for name in ("predict", "predict_proba")
        ) and all(
            type(t) in (DecisionTreeClassifier, ExtraTreeClassifier)
            and _method(type(t), "predict_proba") is _method(DecisionTreeClassifier, "predict_proba")
            for t in trees
        )
        return _classifier(estimator) if same else {}
    if cls in (RandomForestRegressor, ExtraTreesRegressor):
        same = _method(cls, "predict") is _method(ForestRegressor, "predict") and all(
            type(t) in (DecisionTreeRegressor, ExtraTreeRegressor)
            and _method(type(t), "predict") is _method(BaseDecisionTree, "predict")
            for t in trees
        )
        return _regressor(estimator) if same else {}
    return {}


def _classifier(forest: Any) -> dict[str, Lean]:
    # Mirrors ForestClassifier.predict_proba (+ predict) with DecisionTreeClassifier.predict_proba.
    trees = [t.tree_ for t in forest.estimators_]
    n_classes = int(forest.n_classes_)
    classes = forest.classes_

    def predict_proba(X: np.ndarray) -> np.ndarray:
        X32 = np.asarray(X, dtype=np.float32)
        proba = np.zeros((X32.shape[0], n_classes), dtype=np.float64)
        for tree in trees:
            proba += tree.predict(X32)[:, :n_classes]
        proba /= len(trees)
        return proba

    def predict(X: np.ndarray) -> np.ndarray:
        return classes.take(np.argmax(predict_proba(X), axis=1), axis=0)

    return {"predict": predict, "predict_proba": predict_proba}


def _regressor(forest: Any) -> dict[str, Lean]:
    # Mirrors ForestRegressor.predict with BaseDecisionTree.predict (one output).
    trees = [t.tree_ for t in forest.estimators_]

    def predict(X: np.ndarray) -> np.ndarray:
        X32 = np.asarray(X, dtype=np.float32)
        y = np.zeros(X32.shape[0], dtype=np.float64)
        for tree in trees:
            y += tree.predict(X32)[:, 0]
        y /= len(trees)
        return y

    return {"predict": predict}
