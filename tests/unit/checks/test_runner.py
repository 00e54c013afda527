"""The check runner against real HTTP on loopback: what it runs in which step, where it sends the
requests, and the verdicts and messages it hands to the decision."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest
from aiohttp import web
from yarl import URL

from slotkeeper.api import ModelEndpointSpec, ModelEndpointStatus, Rollout
from slotkeeper.checks.runner import CheckRunner, slot_service_url
from slotkeeper.checks.verdicts import Verdict
from slotkeeper.decide import Endpoint, Gates
from slotkeeper.observe import Observed, PodSummary, SlotObservation

from .exposition import FakePod

REV = "a41b2e"
T0 = "2026-11-21T12:00:00Z"


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def endpoint(step: str = "Analysing", *, validation=(), metrics=(), validated: bool = False,
             port: int = 8080, checks_status=()) -> Endpoint:
    spec = ModelEndpointSpec.model_validate({
        "model": {"name": "credit", "uri": "file:///m.joblib"}, "serving": {"port": port},
        "checks": {"validation": list(validation), "metrics": list(metrics)},
    })
    rollout = None if step is None else Rollout(revision=REV, slot="green", model_uri="file:///m.joblib", step=step,
                                                started_at=T0, step_started_at=T0, validated=validated)
    status = ModelEndpointStatus.model_validate({"checks": list(checks_status)}).model_copy(
        update={"rollout": rollout})
    return Endpoint(name="credit", namespace="ml", uid="u", generation=2, spec=spec, status=status)


def observed(*pods: PodSummary) -> Observed:
    return Observed(slots={"green": SlotObservation(deployment=None, pods=pods)}, endpoint_selector=None)


NOW = datetime(2026, 11, 21, 12, 5, tzinfo=timezone.utc)


def test_slot_service_url_names_the_slot_service_in_the_namespace():
    assert slot_service_url("ml", "credit", "green") == "http://credit-green.ml.svc:80"


def model_server(seen: list, replies: dict[str, int]):
    async def infer(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append((request.match_info["model"], body["id"]))
        return web.json_response({"outputs": []}, status=replies.get(body["id"], 200))
    return [web.post("/v2/models/{model}/infer", infer)]


def smoke(name: str) -> dict:
    return {"name": name, "request": {"id": name, "inputs": []}, "timeoutSeconds": 2}


# ------------------------------------------------------------------------------------- what runs


@pytest.mark.parametrize("step", [None, "Deploying", "AwaitingPromotion"])
async def test_nothing_runs_outside_the_checked_steps(session, step):
    asked = []
    runner = CheckRunner(session, slot_url=lambda *args: asked.append(args) or "http://127.0.0.1:9")
    errors = {"name": "errors", "source": "web", "url": "http://127.0.0.1:9/x", "jsonPath": "v", "max": 1}
    assert await runner.run(endpoint(step, validation=[smoke("a")], metrics=[errors]), observed(), NOW) == Gates()
    assert asked == []


async def test_validation_goes_to_the_candidate_slot_and_every_request_must_pass(serve, session):
    seen, asked = [], []
    base = await serve(model_server(seen, {}))
    runner = CheckRunner(session, slot_url=lambda *args: asked.append(args) or base)

    gates = await runner.run(endpoint("Validating", validation=[smoke("a"), smoke("b")]), observed(), NOW)

    assert set(asked) == {("ml", "credit", "green")}
    assert seen == [("credit", "a"), ("credit", "b")]
    assert gates.validation == (True, 'validation "a": status 200 as expected; validation "b": status 200 as expected')
    assert gates.verdicts == {}


async def test_the_first_failing_validation_request_decides_and_the_rest_are_not_sent(serve, session):
    seen = []
    base = await serve(model_server(seen, {"b": 500}))
    runner = CheckRunner(session, slot_url=lambda *args: base)
    requests = [smoke("a"), smoke("b"), smoke("c")]

    gates = await runner.run(endpoint("Validating", validation=requests), observed(), NOW)

    assert gates.validation == (False, 'validation "b": expected status 200, got 500')
    assert [name for _, name in seen] == ["a", "b"]


async def test_validation_is_not_sent_again_once_the_rollout_is_validated_or_past_validating(serve, session):
    seen = []
    base = await serve(model_server(seen, {}))
    runner = CheckRunner(session, slot_url=lambda *args: base)
    assert (await runner.run(endpoint("Validating", validation=[smoke("a")], validated=True), observed(), NOW)) \
        .validation is None
    assert (await runner.run(endpoint("Analysing", validation=[smoke("a")]), observed(), NOW)).validation is None
    assert seen == []


# ---------------------------------------------------------------------------------- metric checks


def prometheus(seen: list, value: str = "0.02"):
    async def query(request: web.Request) -> web.Response:
        seen.append(request.query["query"])
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {}, "value": [0, value]}]}})
    return [web.get("/api/v1/query", query)]


def web_stats(document: dict):
    async def stats(request: web.Request) -> web.Response:
        return web.json_response(document)
    return [web.get("/stats", stats)]


async def test_a_prometheus_check_is_asked_the_rendered_query_and_judged(serve, session):
    seen: list[str] = []
    address = await serve(prometheus(seen, "0.2"))
    check = {"name": "errors", "source": "prometheus", "address": address, "max": 0.05,
             "query": 'sum(x{ns="{{namespace}}",ep="{{endpoint}}",slot="{{slot}}",rev="{{revision}}"})'}

    gates = await CheckRunner(session).run(endpoint(metrics=[check]), observed(), NOW)

    assert seen == ['sum(x{ns="ml",ep="credit",slot="green",rev="a41b2e"})']
    assert gates.verdicts == {"errors": Verdict("Fail", 0.2, "value 0.2 is above max 0.05")}


async def test_a_web_check_reads_its_json_path_and_is_judged(serve, session):
    base = await serve(web_stats({"data": {"p95": 0.3}}))
    check = {"name": "latency", "source": "web", "url": base + "/stats", "jsonPath": "data.p95", "max": 0.5}

    gates = await CheckRunner(session).run(endpoint(metrics=[check]), observed(), NOW)

    assert gates.verdicts == {"latency": Verdict("Pass", 0.3, "value 0.3 is within max 0.5")}


async def test_a_source_that_cannot_answer_gives_an_inconclusive_verdict_saying_why(session, closed_port):
    url = f"http://127.0.0.1:{closed_port}/stats"
    check = {"name": "latency", "source": "web", "url": url, "jsonPath": "v", "max": 0.5}

    gates = await CheckRunner(session).run(endpoint(metrics=[check]), observed(), NOW)

    verdict = gates.verdicts["latency"]
    assert (verdict.outcome, verdict.value) == ("Inconclusive", None)
    assert verdict.message.startswith(f"{url} unreachable: ")


async def test_a_source_that_hangs_is_given_up_on_after_the_check_interval(serve, session):
    release = asyncio.Event()

    async def never(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"v": 1})

    base = await serve([web.get("/stats", never)])
    check = {"name": "latency", "source": "web", "url": base + "/stats", "jsonPath": "v", "max": 0.5,
             "intervalSeconds": 1}
    try:
        gates = await asyncio.wait_for(CheckRunner(session).run(endpoint(metrics=[check]), observed(), NOW), 10)
    finally:
        release.set()
    assert gates.verdicts["latency"] == Verdict("Inconclusive", None, f"{base}/stats did not answer within 1s")


async def test_only_checks_that_are_due_run(serve, session):
    base = await serve(web_stats({"v": 0.1}))
    check = {"name": "latency", "source": "web", "url": base + "/stats", "jsonPath": "v", "max": 0.5,
             "intervalSeconds": 600}
    ran = {"name": "latency", "revision": REV, "verdict": "Pass", "lastRunTime": "2026-11-21T12:00:00Z"}
    other = {**ran, "revision": "older"}

    assert (await CheckRunner(session).run(endpoint(metrics=[check], checks_status=[ran]), observed(), NOW)) \
        .verdicts == {}
    assert "latency" in (await CheckRunner(session).run(endpoint(metrics=[check], checks_status=[other]),
                                                        observed(), NOW)).verdicts


# ------------------------------------------------------------------------------------ pods checks


def candidate(name: str, port_host: str, *, revision: str = REV, ready: bool = True) -> PodSummary:
    return PodSummary(name=name, slot="green", revision=revision, ready=ready, ip=port_host)


async def start_pod(serve, pod: FakePod, host: str = "127.0.0.1", port: int | None = None) -> tuple[str, int]:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=pod.text(), content_type="text/plain")
    url = URL(await serve([web.get("/metrics", metrics)], host=host, port=port))
    return url.host, url.port


ERRORS = {"name": "errors", "source": "pods", "metric": "error_ratio", "max": 0.05}
RATE = {"name": "rate", "source": "pods", "metric": "request_rate", "min": 0.5}


async def test_pods_checks_take_a_baseline_then_judge_the_window_from_one_scrape(serve, session):
    pod = FakePod(version=REV)
    host, port = await start_pod(serve, pod)
    clock = Clock()
    runner = CheckRunner(session, clock=clock)
    spec = endpoint(metrics=[ERRORS, RATE], port=port)
    pods = observed(candidate("credit-green-1", host))

    first = await runner.run(spec, pods, NOW)
    note = "first scrape of this revision: a baseline for the next window"
    assert first.verdicts == {"errors": Verdict("Inconclusive", None, f"error_ratio: no data; {note}"),
                              "rate": Verdict("Inconclusive", None, f"request_rate: no data; {note}")}

    pod.serve(8, 0.02).serve(2, 0.02, "failure")
    clock.now += 10
    second = await runner.run(spec, pods, NOW)
    assert second.verdicts == {"errors": Verdict("Fail", 0.2, "error_ratio 0.2 is above max 0.05"),
                               "rate": Verdict("Pass", 1.0, "request_rate 1 is within min 0.5")}


async def test_pods_checks_without_a_ready_pod_of_the_revision_have_no_data(session):
    runner = CheckRunner(session)
    pods = observed(candidate("old", "127.0.0.1", revision="other"), candidate("new", "127.0.0.1", ready=False),
                    PodSummary(name="no-ip", slot="green", revision=REV, ready=True, ip=None))
    gates = await runner.run(endpoint(metrics=[ERRORS]), pods, NOW)
    assert gates.verdicts == {"errors": Verdict(
        "Inconclusive", None, f"error_ratio: no data; no ready pod of revision {REV} in slot green")}


async def test_a_pod_that_does_not_answer_is_named_in_the_verdict(serve, session, closed_port):
    pod = FakePod(version=REV)
    host, port = await start_pod(serve, pod)
    clock = Clock()
    runner = CheckRunner(session, clock=clock)
    spec = endpoint(metrics=[ERRORS], port=port)
    pods = observed(candidate("credit-green-1", host), candidate("credit-green-2", "127.0.0.2"))
    await runner.run(spec, pods, NOW)
    pod.serve(10, 0.02)
    clock.now += 10

    verdict = (await runner.run(spec, pods, NOW)).verdicts["errors"]

    assert verdict.outcome == "Pass" and verdict.value == 0.0
    assert verdict.message.startswith("error_ratio 0 is within max 0.05; pod credit-green-2: unreachable: ")


async def test_leaving_the_checked_steps_forgets_the_baseline(serve, session):
    pod = FakePod(version=REV)
    host, port = await start_pod(serve, pod)
    runner = CheckRunner(session, clock=Clock())
    pods = observed(candidate("credit-green-1", host))
    await runner.run(endpoint(metrics=[ERRORS], port=port), pods, NOW)
    await runner.run(endpoint(None, metrics=[ERRORS], port=port), pods, NOW)

    again = await runner.run(endpoint(metrics=[ERRORS], port=port), pods, NOW)
    assert again.verdicts["errors"].message.endswith("first scrape of this revision: a baseline for the next window")
