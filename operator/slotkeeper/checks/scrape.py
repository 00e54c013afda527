"""Scrape the candidate's pods' /metrics concurrently, for ``source: pods`` checks."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Sequence

import aiohttp

from .pod_metrics import PodMetrics, parse_pod_metrics


@dataclass(frozen=True)
class Scrape:
    pods: list[PodMetrics]
    failures: dict[str, str] = field(default_factory=dict)  # pod name -> why it is missing from `pods`

    @property
    def message(self) -> str:
        """A sentence for a check's message when some pods did not answer; empty when all did."""
        return "; ".join(f"pod {pod}: {reason}" for pod, reason in sorted(self.failures.items()))


async def scrape_pods(
    session: aiohttp.ClientSession, pods: Sequence[tuple[str, str]], port: int, timeout: float,
) -> Scrape:
    """GET http://{ip}:{port}/metrics of each (name, ip) at once; a pod that does not answer with
    parseable metrics within ``timeout`` is left out of ``pods`` and named in ``failures``. Never raises."""
    results = await asyncio.gather(*(_scrape_one(session, name, ip, port, timeout) for name, ip in pods))
    return Scrape(
        pods=[result for result in results if isinstance(result, PodMetrics)],
        failures={name: result for (name, _), result in zip(pods, results) if isinstance(result, str)},
    )


async def _scrape_one(
    session: aiohttp.ClientSession, name: str, ip: str, port: int, timeout: float,
) -> PodMetrics | str:
    """The pod's metrics, or why there are none."""
    host = f"[{ip}]" if ":" in ip else ip  # an IPv6 pod address
    try:
        async with session.get(f"http://{host}:{port}/metrics", timeout=aiohttp.ClientTimeout(total=timeout)) as reply:
            if reply.status != 200:
                return f"/metrics answered {reply.status}"
            text = await reply.text()
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except aiohttp.ClientError as error:
        return f"unreachable: {error}"
    try:
        return parse_pod_metrics(name, text)
    except ValueError as error:
        return f"unparseable metrics: {error}"
