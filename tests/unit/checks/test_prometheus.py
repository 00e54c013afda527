"""Prometheus checks: query templating, reading instant query replies, and a fake Prometheus over HTTP."""

from __future__ import annotations

import math

import pytest
from aiohttp import web

from slotkeeper.checks.prometheus import parse_instant_query, query_prometheus, render_query
from slotkeeper.checks.verdicts import MetricUnavailable


def vector(*values: str, labels: dict | None = None) -> dict:
    result = [{"metric": labels or {"slot": "green"}, "value": [1735732800.0, v]} for v in values]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


# ------------------------------------------------------------------------------------ templating


def test_render_query_substitutes_the_four_names():
    template = 'sum(rate(x{namespace="{{namespace}}",svc="{{endpoint}}",slot="{{ slot }}",v="{{revision}}"}[1m]))'
    assert render_query(template, "ml", "credit", "green", "a41b2e") == \
        'sum(rate(x{namespace="ml",svc="credit",slot="green",v="a41b2e"}[1m]))'


def test_render_query_templates_nothing_else():
    template = '{{model}} {{ args.x }} {{__import__("os")}} {{slot.upper()}} {slot=~"a{2}"}'
    assert render_query(template, "ml", "credit", "green", "r") == template


def test_a_substituted_value_is_not_read_again():
    assert render_query("{{slot}}", "ml", "credit", "{{revision}}", "r") == "{{revision}}"


# ------------------------------------------------------------------------------------- replies


@pytest.mark.parametrize("body, expected", [
    (vector("0.25"), 0.25),
    (vector(), None),  # no data: inconclusive
    ({"status": "success", "data": {"resultType": "scalar", "result": [1735732800.0, "3"]}}, 3.0),
    (vector("+Inf"), math.inf),
])
def test_parse_instant_query_reads_one_number(body, expected):
    assert parse_instant_query(body) == expected


def test_parse_instant_query_keeps_nan_for_the_verdict():
    assert math.isnan(parse_instant_query(vector("NaN")))


@pytest.mark.parametrize("body, says", [
    ({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"slot": "blue"}, "value": [0, "1"]}, {"metric": {"slot": "green"}, "value": [0, "2"]}]}},
     'the query returned 2 series ({slot="blue"}, {slot="green"}); a check needs one: aggregate it'),
    ({"status": "error", "errorType": "bad_data", "error": "parse error at char 4"},
     "prometheus: bad_data: parse error at char 4"),
    ({"status": "success", "data": {"resultType": "matrix", "result": []}},
     "the query returned a matrix; a check needs an instant vector or a scalar"),
    ({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, "x"]}]}},
     "prometheus: unreadable vector result"),
])
def test_parse_instant_query_refuses_ambiguous_or_broken_replies(body, says):
    with pytest.raises(MetricUnavailable) as error:
        parse_instant_query(body)
    assert says in str(error.value)


# ------------------------------------------------------------------------- over HTTP, on loopback


def fake_prometheus(status: int, body: dict | str, seen: list):
    async def query(request: web.Request) -> web.Response:
        seen.append(request.query["query"])
        if isinstance(body, str):
            return web.Response(status=status, text=body)
        return web.json_response(body, status=status)
    return [web.get("/api/v1/query", query)]


async def test_query_prometheus_reads_a_vector(serve, session):
    seen: list[str] = []
    address = await serve(fake_prometheus(200, vector("0.02"), seen))
    query = 'sum(rate(x{slot="green"}[1m]))'
    assert await query_prometheus(session, address + "/", query, timeout=2) == 0.02
    assert seen == [query]  # sent intact, URL-encoded on the way


async def test_query_prometheus_empty_vector_is_no_data(serve, session):
    address = await serve(fake_prometheus(200, vector(), []))
    assert await query_prometheus(session, address, "q", timeout=2) is None


async def test_query_prometheus_error_replies_are_unavailable(serve, session):
    address = await serve(fake_prometheus(500, "internal error", []))
    with pytest.raises(MetricUnavailable, match="prometheus answered 500 with no JSON"):
        await query_prometheus(session, address, "q", timeout=2)

    address = await serve(fake_prometheus(422, {"status": "error", "errorType": "execution", "error": "boom"}, []))
    with pytest.raises(MetricUnavailable, match="prometheus: execution: boom"):
        await query_prometheus(session, address, "q", timeout=2)


async def test_query_prometheus_unreachable_is_unavailable(session, closed_port):
    with pytest.raises(MetricUnavailable, match="unreachable"):
        await query_prometheus(session, f"http://127.0.0.1:{closed_port}", "q", timeout=2)
