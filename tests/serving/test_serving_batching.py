"""Adaptive batching: load-time verification, identical answers, failures confined to their request."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson
import pytest

from slotkeeper_serving.batching import Batcher, first_row_dependence
from slotkeeper_serving.models import InputError, SklearnModel
from slotkeeper_serving.protocol import InferRequest, Tensor


class RowWise:
    """Row-independent, with a poison value that makes predict raise (as scikit-learn does for bad input)."""

    n_features_in_ = 3

    def predict(self, X):
        if (X == 999).any():
            raise ValueError("999 is not allowed")
        return X.sum(axis=1) * 2


class BatchDependent:
    """Centres each call's rows: the answer depends on what else is in the call."""

    n_features_in_ = 3

    def predict(self, X):
        return X[:, 0] - X[:, 0].mean()


def request(X: np.ndarray, outputs=None) -> InferRequest:
    tensor = Tensor("input-0", "FP64" if X.dtype == np.float64 else "FP32", X.shape, X)
    return InferRequest(id=None, inputs=(tensor,), output_names=outputs, parameters={})


def test_verification_accepts_trees_and_refuses_batch_dependent_models(trained):
    forest_like = trained("tree")
    assert first_row_dependence(lambda X, o: [forest_like.predict(X)], 4, ("predict",)) is None
    assert first_row_dependence(lambda X, o: [forest_like.predict_proba(X)], 4, ("predict_proba",)) is None
    why = first_row_dependence(lambda X, o: [BatchDependent().predict(X)], 3, ("predict",))
    assert why and "differ when predicted in chunks" in why
    assert "no row per input row" in first_row_dependence(lambda X, o: [X.sum()], 3, ("predict",))


def test_batch_dependent_model_keeps_one_call_per_request():
    model = SklearnModel(BatchDependent(), use_fastpath=False)
    assert not model.enable_batching()
    assert "differ" in model.batching_reason
    assert model.batcher is None


def test_models_enable_batching_only_when_verified(model_files, trained):
    model = SklearnModel(trained("tree"), use_fastpath=False)
    assert model.enable_batching(), model.batching_reason
    # A linear model's BLAS product may round differently for other row
    # counts (it does here for predict_proba); whatever the verdict, it is the probe's.
    linear = SklearnModel(trained("pipeline"), use_fastpath=False)
    assert linear.enable_batching() or "differ" in linear.batching_reason
    text = SklearnModel(trained("text"))
    assert not text.enable_batching()  # no declared width: nothing to probe


def _blocked_predict():
    """A predict whose first call waits until released, so later requests queue behind it."""
    gate, calls = threading.Event(), []
    est = RowWise()

    def predict(X, outputs):
        calls.append(len(X))
        if len(calls) == 1:
            gate.wait(10)
        return [est.predict(X)]

    return gate, calls, predict


async def test_requests_queued_behind_a_busy_model_go_in_one_call_with_identical_answers():
    gate, calls, predict = _blocked_predict()
    executor = ThreadPoolExecutor(1)
    batcher = Batcher(predict, executor, max_rows=100)
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((n, 3)) for n in (1, 2, 1, 3, 1)]
    tasks = [asyncio.create_task(batcher.submit(inputs[0], ("predict",)))]
    while not calls:  # the first request is in the model
        await asyncio.sleep(0.001)
    tasks += [asyncio.create_task(batcher.submit(X, ("predict",))) for X in inputs[1:]]
    await asyncio.sleep(0.01)
    gate.set()
    results = await asyncio.gather(*tasks)
    assert calls == [1, 7]  # one call for the first, one for the four that queued
    for X, (got,) in zip(inputs, results, strict=True):
        assert got.tobytes() == RowWise().predict(X).tobytes()
    executor.shutdown()


