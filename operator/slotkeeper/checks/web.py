"""``source: web`` checks: GET a URL answering JSON and read one number from it."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from .fetch import fetch_text
from .verdicts import MetricUnavailable

_MISSING = object()


def read_json_path(document: Any, path: str) -> Any:
    """The value at a dotted ``path`` (``data.items.0.value``; digits index lists); None when missing.

    Keys that contain a dot cannot be addressed; an empty path is the whole document.
    """
    value = _walk(document, path)
    return None if value is _MISSING else value


async def fetch_web_value(session: aiohttp.ClientSession, url: str, json_path: str, timeout: float) -> float | None:
    """GET ``url`` and read the number at ``json_path``; None when the value there is JSON null.

    A number or a numeric string (Prometheus writes "0.5", "NaN") is a value. Raises MetricUnavailable
    for an unreachable URL, a non-2xx reply, a reply that is not JSON, a missing path or a non-number.
    """
    status, text = await fetch_text(session, url, timeout, who=url)
    if not 200 <= status < 300:
        raise MetricUnavailable(f"{url} answered {status}: {text[:200]!r}")
    try:
        document = json.loads(text)
    except ValueError:
        raise MetricUnavailable(f"{url} answered no JSON: {text[:200]!r}") from None
    value = _walk(document, json_path)
    if value is _MISSING:
        raise MetricUnavailable(f"{json_path!r} not found in the reply from {url}")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise MetricUnavailable(f"{json_path!r} in the reply from {url} is not a number: {value!r:.100}")
    try:
        return float(value)
    except ValueError:
        raise MetricUnavailable(f"{json_path!r} in the reply from {url} is not a number: {value!r:.100}") from None


def _walk(document: Any, path: str) -> Any:
    """Like read_json_path, but tells a missing key (_MISSING) from a JSON null (None)."""
    value = document
    for part in path.split(".") if path else ():
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value
