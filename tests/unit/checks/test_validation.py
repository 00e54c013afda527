"""Validation requests: comparing an inference reply, and a fake model server over HTTP on loopback."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from slotkeeper.api import Expectation, ValidationRequest
from slotkeeper.checks.validation import compare_response, run_validation

INPUTS = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP64", "data": [1, 2, 3, 4]}]}


def expect(**fields) -> Expectation:
    return Expectation.model_validate(fields)


def reply(data, shape=None, name="predict") -> dict:
    return {"model_name": "credit", "outputs": [{"name": name, "shape": shape or [len(data)], "datatype": "FP64",
                                                 "data": data}]}


# ------------------------------------------------------------------------------------- compare


@pytest.mark.parametrize("expectation, status, body, passed, message", [
    (expect(), 200, None, True, "status 200 as expected"),
    (expect(), 500, {"error": "model failed"}, False, "expected status 200, got 500: model failed"),
    (expect(status=400), 400, {"error": "bad input"}, True, "status 400 as expected"),
    (expect(outputs=[{"name": "predict", "data": [1.0, 0.0]}]), 200, reply([1, 0]), True,
     'status 200; outputs "predict" as expected'),
    (expect(outputs=[{"name": "predict", "data": [1.0, 0.0]}]), 200, reply([0.0, 0.0]), False,
     'output "predict" [0]: expected 1.0 ± 1e-06, got 0.0'),
    (expect(outputs=[{"name": "predict", "data": [0.5], "tolerance": 0.01}]), 200, reply([0.509]), True,
     'status 200; outputs "predict" as expected'),
    (expect(outputs=[{"name": "predict", "data": [0.5], "tolerance": 0.01}]), 200, reply([0.52]), False,
     'output "predict" [0]: expected 0.5 ± 0.01, got 0.52'),
    (expect(outputs=[{"name": "predict", "data": [1, 2, 3, 4], "shape": [2, 2]}]), 200,
     reply([[1, 2], [3, 4]], shape=[2, 2]), True, 'status 200; outputs "predict" as expected'),  # nested: flattened
    (expect(outputs=[{"name": "predict", "shape": [2, 1]}]), 200, reply([1, 2], shape=[2]), False,
     'output "predict" shape: expected [2, 1], got [2]'),
    (expect(outputs=[{"name": "predict", "data": [1.0]}]), 200, reply([1, 2]), False,
     'output "predict" data: expected 1 values, got 2'),
    (expect(outputs=[{"name": "proba", "data": [1.0]}]), 200, reply([1]), False,
     'output "proba" missing (outputs: "predict")'),
    (expect(outputs=[{"name": "predict", "data": [1.0]}]), 200, reply(["yes"]), False,
     "output \"predict\" [0]: expected 1.0 ± 1e-06, got 'yes'"),
    (expect(outputs=[{"name": "predict", "data": [1.0]}]), 200, reply([True]), True,
     'status 200; outputs "predict" as expected'),  # BOOL outputs compare as 1/0
    (expect(outputs=[{"name": "predict", "data": [1.0]}]), 200, {"model_name": "credit"}, False,
     "the reply has no outputs list"),
])
def test_compare_response(expectation, status, body, passed, message):
    assert compare_response(expectation, status, body) == (passed, message)


# ------------------------------------------------------------------------- over HTTP, on loopback


def model_server(status: int, body, seen: list | None = None, delay: float = 0.0):
    async def infer(request: web.Request) -> web.Response:
        if seen is not None:
            seen.append((request.match_info["model"], await request.json()))
        await asyncio.sleep(delay)
        if isinstance(body, str):
            return web.Response(status=status, text=body)
        return web.json_response(body, status=status)
    return [web.post("/v2/models/{model}/infer", infer)]


def smoke(**expectation) -> ValidationRequest:
    return ValidationRequest(name="smoke", request=INPUTS, expect=expectation or {}, timeout_seconds=2)


async def test_run_validation_posts_the_request_and_compares_outputs(serve, session):
    seen: list = []
    base = await serve(model_server(200, reply([1, 0]), seen))
    passed, message = await run_validation(session, base, "credit",
                                           smoke(outputs=[{"name": "predict", "data": [1, 0]}]))
    assert (passed, message) == (True, 'validation "smoke": status 200; outputs "predict" as expected')
    assert seen == [("credit", INPUTS)]

    passed, message = await run_validation(session, base, "credit",
                                           smoke(outputs=[{"name": "predict", "data": [1, 1]}]))
    assert (passed, message) == (False, 'validation "smoke": output "predict" [1]: expected 1.0 ± 1e-06, got 0')


async def test_run_validation_fails_on_a_500(serve, session):
    base = await serve(model_server(500, {"error": "predict() failed: ValueError"}))
    assert await run_validation(session, base, "credit", smoke()) == \
        (False, 'validation "smoke": expected status 200, got 500: predict() failed: ValueError')


async def test_run_validation_fails_on_a_reply_that_is_not_json(serve, session):
    base = await serve(model_server(200, "<html>proxy</html>"))
    passed, message = await run_validation(session, base, "credit", smoke(outputs=[{"name": "p", "data": [1]}]))
    assert not passed and "not a JSON object" in message


async def test_run_validation_never_raises(session, serve, closed_port):
    passed, message = await run_validation(session, f"http://127.0.0.1:{closed_port}", "credit", smoke())
    assert not passed and message.startswith('validation "smoke": http://127.0.0.1:') and "unreachable" in message

    base = await serve(model_server(200, reply([1]), delay=0.5))
    slow = ValidationRequest(name="slow", request=INPUTS, timeout_seconds=0.05)
    assert await run_validation(session, base, "credit", slow) == \
        (False, f'validation "slow": no answer from {base}/v2/models/credit/infer within 0.05s')
