"""Predicting a chunk with the loaded model, by the rules of online serving.

The model is the object online serving loads (models.load_model), and the
call is its own synchronous predict (the verified fast path where online
serving would take it). Rows go into one call only if the model passes the
batching verification (rows independent on probe rows, batching.py) for
"predict", the rule by which the online server combines requests; otherwise, and whenever the
combined call raises or gives no row per input row, each row is predicted on
its own (batching.predict_combined and batching.attempt, the online rule), so
a bad row fails only itself and every answer equals the online route's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import batching

OUTPUTS = ("predict",)
_REASON_LIMIT = 300


class UnsupportedModel(Exception):
    """The loaded model has no row-wise predict (a score.py entry script)."""


class ChunkScorer:
    def __init__(self, model: Any) -> None:
        predict = getattr(model, "predict_arrays", None)
        if predict is None:
            raise UnsupportedModel(
                f"the batch mode needs a model with a vectorised predict (sklearn, xgboost, lightgbm); "
                f"{getattr(model, 'platform', type(model).__name__)} has none: run() takes requests, not rows"
            )
        self._predict = predict
        self.n_features: int | None = getattr(model, "n_features", None)
        # Verified for the one output we write: a classifier's predict_proba may
        # differ in the last bit between chunk sizes while its predict does not.
        why_not = (
            batching.first_row_dependence(predict, self.n_features, OUTPUTS)
            if self.n_features is not None
            else "the model declares no input width"
        )
        self.rows_together = why_not is None
        self.rows_together_reason = why_not or "rows verified independent"
        self.feature_names: tuple[str, ...] | None = getattr(model, "feature_names", None)

    def score(self, X: np.ndarray) -> tuple[list[Any], dict[int, str]]:
        """(one prediction per row, JSON-ready; {row index: reason} for rows the model refused)."""
        if len(X) == 0:
            return [], {}
        if self.rows_together:
            results = batching.predict_combined(self._predict, X, OUTPUTS)
            if results is not None:
                return results[0].tolist(), {}
        predictions: list[Any] = [None] * len(X)
        failures: dict[int, str] = {}
        for i in range(len(X)):
            ok, value = batching.attempt(self._predict, X[i : i + 1], OUTPUTS)
            result = np.asarray(value[0]) if ok else None
            if result is None or result.ndim == 0 or result.shape[0] != 1:
                failures[i] = _reason(value) if not ok else "the model returned no row for the input row"
            else:
                predictions[i] = result[0].tolist()
        return predictions, failures


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= _REASON_LIMIT else text[: _REASON_LIMIT - 3] + "..."
