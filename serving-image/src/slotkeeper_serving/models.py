"""Model loaders and the two served model kinds: scikit-learn and Azure ML style score.py.

A loaded model offers `infer_inline(request)` (a synchronous answer when the
verified fast path applies, else None) and `infer(request)` (the general
path, run on the model's own single worker thread so a slow prediction never
stalls the event loop and non-thread-safe code is never entered twice).
Errors raised here are typed: InputError (400, the input does not suit the
model) or ModelError (500, the model itself failed).
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import logging
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from . import batching, fastpath, forestpath
from .config import Settings
from .fetch import ModelLoadError, materialize, redact_uri
from .protocol import InferRequest, ProtocolError, encode_tensor

log = logging.getLogger(__name__)

SKLEARN_SUFFIXES = (".joblib", ".pkl", ".pickle")
XGBOOST_SUFFIXES = (".json", ".ubj")
LIGHTGBM_SUFFIXES = (".txt", ".bin")
_MESSAGE_LIMIT = 300


class InputError(ProtocolError):
    """Well-formed request whose tensors do not suit this model (400)."""


class ModelError(Exception):
    """The model raised or returned something unusable on valid input (500)."""

    status = 500


class ServedModel(Protocol):
    platform: str

    def metadata(self) -> dict[str, Any]: ...

    def infer_inline(self, request: InferRequest) -> list[dict[str, Any]] | None: ...

    async def infer(self, request: InferRequest) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


def _model_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="slotkeeper-model")


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."


# ---------------------------------------------------------------- loading


def detect_format(path: Path) -> str:
    """score-py for .py (or a directory with score.py), xgboost for .json/.ubj,
    lightgbm for .txt/.bin; sklearn otherwise (and whenever a directory holds a joblib/pickle file)."""
    if path.is_file():
        suffixes = [path.suffix.lower()]
    else:
        if (path / "score.py").is_file():
            return "score-py"
        suffixes = {p.suffix.lower() for p in path.rglob("*") if p.is_file()}
        if suffixes & set(SKLEARN_SUFFIXES):
            return "sklearn"
    if ".py" in suffixes and path.is_file():
        return "score-py"
    if set(suffixes) & set(XGBOOST_SUFFIXES):
        return "xgboost"
    if set(suffixes) & set(LIGHTGBM_SUFFIXES):
        return "lightgbm"
    return "sklearn"


def load_model(settings: Settings) -> ServedModel:
    """Fetch and load the model named by the settings. Raises ModelLoadError with a loggable reason."""
    try:
        path = materialize(
            settings.model_uri,
            settings.cache_dir,
            timeout_seconds=settings.download_timeout_seconds,
            max_bytes=settings.max_model_bytes,
        )
        model_format = settings.model_format or detect_format(path)
        if model_format == "score-py":
            return ScorePyModel.load(path)
        if model_format in ("xgboost", "lightgbm"):
            model = BoosterModel.load(path, model_format)
        else:
            model = SklearnModel.load(path, use_fastpath=settings.fastpath)
        if settings.batching:
            model.enable_batching(settings.batch_max_rows, settings.batch_max_delay_ms / 1000)
        return model
    except ModelLoadError:
        raise
    except Exception as exc:
        # Belt and braces: no exception text may carry the raw URI.
        message = _short(exc).replace(settings.model_uri, redact_uri(settings.model_uri))
        raise ModelLoadError(message) from exc


def _find_sklearn_file(path: Path, suffixes: tuple[str, ...] = SKLEARN_SUFFIXES) -> Path:
    if path.is_file():
        return path
    candidates = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if len(candidates) != 1:
        preferred = [p for p in candidates if p.stem == "model"]
        if len(preferred) == 1:
            return preferred[0]
        raise ModelLoadError(
            f"expected exactly one {'/'.join(suffixes)} file in {path}, found {len(candidates)}"
        )
    return candidates[0]


# ---------------------------------------------------------------- scikit-learn


class SklearnModel:
    """A pickled/joblib scikit-learn estimator; output "predict" (and "predict_proba" on request)."""

    platform = "sklearn"

    def __init__(self, estimator: Any, *, use_fastpath: bool = True) -> None:
        if not callable(getattr(estimator, "predict", None)):
            raise ModelLoadError(f"loaded object of type {type(estimator).__name__} has no predict()")
        self.estimator = estimator
        n_features = getattr(estimator, "n_features_in_", None)
        self.n_features: int | None = int(n_features) if isinstance(n_features, (int, np.integer)) else None
        self.output_names = (
            ("predict", "predict_proba") if callable(getattr(estimator, "predict_proba", None)) else ("predict",)
        )
        self._fast: fastpath.FastPredict | None = None
        if use_fastpath and self.n_features is not None:
            self._fast, why = fastpath.compile_fast_predict(estimator)
            log.info("fast path: %s", why)
        self._fast_features = self.n_features or 0
        # Forests: the same bits without joblib's per-tree bookkeeping (forestpath.py); small batches on the loop.
        self._lean: dict[str, forestpath.Lean] = {}
        if use_fastpath and self.n_features is not None:
            self._lean, why = forestpath.compile_lean_outputs(estimator, self.output_names)
            if self._lean:
                log.info("forest path: %s", why)
        self._thread = _model_thread()
        self.batcher: batching.Batcher | None = None
        self.batching_reason = "off"

    def enable_batching(self, max_rows: int = 512, max_delay: float = 0.0) -> bool:
        """Batch concurrent requests if rows are verified independent on the probe set; False (and why) if not."""
        self.batcher, self.batching_reason = _verified_batcher(
            self._predict, self.n_features, self.output_names, self._thread, max_rows, max_delay
        )
        if self.batcher is not None:
            self.batcher.inline_rows = forestpath.inline_rows(self._lean, self.output_names)
        return self.batcher is not None

    @classmethod
    def load(cls, path: Path, *, use_fastpath: bool = True) -> SklearnModel:
        import joblib

        file = _find_sklearn_file(path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            estimator = joblib.load(file)  # joblib also reads plain pickles
        for warning in caught:  # e.g. InconsistentVersionWarning: worth a line, not a failure
            log.warning("while loading %s: %s", file.name, warning.message)
        log.info("loaded scikit-learn %s from %s", type(estimator).__name__, file.name)
        return cls(estimator, use_fastpath=use_fastpath)

    @property
    def has_fastpath(self) -> bool:
        return self._fast is not None

    def metadata(self) -> dict[str, Any]:
        # scikit-learn declares its input width, not its dtype: FP64 is the common case.
        shape = [-1, self.n_features] if self.n_features is not None else [-1]
        outputs = [{"name": "predict", "datatype": _label_datatype(self.estimator), "shape": [-1]}]
        if "predict_proba" in self.output_names:
            classes = getattr(self.estimator, "classes_", None)
            outputs.append(
                {
                    "name": "predict_proba",
                    "datatype": "FP64",
                    "shape": [-1, len(classes) if classes is not None else -1],
                }
            )
        return {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": shape}], "outputs": outputs}

    def _features(self, request: InferRequest) -> np.ndarray:
        if len(request.inputs) != 1:
            raise InputError(f"scikit-learn models take exactly one input tensor, got {len(request.inputs)}")
        tensor = request.inputs[0]
        if not tensor.shape or tensor.shape[0] == 0:
            raise InputError(f"input {tensor.name!r}: at least one row is required")
        if self.n_features is None:
            # No declared width (e.g. a text pipeline taking a 1-D array of
            # strings): the estimator validates, a ValueError becomes a 400.
            return tensor.array
        if len(tensor.shape) != 2:
            raise InputError(
                f"input {tensor.name!r}: expected a 2-D shape [rows, {self.n_features}], got {list(tensor.shape)}"
            )
        if tensor.shape[1] != self.n_features:
            raise InputError(
                f"input {tensor.name!r}: the model expects {self.n_features} features, got {tensor.shape[1]}"
            )
        return tensor.array

    def _wanted(self, request: InferRequest) -> tuple[str, ...]:
        wanted = request.output_names or ("predict",)
        for name in wanted:
            if name not in self.output_names:
                raise InputError(f"unknown output {name!r}; this model offers {', '.join(self.output_names)}")
        return wanted

    def infer_inline(self, request: InferRequest) -> list[dict[str, Any]] | None:
        X = self._features(request)
        if (
            self._fast is None
            or request.output_names not in (None, ("predict",))
            or not fastpath.accepts(X, self._fast_features)
        ):
            return None
        return [encode_tensor("predict", self._fast(X), binary=request.wants_binary("predict"))]

    def predict_arrays(self, X: np.ndarray, wanted: tuple[str, ...] = ("predict",)) -> list[Any]:
        """Synchronous predict for the batch mode: the verified fast path where infer_inline would take it."""
        if self._fast is not None and wanted == ("predict",) and fastpath.accepts(X, self._fast_features):
            return [self._fast(X)]
        return self._predict(X, wanted)

    @property
    def feature_names(self) -> tuple[str, ...] | None:
        """Column names the estimator was fitted with (a DataFrame), else None."""
        names = getattr(self.estimator, "feature_names_in_", None)
        return tuple(str(n) for n in names) if names is not None else None

    async def infer(self, request: InferRequest) -> list[dict[str, Any]]:
        X = self._features(request)
        wanted = self._wanted(request)
        if self.batcher is not None and self.batcher.accepts(X):
            results = await self.batcher.submit(X, wanted)
        else:
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(self._thread, self._predict, X, wanted)
        return [
            encode_tensor(name, value, binary=request.wants_binary(name))
            for name, value in zip(wanted, results, strict=True)
        ]

    def _predict(self, X: np.ndarray, wanted: tuple[str, ...]) -> list[Any]:
        try:
            return [self._lean[name](X) if name in self._lean else getattr(self.estimator, name)(X) for name in wanted]
        except (ValueError, TypeError) as exc:
            # scikit-learn validates input with ValueError/TypeError (strings
            # for a numeric model, NaN, wrong rank): the client's to fix.
            raise InputError(f"the model rejected the input: {_short(exc)}") from None
        except Exception as exc:
            raise ModelError(f"predict failed: {_short(exc)}") from exc

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)


def _label_datatype(estimator: Any) -> str:
    classes = getattr(estimator, "classes_", None)
    if isinstance(classes, np.ndarray):
        try:
            from .protocol import datatype_of

            return datatype_of(classes)
        except TypeError:
            return "BYTES"
    return "FP64"


# ---------------------------------------------------------------- XGBoost, LightGBM


class BoosterModel:
    """A native XGBoost (.json/.ubj) or LightGBM (.txt) model file; output "predict".

    "predict" is the booster's own prediction (XGBoost `inplace_predict`,
    LightGBM `Booster.predict`): the objective's output, so probabilities for
    classifiers ([rows] for binary, [rows, classes] for multi-class).
    """

    def __init__(self, booster: Any, kind: str, n_features: int, predict: Any) -> None:
        self.booster = booster
        self.platform = kind
        self.n_features = n_features
        self._predict_fn = predict
        self.output_names = ("predict",)
        probe = np.asarray(predict(np.zeros((2, n_features), dtype=np.float64)))
        self._out_datatype = _datatype_or_fp64(probe)
        self._out_shape = [-1, *probe.shape[1:]]
        self._thread = _model_thread()
        self.batcher: batching.Batcher | None = None
        self.batching_reason = "off"

    def enable_batching(self, max_rows: int = 512, max_delay: float = 0.0) -> bool:
        self.batcher, self.batching_reason = _verified_batcher(
            self._predict_outputs, self.n_features, self.output_names, self._thread, max_rows, max_delay
        )
        return self.batcher is not None

    def _predict_outputs(self, X: np.ndarray, wanted: tuple[str, ...]) -> list[np.ndarray]:
        return [self._predict(X)]

    predict_arrays = _predict_outputs  # the batch mode's synchronous predict
    feature_names = None  # booster files keep no column names we rely on

    @classmethod
    def load(cls, path: Path, kind: str) -> BoosterModel:
        if kind == "xgboost":
            file = _find_sklearn_file(path, XGBOOST_SUFFIXES)
            xgb = _import_extra("xgboost")
            booster = xgb.Booster()
            booster.load_model(str(file))
            n_features = booster.num_features()
            predict = booster.inplace_predict
        else:
            file = _find_sklearn_file(path, LIGHTGBM_SUFFIXES)
            lgb = _import_extra("lightgbm")
            booster = lgb.Booster(model_file=str(file))
            n_features = booster.num_feature()
            predict = booster.predict
        if not n_features:
            raise ModelLoadError(f"{file.name}: the {kind} model declares no features")
        log.info("loaded %s model from %s (%d features)", kind, file.name, n_features)
        return cls(booster, kind, int(n_features), predict)

    def metadata(self) -> dict[str, Any]:
        return {
            "inputs": [{"name": "input-0", "datatype": "FP32", "shape": [-1, self.n_features]}],
            "outputs": [{"name": "predict", "datatype": self._out_datatype, "shape": self._out_shape}],
        }

    def _features(self, request: InferRequest) -> np.ndarray:
        if len(request.inputs) != 1:
            raise InputError(f"{self.platform} models take exactly one input tensor, got {len(request.inputs)}")
        tensor = request.inputs[0]
        if len(tensor.shape) != 2 or tensor.shape[0] == 0:
            raise InputError(
                f"input {tensor.name!r}: expected a 2-D shape [rows, {self.n_features}] with at least one row, "
                f"got {list(tensor.shape)}"
            )
        if tensor.shape[1] != self.n_features:
            raise InputError(
                f"input {tensor.name!r}: the model expects {self.n_features} features, got {tensor.shape[1]}"
            )
        if tensor.array.dtype.kind not in "biuf":
            raise InputError(f"input {tensor.name!r}: {self.platform} models take numeric input, got {tensor.datatype}")
        return tensor.array

    def _wanted(self, request: InferRequest) -> tuple[str, ...]:
        for name in request.output_names or ():
            if name != "predict":
                raise InputError(f"unknown output {name!r}; this model offers predict")
        return ("predict",)

    def infer_inline(self, request: InferRequest) -> None:
        return None

    async def infer(self, request: InferRequest) -> list[dict[str, Any]]:
        X = self._features(request)
        wanted = self._wanted(request)
        if self.batcher is not None and self.batcher.accepts(X):
            (result,) = await self.batcher.submit(X, wanted)
        else:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self._thread, self._predict, X)
        return [encode_tensor("predict", result, binary=request.wants_binary("predict"))]

    def _predict(self, X: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(self._predict_fn(X))
        except (ValueError, TypeError) as exc:
            raise InputError(f"the model rejected the input: {_short(exc)}") from None
        except Exception as exc:
            raise ModelError(f"predict failed: {_short(exc)}") from exc

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)


def _verified_batcher(predict, n_features, outputs, thread, max_rows, max_delay):
    """(Batcher, why) if the model's rows are independent on the probe set, else (None, why not)."""
    if n_features is None:
        return None, "no batching: the model declares no input width"
    try:
        mismatch = batching.first_row_dependence(predict, n_features, tuple(outputs))
    except Exception as exc:  # an unusual model must never break loading
        mismatch = f"verification failed: {type(exc).__name__}"
    if mismatch:
        log.info("no batching: %s", mismatch)
        return None, f"no batching: {mismatch}"
    log.info("batching: rows verified independent (max %d rows, max delay %.1f ms)", max_rows, max_delay * 1000)
    return batching.Batcher(predict, thread, max_rows=max_rows, max_delay=max_delay), "verified"


