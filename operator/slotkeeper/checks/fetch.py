"""The one GET the metric sources share: a body, or MetricUnavailable saying why there is none."""

from __future__ import annotations

from typing import Mapping

import aiohttp

from .verdicts import MetricUnavailable


async def fetch_text(
    session: aiohttp.ClientSession, url: str, timeout: float, *, who: str, params: Mapping[str, str] | None = None,
) -> tuple[int, str]:
    """(status, body text) of ``GET url``; a timeout or connection error is MetricUnavailable naming ``who``."""
    try:
        async with session.get(url, params=params, timeout=aiohttp.ClientTimeout(total=timeout)) as reply:
            return reply.status, await reply.text()
    except TimeoutError:
        raise MetricUnavailable(f"{who} did not answer within {timeout:g}s") from None
    except aiohttp.ClientError as error:
        raise MetricUnavailable(f"{who} unreachable: {error}") from None