async def test_a_failing_row_fails_only_its_own_request():
    gate, calls, predict = _blocked_predict()
    executor = ThreadPoolExecutor(1)
    batcher = Batcher(predict, executor)
    good = np.ones((2, 3))
    bad = np.array([[1.0, 999.0, 2.0]])
    first = asyncio.create_task(batcher.submit(good, ("predict",)))
    while not calls:
        await asyncio.sleep(0.001)
    queued = [asyncio.create_task(batcher.submit(X, ("predict",))) for X in (good, bad, good)]
    await asyncio.sleep(0.01)
    gate.set()
    outcomes = await asyncio.gather(first, *queued, return_exceptions=True)
    assert isinstance(outcomes[2], ValueError)
    for i in (0, 1, 3):
        assert outcomes[i][0].tolist() == [6.0, 6.0]
    assert calls == [2, 5, 2, 1, 2]  # the combined call failed, then each on its own
    assert batcher.retries == 1
    executor.shutdown()


async def test_different_dtypes_and_outputs_are_never_combined():
    gate, calls, predict = _blocked_predict()
    executor = ThreadPoolExecutor(1)
    batcher = Batcher(predict, executor)
    first = asyncio.create_task(batcher.submit(np.ones((1, 3)), ("predict",)))
    while not calls:
        await asyncio.sleep(0.001)
    queued = [
        asyncio.create_task(batcher.submit(np.ones((1, 3), dtype=np.float32), ("predict",))),
        asyncio.create_task(batcher.submit(np.ones((1, 3)), ("predict",))),
        asyncio.create_task(batcher.submit(np.ones((1, 3)), ("other",))),
        asyncio.create_task(batcher.submit(np.ones((1, 3), dtype=np.float32), ("predict",))),
    ]
    await asyncio.sleep(0.01)
    gate.set()
    results = await asyncio.gather(first, *queued)
    assert calls == [1, 2, 1, 1]  # the first; the two float32 together; the fp64 'predict'; 'other'
    assert [r[0].dtype for r in results] == [np.float64, np.float32, np.float64, np.float64, np.float32]
    executor.shutdown()


def test_max_rows_bounds_a_combined_call():
    batcher = Batcher(lambda X, o: [X], None, max_rows=4)
    loop = asyncio.new_event_loop()
    try:
        from slotkeeper_serving.batching import _Item

        for n in (3, 1, 2, 1):
            batcher._queue.append((("<f8", ("predict",)), _Item(np.ones((n, 1)), loop.create_future())))
        _, batch, rows = batcher._take()
        assert [i.X.shape[0] for i in batch] == [3, 1] and rows == 4
        _, batch, rows = batcher._take()
        assert [i.X.shape[0] for i in batch] == [2, 1] and rows == 3
    finally:
        loop.close()


def test_concurrent_http_requests_get_the_answers_of_one_at_a_time_calls(start_server, model_files, trained):
    from sklearn.ensemble import RandomForestClassifier

    X_train, y_train = np.random.default_rng(2).standard_normal((100, 4)), np.arange(100) % 3
    forest = RandomForestClassifier(n_estimators=30, random_state=0).fit(X_train, y_train)
    model = SklearnModel(forest)
    assert model.enable_batching(), model.batching_reason
    server = start_server(model_files["logreg"], model_name="forest", loader=lambda settings: model)
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((int(rng.integers(1, 4)), 4)) for _ in range(48)]
    inputs[7][0, 1] = np.nan  # sent as JSON null: refused before the model, the other requests unaffected
    results: dict[int, tuple[int, bytes]] = {}

    def send(i: int) -> None:
        import httpx

        X = inputs[i]
        body = {"inputs": [{"name": "x", "shape": list(X.shape), "datatype": "FP64",
                            "data": [None if np.isnan(v) else v for v in X.ravel().tolist()]}],
                "outputs": [{"name": "predict_proba", "parameters": {"binary_data": True}}]}
        with httpx.Client(base_url=server.base_url, timeout=20) as client:
            r = client.post(server.infer_url(), content=orjson.dumps(body))
            results[i] = (r.status_code, r.content)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, X in enumerate(inputs):
        status, content = results[i]
        if i == 7:
            assert status == 400  # JSON null is not a number: refused before the model
            continue
        assert status == 200, content
        doc = orjson.loads(content[: content.index(b"}]}") + 3])
        assert doc["outputs"][0]["shape"] == [len(X), 3]
        assert content.endswith(forest.predict_proba(X).astype("<f8").tobytes())
    assert model.batcher.batched_requests == len(inputs) - 1


