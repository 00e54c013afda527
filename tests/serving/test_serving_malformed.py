"""~1,000 malformed infer requests: each gets its 4xx, the server stays ready, metrics count them all as failures."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator

import orjson

LIMIT = 64 * 1024  # the credit_server's body limit
VALID = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [0.1, 0.2, 0.3, 0.4]}]}


def _input(**overrides) -> dict:
    entry = {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [0.5, -1.0, 2.0, 0.0]}
    entry.update(overrides)
    return {k: v for k, v in entry.items() if v is not _DROP}


_DROP = object()


def _body(*inputs: dict, **top) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **top})


def _chunks(total: int) -> Callable[[], Iterator[bytes]]:
    def gen() -> Iterator[bytes]:
        sent = 0
        while sent < total:
            sent += 8192
            yield b"[" * 8192

    return gen


def truncated(rng: random.Random):
    valid = _body(_input(data=[rng.uniform(-5, 5) for _ in range(4)]))
    return "truncated JSON", valid[: rng.randrange(1, len(valid))], 400


def wrong_shape(rng: random.Random):
    choices = [
        _input(shape=[1, 3]),  # 4 values, shape says 3
        _input(shape=[1, 3], data=[1.0, 2.0, 3.0]),  # consistent, but the model takes 4 features
        _input(shape=[4]),  # 1-D
        _input(shape=[1, 1, 4]),  # 3-D
        _input(shape=[0, 4], data=[]),  # no rows
        _input(shape=[-1, 4]),
        _input(shape=[1.0, 4]),
        _input(shape=[True, 4]),
        _input(shape="1,4"),
        _input(shape=[rng.randrange(2, 10**6), 4]),
        _input(shape=[2, 4], data=[[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0]]),  # ragged
    ]
    return "wrong shape", _body(rng.choice(choices)), 400


def wrong_datatype(rng: random.Random):
    choices = [
        _input(datatype="FP128"),
        _input(datatype="float64"),
        _input(datatype=None),
        _input(datatype=7),
        _input(data=["0.5", "1", "2", "3"]),  # strings in an FP64 tensor
        _input(datatype="BOOL"),  # numbers in a BOOL tensor
        _input(datatype="INT8", data=[1, 2, 300, 4]),  # out of range
        _input(datatype="INT32", data=[1.5, 2.0, 3.0, 4.0]),  # floats in an INT tensor
        _input(datatype="BYTES", data=["a", "b", "c", "d"]),  # text for a numeric model
        _input(datatype="FP32", data=[1e39, 0.0, 0.0, 0.0]),  # overflows FP32
        _input(data=[None, 1.0, 2.0, 3.0]),
        _input(data=[{"x": 1}, 1.0, 2.0, 3.0]),
    ]
    return "wrong datatype", _body(rng.choice(choices)), 400


def huge(rng: random.Random):
    size = LIMIT + rng.randrange(1024, 4 * LIMIT)
    if rng.random() < 0.5:
        data = [0.123456789] * (size // 12)
        return "huge (Content-Length)", _body(_input(shape=[len(data) // 4, 4], data=data[: len(data) // 4 * 4])), 413
    return "huge (chunked)", _chunks(size), 413


def non_object(rng: random.Random):
    return (
        "non-object JSON",
        rng.choice([b"[]", b"[1, 2]", b"42", b"-0.5", b'"inputs"', b"null", b"true", b"false", b"[" * 50 + b"]" * 50]),
        400,
    )


def missing_fields(rng: random.Random):
    choices = [
        b"{}",
        orjson.dumps({"input": VALID["inputs"]}),
        orjson.dumps({"inputs": []}),
        orjson.dumps({"inputs": {}}),
        orjson.dumps({"inputs": None}),
        orjson.dumps({"inputs": [None]}),
        orjson.dumps({"inputs": ["input-0"]}),
        _body(_input(name=_DROP)),
        _body(_input(name="")),
        _body(_input(shape=_DROP)),
        _body(_input(datatype=_DROP)),
        _body(_input(data=_DROP)),
        _body(_input(data=0.5)),
        _body(_input(data={"values": [1, 2, 3, 4]})),
    ]
    return "missing fields", rng.choice(choices), 400


def other(rng: random.Random):
    choices = [
        b"",  # empty body
        b"\xff\xfe\x00{",  # not UTF-8
        b'{"inputs": [NaN]}',
        b'{"inputs": [1e400]}',
        b"{" * 2000,
        _body(_input(), _input()),  # duplicate names
        _body(_input(), _input(name="second")),  # the model takes one tensor
        _body(_input(), id=17),
        _body(_input(), parameters=[1]),
        _body(_input(), outputs=[{"name": "predict_log_proba"}]),
        _body(_input(), outputs=[{"nom": "predict"}]),
        _body(_input(), outputs="predict"),
    ]
    return "other", rng.choice(choices), 400


GENERATORS = [truncated, wrong_shape, wrong_datatype, huge, non_object, missing_fields, other]
WEIGHTS = [25, 20, 20, 4, 10, 11, 10]
N_REQUESTS = 1000


def malformed_requests(seed: int = 1234):
    rng = random.Random(seed)
    for _ in range(N_REQUESTS):
        generator = rng.choices(GENERATORS, WEIGHTS)[0]
        yield generator(rng)


def test_a_thousand_malformed_requests(credit_server, make_body):
    before = credit_server.counts()
    statuses: Counter[tuple[str, int]] = Counter()
    for category, body, expected in malformed_requests():
        content = body() if callable(body) else body
        response = credit_server.client.post(
            credit_server.infer_url(), content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == expected, (
            category,
            body if isinstance(body, bytes) else "<stream>",
            response.text,
        )
        error = response.json()["error"]
        assert isinstance(error, str) and error
        statuses[(category, response.status_code)] += 1

    assert sum(statuses.values()) == N_REQUESTS
    assert {category for category, _ in statuses} == {
        "truncated JSON",
        "wrong shape",
        "wrong datatype",
        "huge (Content-Length)",
        "huge (chunked)",
        "non-object JSON",
        "missing fields",
        "other",
    }
    assert credit_server.client.get("/v2/health/ready").status_code == 200
    after = credit_server.counts()
    assert after["failure"] - before["failure"] == N_REQUESTS
    assert after["success"] - before["success"] == 0
    assert after["observed"] - before["observed"] == N_REQUESTS
    assert after["inf_bucket"] - before["inf_bucket"] == N_REQUESTS
    assert after["in_flight"] == 0

    # And it still answers correctly.
    response = credit_server.client.post(credit_server.infer_url(), json=make_body([[0.1, 0.2, 0.3, 0.4]]))
    assert response.status_code == 200
