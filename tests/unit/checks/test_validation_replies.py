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


def text_server(status: int, text: str, prefix: str = ""):
    async def infer(request: web.Request) -> web.Response:
        return web.Response(status=status, text=text, content_type="text/html")
    return [web.post(prefix + "/v2/models/{model}/infer", infer)]


async def test_a_proxy_error_page_is_reported_as_the_wrong_status(serve, session):
    base = await serve(text_server(502, "<html>Bad Gateway</html>"))
    request = ValidationRequest(name="smoke", request={"inputs": []}, timeout_seconds=2,
                                expect={"outputs": [{"name": "p", "data": [1]}]})
    assert await run_validation(session, base, "credit", request) == \
        (False, 'validation "smoke": expected status 200, got 502')


async def test_a_reply_that_is_not_json_passes_when_only_the_status_is_expected(serve, session):
    base = await serve(text_server(200, "OK"))
    request = ValidationRequest(name="smoke", request={"inputs": []}, timeout_seconds=2)
    assert await run_validation(session, base, "credit", request) == (True, 'validation "smoke": status 200 as expected')


async def test_a_reply_that_is_not_json_is_quoted_shortened_to_200_characters(serve, session):
    page = "<p>" * 100
    base = await serve(text_server(200, page))
    request = ValidationRequest(name="smoke", request={"inputs": []}, timeout_seconds=2,
                                expect={"outputs": [{"name": "p", "data": [1]}]})
    assert await run_validation(session, base, "credit", request) == \
        (False, f'validation "smoke": status 200, but the reply is not a JSON object: {page[:200]!r}')


async def test_a_model_server_behind_a_path_prefix_is_asked_under_it(serve, session):
    # The prefix ends in a capital X on purpose: only a trailing "/" may be stripped from the URL.
    base = await serve(text_server(200, "OK", prefix="/serving/X"))
    request = ValidationRequest(name="smoke", request={"inputs": []}, timeout_seconds=2)
    assert await run_validation(session, base + "/serving/X/", "credit", request) == \
        (True, 'validation "smoke": status 200 as expected')
