"""Scraping pods over real HTTP on loopback: two fake pods, one that is down, one that is slow."""

from __future__ import annotations

import asyncio

from aiohttp import web
from yarl import URL

from slotkeeper.checks.pod_metrics import derive
from slotkeeper.checks.scrape import scrape_pods

from .exposition import FakePod

REV = "a41b2e"


def pod_server(pod: FakePod, delay: float = 0.0, status: int = 200, text: str | None = None):
    async def metrics(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.Response(text=pod.text() if text is None else text, status=status, content_type="text/plain")
    return [web.get("/metrics", metrics)]


async def start_pod(serve, pod: FakePod, host: str = "127.0.0.1", port: int | None = None, **options):
    url = URL(await serve(pod_server(pod, **options), host=host, port=port))
    return url.host, url.port


async def test_scrape_pods_reads_every_pod_and_feeds_derive(serve, session):
    # Like pods in a cluster: one port, two addresses (all of 127.0.0.0/8 is loopback).
    one, two = FakePod(), FakePod()
    ip1, port = await start_pod(serve, one)
    ip2, _ = await start_pod(serve, two, host="127.0.0.2", port=port)
    pods = [("credit-green-1", ip1), ("credit-green-2", ip2)]

    before = await scrape_pods(session, pods, port, timeout=2)
    one.serve(9, 0.07)
    two.serve(1, 0.07, "failure")
    after = await scrape_pods(session, pods, port, timeout=2)

    assert [p.pod for p in after.pods] == ["credit-green-1", "credit-green-2"] and after.failures == {}
    assert derive(before.pods, after.pods, 10.0, revision=REV)["error_ratio"] == 0.1


async def test_scrape_pods_asks_all_pods_at_once(serve, session):
    # Each answer waits until all three requests arrived: scraping one pod after another would time out.
    arrived, everyone = [], asyncio.Event()

    async def metrics(request: web.Request) -> web.Response:
        arrived.append(request)
        if len(arrived) == 3:
            everyone.set()
        await asyncio.wait_for(everyone.wait(), timeout=1)
        return web.Response(text=FakePod().text(), content_type="text/plain")

    url = URL(await serve([web.get("/metrics", metrics)]))
    scrape = await scrape_pods(session, [("a", url.host), ("b", url.host), ("c", url.host)], url.port, timeout=2)
    assert [p.pod for p in scrape.pods] == ["a", "b", "c"] and scrape.failures == {}


async def test_scrape_pods_leaves_out_pods_that_do_not_answer(serve, session):
    ip, port = await start_pod(serve, FakePod(), delay=0.3)
    scrape = await scrape_pods(session, [("slow", ip)], port, timeout=0.05)
    assert scrape.pods == [] and scrape.failures == {"slow": "no answer within 0.05s"}

    ip, port = await start_pod(serve, FakePod())
    scrape = await scrape_pods(session, [("up", ip), ("down", "127.0.0.2")], port, timeout=2)
    assert [p.pod for p in scrape.pods] == ["up"]
    assert scrape.failures["down"].startswith("unreachable")
    assert scrape.message.startswith("pod down: unreachable")


async def test_scrape_pods_reports_error_statuses_and_garbage(serve, session):
    ip, port = await start_pod(serve, FakePod(), status=500)
    assert (await scrape_pods(session, [("p", ip)], port, 2)).failures == {"p": "/metrics answered 500"}

    ip, port = await start_pod(serve, FakePod(), text="<html>login</html>\n")
    assert (await scrape_pods(session, [("p", ip)], port, 2)).failures["p"].startswith("unparseable metrics")


async def test_scrape_pods_with_no_pods_is_empty(session):
    scrape = await scrape_pods(session, [], 8080, 2)
    assert scrape.pods == [] and scrape.message == ""