class Gated(RowWise):
    """RowWise whose next predict, once armed, waits for the gate (so requests queue behind it)."""

    def __init__(self):
        self.armed = False
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.calls: list[int] = []

    def predict(self, X):
        if self.armed:
            self.calls.append(len(X))
            if len(self.calls) == 1:
                self.entered.set()
                self.gate.wait(10)
        return super().predict(X)


def test_over_http_a_bad_request_in_a_batch_fails_alone_and_counts_as_one_failure(start_server, model_files):
    import httpx

    est = Gated()
    model = SklearnModel(est, use_fastpath=False)
    assert model.enable_batching(), model.batching_reason
    est.armed = True
    server = start_server(model_files["logreg"], model_name="gated", loader=lambda settings: model)
    before = server.counts()
    payloads = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [1.0, 999.0, 1.0], [0.5, 0.5, 0.5]]
    results: dict[int, httpx.Response] = {}

    def send(i: int) -> None:
        body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": payloads[i]}]}
        with httpx.Client(base_url=server.base_url, timeout=20) as client:
            results[i] = client.post(server.infer_url(), content=orjson.dumps(body))

    first = threading.Thread(target=send, args=(0,))
    first.start()
    assert est.entered.wait(10)
    others = [threading.Thread(target=send, args=(i,)) for i in (1, 2, 3)]
    for t in others:
        t.start()
    from .conftest import wait_until

    wait_until(lambda: len(model.batcher._queue) == 3, what="three requests queued behind the first")
    est.gate.set()
    for t in [first, *others]:
        t.join()
    assert est.calls == [1, 3, 1, 1, 1]  # the queued three together; that failed, so each alone
    assert results[2].status_code == 400 and "999 is not allowed" in results[2].json()["error"]
    for i in (0, 1, 3):
        assert results[i].status_code == 200
        assert results[i].json()["outputs"][0]["data"] == [2 * sum(payloads[i])]
    after = server.counts()
    assert after["failure"] - before["failure"] == 1 and after["success"] - before["success"] == 3


def test_a_batch_within_inline_rows_is_predicted_on_the_loop_and_a_larger_one_on_the_model_thread():
    threads = []

    def predict(X, outputs):
        threads.append((X.shape[0], threading.get_ident()))
        return [X.sum(axis=1)]

    async def scenario():
        executor = ThreadPoolExecutor(max_workers=1)
        batcher = Batcher(predict, executor, inline_rows=4)
        small = await batcher.submit(np.ones((4, 2)), ("predict",))
        large = await batcher.submit(np.ones((5, 2)), ("predict",))
        executor.shutdown()
        return small, large

    small, large = asyncio.run(scenario())
    loop_thread = threading.get_ident()  # asyncio.run runs the loop on this thread
    assert [rows for rows, _ in threads] == [4, 5]
    assert threads[0][1] == loop_thread and threads[1][1] != loop_thread
    assert small[0].tolist() == [2.0] * 4 and large[0].tolist() == [2.0] * 5


def test_a_forest_with_the_flat_walk_batches_small_batches_on_the_loop_and_other_models_never(trained):
    from sklearn.ensemble import RandomForestClassifier

    from slotkeeper_serving import forestpath

    X, y = np.random.default_rng(4).standard_normal((80, 4)), np.arange(80) % 2
    forest = SklearnModel(RandomForestClassifier(n_estimators=10, random_state=0).fit(X, y))
    assert forest.enable_batching(), forest.batching_reason
    assert forest.batcher.inline_rows == forestpath.INLINE_ROWS > 0
    plain = SklearnModel(RandomForestClassifier(n_estimators=10, random_state=0).fit(X, y), use_fastpath=False)
    assert plain.enable_batching() and plain.batcher.inline_rows == 0  # the estimator's own predict: thread
    tree = SklearnModel(trained("tree"))
    assert tree.enable_batching() and tree.batcher.inline_rows == 0