def _datatype_or_fp64(array: np.ndarray) -> str:
    from .protocol import datatype_of

    try:
        return datatype_of(array)
    except TypeError:
        return "FP64"


def _import_extra(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ModelLoadError(
            f"format {name!r} needs the {name} package: pip install 'slotkeeper-serving[{name}]' ({exc})"
        ) from None


# ---------------------------------------------------------------- Azure ML score.py

_module_ids = itertools.count()


def find_entry_script(path: Path) -> Path:
    if path.is_file():
        if path.suffix != ".py":
            raise ModelLoadError(f"score-py model must be a .py file or a directory with score.py, got {path.name}")
        return path
    script = path / "score.py"
    if script.is_file():
        return script
    scripts = [p for p in path.glob("*.py") if p.is_file()]
    if len(scripts) == 1:
        return scripts[0]
    raise ModelLoadError(
        f"no score.py in {path} (and {len(scripts)} other .py files, so none is the obvious entry script)"
    )


def azureml_raw_data(request: InferRequest) -> str:
    """The JSON string handed to run(raw_data), shaped like an Azure ML request body.

    {"data": <first input as nested lists in its shape>}; with several
    inputs, "inputs" maps every input name to its nested lists as well.
    """
    doc: dict[str, Any] = {"data": request.inputs[0].array.tolist()}
    if len(request.inputs) > 1:
        doc["inputs"] = {t.name: t.array.tolist() for t in request.inputs}
    return json.dumps(doc)


def outputs_from_run_result(result: Any) -> list[dict[str, Any]]:
    """Map what run() returned to v2 outputs (documented in the README).

    - a dict: one output per key, except {"error": "..."} alone, which is
      the usual Azure ML way of reporting a failure: raised as ModelError;
    - a str/bytes holding JSON (Azure ML scripts often return json.dumps(...)):
      decoded, then mapped like the decoded value; other text is one BYTES element;
    - anything array-like (list, tuple, numpy array, number, bool): one output "predict".
    """
    if result is None:
        raise ModelError("run() returned None")
    if isinstance(result, bytes):
        result = result.decode("utf-8", errors="replace")
    if isinstance(result, str):
        try:
            decoded = json.loads(result)
        except ValueError:
            return [_run_output("predict", [result])]
        if isinstance(decoded, (dict, list)):
            result = decoded
        else:
            return [_run_output("predict", [result])]
    if isinstance(result, dict):
        if set(result) == {"error"} and isinstance(result["error"], str):
            raise ModelError(f"run() reported an error: {result['error'][:_MESSAGE_LIMIT]}")
        if not result:
            raise ModelError("run() returned an empty dict")
        return [_run_output(str(name), value) for name, value in result.items()]
    return [_run_output("predict", result)]


def _run_output(name: str, value: Any) -> dict[str, Any]:
    try:
        array = np.asarray(value)
        if (
            array.dtype.kind == "O"
            and array.ndim
            and any(isinstance(v, (list, tuple, dict)) for v in array.reshape(-1))
        ):
            raise ValueError("nested values are not a rectangular array of scalars")
        return encode_tensor(name, array)
    except (ValueError, TypeError) as exc:
        raise ModelError(f"run() returned a value for {name!r} that is not an array: {exc}") from None


class ScorePyModel:
    """An Azure ML entry script: init() once, then run(raw_data) per request."""

    platform = "azureml-score-py"

    def __init__(self, module: Any, script: Path, thread: ThreadPoolExecutor) -> None:
        self._run = module.run
        self.script = script
        self._thread = thread

    @classmethod
    def load(cls, path: Path) -> ScorePyModel:
        script = find_entry_script(path)
        model_dir = path if path.is_dir() else script.parent
        thread = _model_thread()
        # init() runs on the same thread as every later run(): entry scripts
        # may keep thread-bound state (sessions, thread-locals).
        try:
            module = thread.submit(_import_and_init, script, model_dir).result()
        except BaseException:
            thread.shutdown(wait=False)
            raise
        log.info("loaded score.py entry script %s (AZUREML_MODEL_DIR=%s)", script.name, model_dir)
        return cls(module, script, thread)

    def metadata(self) -> dict[str, Any]:
        # An entry script declares no schema.
        return {"inputs": [], "outputs": []}

    def infer_inline(self, request: InferRequest) -> None:
        return None

    async def infer(self, request: InferRequest) -> list[dict[str, Any]]:
        raw = azureml_raw_data(request)
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._thread, self._call_run, raw)
        return outputs_from_run_result(result)

    def _call_run(self, raw: str) -> Any:
        try:
            return self._run(raw)
        except Exception as exc:
            raise ModelError(f"score.py run() failed: {_short(exc)}") from exc

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)


def _import_and_init(script: Path, model_dir: Path) -> Any:
    # Azure ML sets AZUREML_MODEL_DIR and lets the script import its siblings.
    os.environ["AZUREML_MODEL_DIR"] = str(model_dir)
    if str(script.parent) not in sys.path:
        sys.path.insert(0, str(script.parent))
    module_name = f"slotkeeper_entry_script_{next(_module_ids)}"
    spec = importlib.util.spec_from_file_location(module_name, script)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import {script.name}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ModelLoadError(f"importing {script.name} failed: {_short(exc)}") from exc
    if not callable(getattr(module, "run", None)):
        raise ModelLoadError(f"{script.name} defines no run(raw_data) function")
    init = getattr(module, "init", None)
    if callable(init):
        try:
            init()
        except Exception as exc:
            raise ModelLoadError(f"{script.name} init() failed: {_short(exc)}") from exc
    return module
