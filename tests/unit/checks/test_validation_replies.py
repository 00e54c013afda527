"""Validation replies at the edges: no body at all, error replies without an error text, several
outputs, a value exactly at the tolerance, and a base URL written with a trailing slash."""

from __future__ import annotations

import pytest
from aiohttp import web

from slotkeeper.api import Expectation, ValidationRequest
from slotkeeper.checks.validation import compare_response, run_validation


def expect(**fields) -> Expectation:
    return Expectation.model_validate(fields)


def outputs(**data) -> dict:
    return {"outputs": [{"name": name, "shape": [len(values)], "data": values} for name, values in data.items()]}


@pytest.mark.parametrize("body", [None, {}, {"error": ""}, ["not", "an", "object"]])
def test_a_wrong_status_without_an_error_text_says_just_the_status(body):
    assert compare_response(expect(), 503, body) == (False, "expected status 200, got 503")


def test_no_body_at_all_has_no_outputs():
    assert compare_response(expect(outputs=[{"name": "p", "data": [1]}]), 200, None) == \
        (False, "the reply has no outputs list")


def test_a_missing_output_lists_the_outputs_that_came_back():
    wanted = expect(outputs=[{"name": "proba", "data": [1]}])
    assert compare_response(wanted, 200, outputs(predict=[1], label=[0])) == \
        (False, 'output "proba" missing (outputs: "predict", "label")')
    assert compare_response(wanted, 200, {"outputs": []}) == (False, 'output "proba" missing (outputs: none)')


def test_every_expected_output_is_named_when_all_match():
    wanted = expect(outputs=[{"name": "predict", "data": [1]}, {"name": "label", "data": [0]}])
    assert compare_response(wanted, 200, outputs(predict=[1], label=[0])) == \
        (True, 'status 200; outputs "predict", "label" as expected')


def test_a_value_exactly_at_the_tolerance_passes():
    wanted = expect(outputs=[{"name": "p", "data": [0.5], "tolerance": 0.25}])
    assert compare_response(wanted, 200, outputs(p=[0.75]))[0] is True
    assert compare_response(wanted, 200, outputs(p=[0.25]))[0] is True
    assert compare_response(wanted, 200, outputs(p=[0.875]))[0] is False


async def test_a_base_url_with_a_trailing_slash_reaches_the_same_infer_url(serve, session):
    seen = []

    async def infer(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response(outputs(p=[1]))

    base = await serve([web.post("/v2/models/{model}/infer", infer)])
    request = ValidationRequest(name="smoke", request={"inputs": []}, timeout_seconds=2)
    assert await run_validation(session, base + "/", "credit", request) == \
        (True, 'validation "smoke": status 200 as expected')
    assert seen == ["/v2/models/credit/infer"]
