"""Checks run through the apiserver's proxy against a fake apiserver on loopback: the requests carry
the operator's credentials and name the endpoint's namespace; the apiserver's own refusals (a Status
object) are reported as the pod or slot being unreachable, never as its answer; a direct backend's
Status-shaped reply stays the backend's answer. Also: sources that hang are given up on, and a
check that is not due does not keep the ones after it from running."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from slotkeeper.api import ValidationRequest
from slotkeeper.checks.access import ApiServerProxy, Target
from slotkeeper.checks.runner import CheckRunner
from slotkeeper.checks.scrape import scrape_targets
from slotkeeper.checks.validation import send_validation
from slotkeeper.checks.verdicts import Verdict

from .exposition import FakePod
from .test_runner import NOW, REV, Clock, candidate, endpoint, observed, smoke

TOKEN = {"authorization": "Bearer t0ken"}
HANG_GUARD_SECONDS = 10  # a source that has not answered within this long never will (not a timing check)
DIAL = "error trying to reach service: dial tcp 10.0.0.2:8080: connect: connection refused"
NO_ENDPOINTS = 'no endpoints available for service "credit-green:http"'


def status_reply(code: int, reason: str, message: str) -> web.Response:
    return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                              "message": message, "reason": reason, "code": code}, status=code)


def fake_apiserver(pod: FakePod, seen: list, *, slot_refuses: bool = False):
    """pods/proxy and services/proxy as the apiserver answers them; 401 without the token."""
    def authorised(request: web.Request) -> bool:
        seen.append((request.method, request.path, request.headers.get("authorization")))
        return request.headers.get("authorization") == TOKEN["authorization"]

    async def pod_proxy(request: web.Request) -> web.Response:
        if not authorised(request):
            return status_reply(401, "Unauthorized", "Unauthorized")
        if request.match_info["ns"] != "ml":
            return status_reply(404, "NotFound", f'pods "{request.match_info["pod"]}" not found')
        if request.match_info["pod"] == "credit-green-1:8080":
            return web.Response(text=pod.text(), content_type="text/plain")
        return status_reply(503, "ServiceUnavailable", DIAL)

    async def service_proxy(request: web.Request) -> web.Response:
        if not authorised(request):
            return status_reply(401, "Unauthorized", "Unauthorized")
        if slot_refuses:
            return status_reply(503, "ServiceUnavailable", NO_ENDPOINTS)
        return web.json_response({"outputs": []})

    return [web.get("/api/v1/namespaces/{ns}/pods/{pod}/proxy/metrics", pod_proxy),
            web.post("/api/v1/namespaces/{ns}/services/{svc}/proxy/v2/models/{model}/infer", service_proxy)]


ERRORS = {"name": "errors", "source": "pods", "metric": "error_ratio", "max": 0.05}


async def test_pods_are_scraped_through_the_apiserver_with_credentials_and_refusals_named(serve, session):
    pod, seen = FakePod(version=REV), []
    server = await serve(fake_apiserver(pod, seen))
    clock = Clock()
    runner = CheckRunner(session, clock=clock, access=ApiServerProxy(server, credentials=lambda: TOKEN))
    pods = observed(candidate("credit-green-1", "10.0.0.1"), candidate("credit-green-2", "10.0.0.2"))
    spec = endpoint(metrics=[ERRORS])

    await runner.run(spec, pods, NOW)  # the baseline
    pod.serve(9, 0.02).serve(1, 0.02, "failure")
    clock.now += 10
    verdict = (await runner.run(spec, pods, NOW)).verdicts["errors"]

    assert (verdict.outcome, verdict.value) == ("Fail", 0.1)
    assert verdict.message == ("error_ratio 0.1 is above max 0.05; pod credit-green-2: unreachable: "
                               f"the Kubernetes API proxy answered 503 ServiceUnavailable: {DIAL}")
    assert {(method, path, auth) for method, path, auth in seen} == {
        ("GET", "/api/v1/namespaces/ml/pods/credit-green-1:8080/proxy/metrics", "Bearer t0ken"),
        ("GET", "/api/v1/namespaces/ml/pods/credit-green-2:8080/proxy/metrics", "Bearer t0ken")}


async def test_a_direct_pods_status_shaped_reply_is_its_own_answer(serve, session):
    async def metrics(request: web.Request) -> web.Response:
        return status_reply(503, "ServiceUnavailable", "warming up")
    base = await serve([web.get("/metrics", metrics)])
    scrape = await scrape_targets(session, [("credit-green-1", Target(base + "/metrics"))], 5)
    assert scrape.failures == {"credit-green-1": "/metrics answered 503"}


async def test_validation_goes_through_the_apiserver_with_credentials(serve, session):
    seen = []
    server = await serve(fake_apiserver(FakePod(), seen))
    runner = CheckRunner(session, access=ApiServerProxy(server, credentials=lambda: TOKEN))
    gates = await runner.run(endpoint("Validating", validation=[smoke("a")]), observed(), NOW)
    assert gates.validation == (True, 'validation "a": status 200 as expected')
    assert seen == [("POST", "/api/v1/namespaces/ml/services/credit-green:http/proxy/v2/models/credit/infer",
                     "Bearer t0ken")]


async def test_a_slot_the_apiserver_cannot_reach_fails_validation_as_unreachable(serve, session):
    server = await serve(fake_apiserver(FakePod(), [], slot_refuses=True))
    proxy = ApiServerProxy(server, credentials=lambda: TOKEN)
    target = await proxy.slot_target("ml", "credit", "green", "v2/models/credit/infer")
    request = ValidationRequest.model_validate(smoke("a"))
    assert await send_validation(session, target, request) == (
        False, f'validation "a": {target.url} unreachable: the Kubernetes API proxy answered 503 '
               f"ServiceUnavailable: {NO_ENDPOINTS}")


async def test_a_direct_model_servers_status_shaped_reply_is_its_answer(serve, session):
    async def infer(request: web.Request) -> web.Response:
        return status_reply(503, "ServiceUnavailable", "loading")
    base = await serve([web.post("/infer", infer)])
    request = ValidationRequest.model_validate(smoke("a"))
    assert await send_validation(session, Target(base + "/infer"), request) == (
        False, 'validation "a": expected status 200, got 503')


# --------------------------------------------------------------------------------- hangs, order


@pytest.fixture
async def hanging(serve):
    release = asyncio.Event()

    async def never(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({})

    async def start(method, path: str) -> str:
        return await serve([method(path, never)])

    yield start
    release.set()


async def test_a_prometheus_that_hangs_is_given_up_on_after_the_check_interval(hanging, session):
    base = await hanging(web.get, "/api/v1/query")
    check = {"name": "p95", "source": "prometheus", "address": base, "query": "x", "max": 0.5, "intervalSeconds": 1}
    gates = await asyncio.wait_for(CheckRunner(session).run(endpoint(metrics=[check]), observed(), NOW),
                                   HANG_GUARD_SECONDS)
    verdict = gates.verdicts["p95"]
    assert verdict.outcome == "Inconclusive" and "within 1s" in verdict.message


async def test_a_pod_that_hangs_is_given_up_on_after_the_shortest_check_interval(hanging, session):
    server = await hanging(web.get, "/api/v1/namespaces/ml/pods/{pod}/proxy/metrics")
    runner = CheckRunner(session, access=ApiServerProxy(server))
    check = {**ERRORS, "intervalSeconds": 1}
    gates = await asyncio.wait_for(runner.run(endpoint(metrics=[check]), observed(candidate("credit-green-1", "10.0.0.1")),
                                              NOW), HANG_GUARD_SECONDS)
    assert gates.verdicts["errors"].outcome == "Inconclusive"  # the baseline scrape, given up on: no pods


async def test_a_check_that_is_not_due_does_not_keep_the_next_one_from_running(serve, session):
    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"v": 0.1})
    base = await serve([web.get("/stats", stats)])
    first = {"name": "first", "source": "web", "url": base + "/stats", "jsonPath": "v", "max": 0.5,
             "intervalSeconds": 600}
    second = {**first, "name": "second"}
    ran = {"name": "first", "revision": REV, "verdict": "Pass", "lastRunTime": "2026-11-21T12:04:00Z"}
    gates = await CheckRunner(session).run(endpoint(metrics=[first, second], checks_status=[ran]), observed(), NOW)
    assert gates.verdicts == {"second": Verdict("Pass", 0.1, "value 0.1 is within max 0.5")}


def test_a_runner_with_both_an_access_and_a_slot_url_says_which_to_give():
    with pytest.raises(TypeError, match=r"^CheckRunner takes access or slot_url, not both "
                                        r"\(InCluster\(slot_url\) is the access\)$"):
        CheckRunner(object(), slot_url=lambda *_: "http://x", access=ApiServerProxy("https://k"))
