"""Scrape the candidate's pods' /metrics concurrently, for ``source: pods`` checks: directly by pod IP
or through the apiserver's pods/proxy (see :mod:`.access`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Sequence

import aiohttp

from .access import Target, apiserver_refusal, join_path, pod_url
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
    """GET http://{ip}:{port}/metrics of each (name, ip) at once (see scrape_targets)."""
    return await scrape_targets(session, [(name, Target(join_path(pod_url(ip, port), "metrics")))
                                          for name, ip in pods], timeout)


async def scrape_targets(
    session: aiohttp.ClientSession, targets: Sequence[tuple[str, Target]], timeout: float,
) -> Scrape:
    """GET each (pod name, /metrics target) at once, directly or through the apiserver proxy; a pod that
    does not answer with parseable metrics within ``timeout`` is left out of ``pods`` and named in
    ``failures``. Never raises."""
    results = await asyncio.gather(*(_scrape_one(session, name, target, timeout) for name, target in targets))
    return Scrape(
        pods=[result for result in results if isinstance(result, PodMetrics)],
        failures={name: result for (name, _), result in zip(targets, results) if isinstance(result, str)},
    )


async def _scrape_one(session: aiohttp.ClientSession, name: str, target: Target, timeout: float) -> PodMetrics | str:
    """The pod's metrics, or why there are none."""
    try:
        async with session.get(target.url, **target.request_options(),
                               timeout=aiohttp.ClientTimeout(total=timeout)) as reply:
            status, text = reply.status, await reply.text()
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except aiohttp.ClientError as error:
        return f"unreachable: {error}"
    refusal = apiserver_refusal(status, text) if target.through_apiserver else None
    if refusal:  # the apiserver's own Status object: the pod was not reached
        return f"unreachable: {refusal}"
    if status != 200:
        return f"/metrics answered {status}"
    try:
        return parse_pod_metrics(name, text)
    except ValueError as error:
        return f"unparseable metrics: {error}"
