"""``source: prometheus`` checks: render the user's query, ask Prometheus, read one number.

A check needs exactly one number, so a query must aggregate (``sum(...)``, ``max(...)``,
``histogram_quantile(...)``): several series are an ambiguous answer, reported as such
(:class:`MetricUnavailable`, hence Inconclusive), never silently reduced to the first one.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

import aiohttp

from .fetch import fetch_text
from .verdicts import MetricUnavailable

# Only these four names are templated; anything else in the query is sent as written.
_PLACEHOLDER = re.compile(r"\{\{\s*(namespace|endpoint|slot|revision)\s*\}\}")


def render_query(template: str, namespace: str, endpoint: str, slot: str, revision: str) -> str:
    """Substitute {{namespace}}, {{endpoint}}, {{slot}} and {{revision}}; nothing is evaluated.

    One pass, so a substituted value is never read as a placeholder. The values are Kubernetes names
    and a hex hash: they need no escaping inside a PromQL string.
    """
    values = {"namespace": namespace, "endpoint": endpoint, "slot": slot, "revision": revision}
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def parse_instant_query(body: Mapping[str, Any]) -> float | None:
    """The value of an instant query's JSON reply: one sample or a scalar; None for an empty vector.

    "NaN"/"+Inf" come back as floats (the verdict calls them inconclusive). Raises MetricUnavailable
    for an error reply, several samples, or a result type that is not a number.
    """
    if body.get("status") != "success":
        raise MetricUnavailable(f"prometheus: {body.get('errorType', 'error')}: {body.get('error', body)}")
    data = body.get("data") or {}
    kind, result = data.get("resultType"), data.get("result")
    try:
        if kind == "scalar":
            return float(result[1])
        if kind == "vector":
            if not result:
                return None
            if len(result) > 1:
                labels = ", ".join(_labels(sample.get("metric") or {}) for sample in result[:3])
                more = ", ..." if len(result) > 3 else ""
                raise MetricUnavailable(f"the query returned {len(result)} series ({labels}{more}); "
                                        "a check needs one: aggregate it, e.g. with sum() or max()")
            return float(result[0]["value"][1])
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise MetricUnavailable(f"prometheus: unreadable {kind} result: {error!r}") from None
    raise MetricUnavailable(f"the query returned a {kind}; a check needs an instant vector or a scalar")


async def query_prometheus(
    session: aiohttp.ClientSession, address: str, query: str, timeout: float,
) -> float | None:
    """GET {address}/api/v1/query?query=...; the value as :func:`parse_instant_query` reads it.

    Raises MetricUnavailable when Prometheus cannot be reached or answers with an error.
    """
    url = f"{address.rstrip('/')}/api/v1/query"
    status, text = await fetch_text(session, url, timeout, who=f"prometheus at {address}", params={"query": query})
    try:
        body = json.loads(text)
    except ValueError:
        raise MetricUnavailable(f"prometheus answered {status} with no JSON: {text[:200]!r}") from None
    if not isinstance(body, dict):
        raise MetricUnavailable(f"prometheus answered {status} with unexpected JSON: {text[:200]!r}")
    if status != 200 and body.get("status") == "success":  # a proxy in between, most likely
        raise MetricUnavailable(f"prometheus answered {status}")
    return parse_instant_query(body)


def _labels(metric: Mapping[str, str]) -> str:
    return "{" + ", ".join(f'{key}="{value}"' for key, value in sorted(metric.items())) + "}"
