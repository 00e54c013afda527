"""Web checks: reading a dotted JSON path, and a JSON endpoint over HTTP on loopback."""

from __future__ import annotations

import math

import pytest
from aiohttp import web

from slotkeeper.checks.verdicts import MetricUnavailable
from slotkeeper.checks.web import fetch_web_value, read_json_path

DOCUMENT = {"data": {"items": [{"value": 0.5}, {"value": "7"}], "none": None, "flag": True}, "top": 3}


@pytest.mark.parametrize("path, expected", [
    ("top", 3),
    ("data.items.0.value", 0.5),
    ("data.items.1.value", "7"),
    ("data.items.2.value", None),   # index out of range
    ("data.items.x", None),         # a list needs an index
    ("data.missing", None),
    ("top.deeper", None),           # a number has no keys
    ("data.none", None),
    ("", DOCUMENT),
])
def test_read_json_path(path, expected):
    assert read_json_path(DOCUMENT, path) == expected


def json_server(body, status: int = 200):
    async def handler(request: web.Request) -> web.Response:
        if isinstance(body, str):
            return web.Response(text=body, status=status)
        return web.json_response(body, status=status)
    return [web.get("/stats", handler)]


@pytest.mark.parametrize("path, expected", [
    ("data.items.0.value", 0.5),
    ("data.items.1.value", 7.0),  # numeric strings are numbers
    ("top", 3.0),
    ("data.none", None),          # JSON null: no data
])
async def test_fetch_web_value_reads_numbers(serve, session, path, expected):
    url = await serve(json_server(DOCUMENT)) + "/stats"
    assert await fetch_web_value(session, url, path, timeout=2) == expected


async def test_fetch_web_value_nan_string_is_a_nan(serve, session):
    url = await serve(json_server({"v": "NaN"})) + "/stats"
    assert math.isnan(await fetch_web_value(session, url, "v", timeout=2))


@pytest.mark.parametrize("body, status, path, says", [
    (DOCUMENT, 200, "data.missing", "'data.missing' not found in the reply"),
    (DOCUMENT, 200, "data.flag", "is not a number: True"),
    (DOCUMENT, 200, "data.items", "is not a number"),
    ({"v": "high"}, 200, "v", "is not a number: 'high'"),
    ("<html>oops</html>", 200, "v", "answered no JSON"),
    ({"error": "down"}, 503, "v", "answered 503"),
])
async def test_fetch_web_value_unusable_replies_are_unavailable(serve, session, body, status, path, says):
    url = await serve(json_server(body, status)) + "/stats"
    with pytest.raises(MetricUnavailable) as error:
        await fetch_web_value(session, url, path, timeout=2)
    assert says in str(error.value)


async def test_fetch_web_value_unreachable_is_unavailable(session, closed_port):
    with pytest.raises(MetricUnavailable, match="unreachable"):
        await fetch_web_value(session, f"http://127.0.0.1:{closed_port}/stats", "v", timeout=2)
