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

Two walks, each verified on its own: per tree (the trees' Cython predict,
best for large batches) and, for up to `FLAT_MAX_ROWS` rows, all trees at
once (`_FlatForest`: every tree's nodes in one set of arrays, each row walked
down every tree by a few numpy gathers per level). On the benchmark's
100-tree forest the flat walk takes ~120 us for one row and ~190 us for
eight against ~350-420 us per tree; from ~200 rows the per-tree walk wins.
Its comparisons are the trees' own (a float32 feature against the float64
threshold, `<=` goes left) and the leaf values are summed in tree order
(`np.cumsum` is sequential), so the bits are the same.

Combined with adaptive batching: one lean call answers a whole batch; a
batch small enough for the flat walk is predicted on the event loop itself
(`INLINE_ROWS`), since handing ~0.2 ms of work to the model thread costs
more in GIL hand-offs than it saves on a shared CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .fastpath import _method, first_mismatch

Lean = Callable[[np.ndarray], np.ndarray]
LEAN_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))
FLAT_MAX_ROWS = 32  # the flat walk's crossover is ~200 rows on the benchmark forest; stay well below it
FLAT_MAX_NODES = 2_000_000  # ~56 MB of node arrays: a larger forest keeps only the per-tree walk
INLINE_ROWS = FLAT_MAX_ROWS


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
        if name not in lean:
            continue
        walks = lean[name]
        for walk in walks:  # each walk on its own: the probes would reach only one through the dispatcher
            mismatch = first_mismatch(getattr(estimator, name), walk, estimator.n_features_in_)
            if mismatch:
                return {}, f"lean forest {name} disagreed ({mismatch}); using the estimator"
        verified[name] = _guarded(_by_rows(*walks), getattr(estimator, name), estimator.n_features_in_)
        verified[name].inline_rows = INLINE_ROWS if len(walks) == 2 else 0
    kinds = "per-tree and flat walks" if any(len(w) == 2 for w in lean.values()) else "per-tree walk"
    return verified, f"verified lean forest path for {type(estimator).__name__} ({', '.join(verified)}; {kinds})"


def inline_rows(lean: dict[str, Lean], outputs: tuple[str, ...]) -> int:
    """Rows up to which a batch of these outputs is cheap enough to predict on the event loop (0: never)."""
    return min((getattr(lean.get(name), "inline_rows", 0) for name in outputs), default=0)


def _by_rows(per_tree: Lean, flat: Lean | None = None) -> Lean:
    if flat is None:
        return per_tree
    return lambda X: flat(X) if X.shape[0] <= FLAT_MAX_ROWS else per_tree(X)


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


def _compile(estimator: Any) -> dict[str, tuple[Lean, ...]]:
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


def _classifier(forest: Any) -> dict[str, tuple[Lean, ...]]:
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

    walks = [predict_proba]
    flat = _FlatForest.of(trees, n_classes)
    if flat is not None:
        walks.append(flat.mean_value)

    def label(proba: Lean) -> Lean:
        return lambda X: classes.take(np.argmax(proba(X), axis=1), axis=0)

    return {"predict": tuple(label(w) for w in walks), "predict_proba": tuple(walks)}


def _regressor(forest: Any) -> dict[str, tuple[Lean, ...]]:
    # Mirrors ForestRegressor.predict with BaseDecisionTree.predict (one output).
    trees = [t.tree_ for t in forest.estimators_]

    def predict(X: np.ndarray) -> np.ndarray:
        X32 = np.asarray(X, dtype=np.float32)
        y = np.zeros(X32.shape[0], dtype=np.float64)
        for tree in trees:
            y += tree.predict(X32)[:, 0]
        y /= len(trees)
        return y

    flat = _FlatForest.of(trees, 1)
    if flat is None:
        return {"predict": (predict,)}
    return {"predict": (predict, lambda X: flat.mean_value(X)[:, 0])}


class _FlatForest:
    """Every tree's nodes in flat arrays, so that one level of every (row, tree) walk is a few numpy gathers.

    A leaf points to itself and compares against +inf (never "go right"), so
    walking `depth` levels leaves every walk on its leaf, whatever its depth.
    """

    def __init__(self, trees: list[Any], width: int) -> None:
        starts = np.cumsum([0] + [t.node_count for t in trees[:-1]])
        self.roots = starts.astype(np.intp)
        feature, threshold, children, values = [], [], [], []
        for start, tree in zip(starts, trees):
            leaf = tree.children_left < 0
            own = np.arange(tree.node_count)
            feature.append(np.where(leaf, 0, tree.feature))
            threshold.append(np.where(leaf, np.inf, tree.threshold))
            left = np.where(leaf, own, tree.children_left) + start
            right = np.where(leaf, own, tree.children_right) + start
            children.append(np.stack([left, right], axis=1))
            values.append(tree.value[:, 0, :width])
        self.feature = np.concatenate(feature).astype(np.intp)
        self.threshold = np.concatenate(threshold).astype(np.float64)
        self.children = np.concatenate(children).astype(np.intp).reshape(-1)  # node*2 (+1 to go right)
        self.values = np.concatenate(values).astype(np.float64)
        self.depth = max(int(t.max_depth) for t in trees)
        self.n_trees = len(trees)

    @classmethod
    def of(cls, trees: list[Any], width: int) -> _FlatForest | None:
        if sum(t.node_count for t in trees) > FLAT_MAX_NODES:
            return None
        return cls(trees, width)

    def mean_value(self, X: np.ndarray) -> np.ndarray:
        """The trees' leaf values for each row, summed in tree order and divided by the number of trees."""
        X32 = np.ascontiguousarray(X, dtype=np.float32)
        rows, width = X32.shape
        flat_x = X32.reshape(-1)
        row_start = (np.arange(rows, dtype=np.intp) * width)[:, None]
        node = np.broadcast_to(self.roots, (rows, self.n_trees)).copy()
        for _ in range(self.depth):
            go_right = flat_x.take(row_start + self.feature.take(node)) > self.threshold.take(node)
            node = self.children.take(node * 2 + go_right)
        leaf_values = self.values.take(node, axis=0)  # (rows, trees, width)
        # A zero first, then a sequential running sum: the same additions, in the same order, as
        # `total = zeros; total += tree_value` tree by tree.
        start = np.zeros((rows, 1, leaf_values.shape[2]))
        total = np.cumsum(np.concatenate([start, leaf_values], axis=1), axis=1)[:, -1].copy()
        total /= self.n_trees
        return total
