"""What a check's status message says when a metric source cannot give a number, and the edges of
what counts as a reply. The message is what a person reads in ``status.checks[].message`` to learn
why a rollout is stalled, so it must name the source and quote what came back (shortened)."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from slotkeeper.checks.fetch import fetch_text
from slotkeeper.checks.prometheus import parse_instant_query, query_prometheus
from slotkeeper.checks.verdicts import MetricUnavailable
from slotkeeper.checks.web import fetch_web_value

# A source that has not answered within this long never will: a hang guard, not a timing check.
HANG_GUARD_SECONDS = 10


@pytest.fixture
async def hanging(serve):
    """serve a route that answers only once the test is over: a source that does not answer."""
    release = asyncio.Event()

    async def never(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({})

    async def start(path: str) -> str:
        return await serve([web.get(path, never)])

    yield start
    release.set()


def unavailable(coroutine_factory):
    """The MetricUnavailable message of a call that must raise it (and must not hang)."""
    async def run() -> str:
        with pytest.raises(MetricUnavailable) as error:
            await asyncio.wait_for(coroutine_factory(), HANG_GUARD_SECONDS)
        return str(error.value)
    return run()


def answering(status: int, body: str, path: str):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, text=body, content_type="application/json")
    return [web.get(path, handler)]


def vector(count: int, labels=lambda i: {"slot": f"s{i}"}) -> dict:
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": labels(i), "value": [0, str(i)]} for i in range(count)]}}


# ----------------------------------------------------------------------------------------- fetch


async def test_a_source_that_does_not_answer_in_time_is_unavailable_with_the_timeout_named(hanging, session):
    url = await hanging("/slow") + "/slow"
    message = await unavailable(lambda: fetch_text(session, url, 0.05, who="the stats page"))
    assert message == "the stats page did not answer within 0.05s"


# ------------------------------------------------------------------------------------ prometheus


def test_an_error_reply_without_error_type_or_error_still_says_what_came_back():
    with pytest.raises(MetricUnavailable) as error:
        parse_instant_query({"status": "error", "error": "query timed out"})
    assert str(error.value) == "prometheus: error: query timed out"

    with pytest.raises(MetricUnavailable) as error:
        parse_instant_query({"status": "pending"})
    assert str(error.value) == "prometheus: error: {'status': 'pending'}"


def test_too_many_series_are_listed_up_to_three_with_all_their_labels():
    with pytest.raises(MetricUnavailable) as error:
        parse_instant_query(vector(3, labels=lambda i: {"slot": f"s{i}", "pod": f"p{i}"}))
    assert str(error.value) == (
        'the query returned 3 series ({pod="p0", slot="s0"}, {pod="p1", slot="s1"}, {pod="p2", slot="s2"}); '
        "a check needs one: aggregate it, e.g. with sum() or max()")

    with pytest.raises(MetricUnavailable) as error:
        parse_instant_query(vector(4))
    assert str(error.value).startswith(
        'the query returned 4 series ({slot="s0"}, {slot="s1"}, {slot="s2"}, ...); a check needs one')


async def test_prometheus_that_does_not_answer_in_time_is_unavailable(hanging, session):
    address = await hanging("/api/v1/query")
    message = await unavailable(lambda: query_prometheus(session, address, "up", timeout=0.05))
    assert message == f"prometheus at {address} did not answer within 0.05s"


async def test_unreachable_prometheus_is_named_by_its_address(session, closed_port):
    address = f"http://127.0.0.1:{closed_port}"
    message = await unavailable(lambda: query_prometheus(session, address, "up", timeout=2))
    assert message.startswith(f"prometheus at {address} unreachable: ")


async def test_a_success_body_with_an_error_status_is_a_proxy_answering_not_prometheus(serve, session):
    address = await serve(answering(503, json.dumps(vector(1)), "/api/v1/query"))
    message = await unavailable(lambda: query_prometheus(session, address, "up", timeout=2))
    assert message == "prometheus answered 503"


async def test_long_replies_are_quoted_shortened_to_200_characters(serve, session):
    not_json = "x" * 300
    address = await serve(answering(500, not_json, "/api/v1/query"))
    message = await unavailable(lambda: query_prometheus(session, address, "up", timeout=2))
    assert message == f"prometheus answered 500 with no JSON: {'x' * 200!r}"

    not_an_object = "[" + ", ".join(["1"] * 150) + "]"
    address = await serve(answering(200, not_an_object, "/api/v1/query"))
    message = await unavailable(lambda: query_prometheus(session, address, "up", timeout=2))
    assert message == f"prometheus answered 200 with unexpected JSON: {not_an_object[:200]!r}"


async def test_prometheus_behind_a_path_prefix_is_asked_under_it(serve, session):
    # The prefix ends in a capital X on purpose: only a trailing "/" may be stripped from the address.
    base = await serve(answering(200, json.dumps(vector(1)), "/monitoring/X/api/v1/query"))
    assert await query_prometheus(session, base + "/monitoring/X/", "up", timeout=2) == 0.0


# ------------------------------------------------------------------------------------------- web


async def test_a_web_source_that_does_not_answer_in_time_is_unavailable(hanging, session):
    url = await hanging("/stats") + "/stats"
    message = await unavailable(lambda: fetch_web_value(session, url, "v", timeout=0.05))
    assert message == f"{url} did not answer within 0.05s"


async def test_an_unreachable_web_source_is_named_by_its_url(session, closed_port):
    url = f"http://127.0.0.1:{closed_port}/stats"
    message = await unavailable(lambda: fetch_web_value(session, url, "v", timeout=2))
    assert message.startswith(f"{url} unreachable: ")


@pytest.mark.parametrize("status", [300, 404])
async def test_only_a_2xx_web_reply_carries_a_value(serve, session, status):
    base = await serve(answering(status, '{"v": 1}', "/stats"))
    message = await unavailable(lambda: fetch_web_value(session, base + "/stats", "v", timeout=2))
    assert message == f"{base}/stats answered {status}: " + repr('{"v": 1}')


async def test_a_299_web_reply_carries_a_value(serve, session):
    base = await serve(answering(299, '{"v": 1}', "/stats"))
    assert await fetch_web_value(session, base + "/stats", "v", timeout=2) == 1.0


async def test_long_web_replies_are_quoted_shortened_to_200_characters(serve, session):
    base = await serve(answering(503, "e" * 300, "/down") + answering(200, "<" * 300, "/html"))
    message = await unavailable(lambda: fetch_web_value(session, base + "/down", "v", timeout=2))
    assert message == f"{base}/down answered 503: {'e' * 200!r}"
    message = await unavailable(lambda: fetch_web_value(session, base + "/html", "v", timeout=2))
    assert message == f"{base}/html answered no JSON: {'<' * 200!r}"
