"""The operator's HTTP client (kube_api.py) against a small aiohttp server standing in for the
apiserver: what goes on the wire (method, path, query, Content-Type, body, the bearer token, the
User-Agent), what comes back (the parsed JSON; an ApiError with status, reason and body), and the
one new login after a 401."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp.web
import kopf
import pytest

from slotkeeper.kube_api import USER_AGENT, ApiError, KubeApi, api_path


class Apiserver:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.answers: list[tuple[int, Any]] = []  # (status, JSON body), first first; default 200 {}
        self.runner: aiohttp.web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        text = await request.text()
        self.seen.append({"method": request.method, "path": request.path, "query": dict(request.query),
                          "content_type": request.headers.get("Content-Type"),
                          "authorization": request.headers.get("Authorization"),
                          "user_agent": request.headers.get("User-Agent"),
                          "body": json.loads(text) if text else None})
        status, body = self.answers.pop(0) if self.answers else (200, {"kind": "Thing"})
        return aiohttp.web.json_response(body, status=status)

    async def __aenter__(self) -> Apiserver:
        app = aiohttp.web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = aiohttp.web.AppRunner(app)
        await self.runner.setup()
        site = aiohttp.web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *_: Any) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


@pytest.fixture
async def apiserver():
    async with Apiserver() as server:
        yield server


async def test_a_request_carries_method_path_query_content_type_body_token_and_user_agent(apiserver):
    api = KubeApi(kopf.ConnectionInfo(server=apiserver.url + "/", token="sa-token"))
    try:
        answer = await api.request("PATCH", "/api/v1/namespaces/ml/services/credit", [{"op": "test"}],
                                   content_type="application/json-patch+json", params={"fieldManager": "slotkeeper"})
    finally:
        await api.close()
    assert answer == {"kind": "Thing"}
    assert apiserver.seen == [{"method": "PATCH", "path": "/api/v1/namespaces/ml/services/credit",
                               "query": {"fieldManager": "slotkeeper"}, "content_type": "application/json-patch+json",
                               "authorization": "Bearer sa-token", "user_agent": USER_AGENT,
                               "body": [{"op": "test"}]}]
    assert USER_AGENT.startswith("slotkeeper/")


async def test_an_error_answer_is_an_api_error_with_status_reason_and_the_body(apiserver):
    refusal = {"kind": "Status", "code": 422, "reason": "Invalid", "message": "spec.replicas: Invalid value"}
    apiserver.answers.append((422, refusal))
    api = KubeApi(kopf.ConnectionInfo(server=apiserver.url))
    try:
        with pytest.raises(ApiError) as raised:
            await api.request("POST", "/api/v1/namespaces/ml/secrets", {"metadata": {"name": "x"}})
    finally:
        await api.close()
    assert (raised.value.status, raised.value.reason, json.loads(raised.value.body)) == (422, "Unprocessable Entity",
                                                                                         refusal)


async def test_a_401_logs_in_again_once_and_repeats_the_request_with_the_new_token(apiserver):
    apiserver.answers += [(401, {"kind": "Status", "code": 401})]
    logins = []

    def relogin() -> kopf.ConnectionInfo:
        logins.append(True)
        return kopf.ConnectionInfo(server=apiserver.url, token=f"rotated-{len(logins)}")

    api = KubeApi(kopf.ConnectionInfo(server=apiserver.url, token="expired"), relogin=relogin)
    try:
        assert await api.request("GET", "/api/v1/namespaces/ml/secrets/k") == {"kind": "Thing"}
        apiserver.answers += [(401, {}), (401, {"kind": "Status", "code": 401})]
        with pytest.raises(ApiError) as raised:  # a second 401 in a row is the answer: no loop of logins
            await api.request("GET", "/api/v1/namespaces/ml/secrets/k")
    finally:
        await api.close()
    assert [seen["authorization"] for seen in apiserver.seen] == [
        "Bearer expired", "Bearer rotated-1", "Bearer rotated-1", "Bearer rotated-2"]
    assert raised.value.status == 401 and len(logins) == 2


async def test_without_relogin_a_401_is_an_api_error(apiserver):
    apiserver.answers.append((401, {"kind": "Status", "code": 401}))
    api = KubeApi(kopf.ConnectionInfo(server=apiserver.url, token="t"))
    try:
        with pytest.raises(ApiError) as raised:
            await api.request("GET", "/api/v1/namespaces/ml/secrets/k")
    finally:
        await api.close()
    assert raised.value.status == 401 and len(apiserver.seen) == 1


@pytest.mark.parametrize("args, path", [
    (("", "v1", "services", "ml", "credit"), "/api/v1/namespaces/ml/services/credit"),
    (("", "v1", "secrets", "ml"), "/api/v1/namespaces/ml/secrets"),
    (("apps", "v1", "deployments", "ml", "credit-blue"), "/apis/apps/v1/namespaces/ml/deployments/credit-blue"),
    (("slotkeeper.io", "v1alpha1", "modelendpoints", "ml", "credit", "status"),
     "/apis/slotkeeper.io/v1alpha1/namespaces/ml/modelendpoints/credit/status"),
    (("", "v1", "namespaces", None, "ml"), "/api/v1/namespaces/ml"),
])
def test_api_paths(args, path):
    assert api_path(*args) == path


async def streaming_server(handler):
    app = aiohttp.web.Application()
    app.router.add_route("GET", "/{tail:.*}", handler)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_a_stream_yields_each_line_parsed_even_when_lines_are_split_across_chunks():
    seen = []

    async def watch(request):
        seen.append((request.path, dict(request.query), request.headers.get("Authorization")))
        response = aiohttp.web.StreamResponse()
        await response.prepare(request)
        for piece in (b'{"type": "ADDED", "obj', b'ect": {"n": 1}}\n\n{"type": "MOD', b'IFIED"}\n',
                      b'{"type": "DELETED"}\n'):
            await response.write(piece)
            await asyncio.sleep(0.02)  # each piece its own chunk at the client
        await response.write_eof()
        return response

    runner, url = await streaming_server(watch)
    api = KubeApi(kopf.ConnectionInfo(server=url, token="t")).for_streams()
    try:
        events = [event async for event in api.stream("/api/v1/pods", params={"watch": "true"}, timeout=5)]
    finally:
        await api.close()
        await runner.cleanup()
    assert events == [{"type": "ADDED", "object": {"n": 1}}, {"type": "MODIFIED"}, {"type": "DELETED"}]
    assert seen == [("/api/v1/pods", {"watch": "true"}, "Bearer t")]


async def test_a_stream_error_answer_is_an_api_error_and_a_401_logs_in_again_once():
    tokens = []

    async def watch(request):
        tokens.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") == "Bearer old":
            return aiohttp.web.json_response({"kind": "Status", "code": 401}, status=401)
        return aiohttp.web.json_response({"kind": "Status", "code": 410, "reason": "Expired"}, status=410)

    error = await stream_failure(watch, lambda url: KubeApi(
        kopf.ConnectionInfo(server=url, token="old"),
        relogin=lambda: kopf.ConnectionInfo(server=url, token="new")).for_streams())
    assert error.status == 410 and "Expired" in error.body
    assert tokens == ["Bearer old", "Bearer new"]


async def stream_failure(handler, make_api) -> ApiError:
    """The ApiError a stream from ``make_api(url)`` raises against a server answering with ``handler``."""
    runner, url = await streaming_server(handler)
    api = make_api(url)
    try:
        with pytest.raises(ApiError) as raised:
            [event async for event in api.stream("/api/v1/pods", params={}, timeout=5)]
    finally:
        await api.close()
        await runner.cleanup()
    return raised.value


def test_the_client_for_streams_shares_the_credentials_and_has_no_connection_limit():
    relogin = lambda: None  # noqa: E731
    api = KubeApi(kopf.ConnectionInfo(server="https://k8s", token="t"), max_connections=4, relogin=relogin)
    streams = api.for_streams()
    assert streams.connection is api.connection and streams._relogin is relogin
    assert streams.max_connections == 0 and streams is not api


async def test_a_stream_401_after_the_login_is_an_api_error_not_a_second_login():
    tokens, logins = [], []

    async def watch(request):
        tokens.append(request.headers.get("Authorization"))
        return aiohttp.web.json_response({"kind": "Status", "code": 401}, status=401)

    def make_api(url):
        def relogin():
            logins.append(1)
            return kopf.ConnectionInfo(server=url, token=f"t{len(logins)}")
        return KubeApi(kopf.ConnectionInfo(server=url, token="t0"), relogin=relogin)

    error = await stream_failure(watch, make_api)
    assert error.status == 401 and tokens == ["Bearer t0", "Bearer t1"] and len(logins) == 1


async def test_requests_that_get_401_together_log_in_once_and_open_watches_go_on():
    logins = []

    async def handle(request):
        if request.headers.get("Authorization") == "Bearer old":
            await asyncio.sleep(0.05)  # all three are under way before the first 401 comes back
            return aiohttp.web.json_response({"kind": "Status", "code": 401}, status=401)
        return aiohttp.web.json_response({"kind": "Thing"})

    runner, url = await streaming_server(handle)

    def relogin():
        logins.append(1)
        return kopf.ConnectionInfo(server=url, token="new")

    api = KubeApi(kopf.ConnectionInfo(server=url, token="old"), relogin=relogin)
    try:
        answers = await asyncio.gather(*(api.request("GET", f"/api/v1/pods/{n}") for n in range(3)))
    finally:
        await api.close()
        await runner.cleanup()
    assert answers == [{"kind": "Thing"}] * 3 and len(logins) == 1


async def test_a_watch_open_on_old_credentials_goes_on_and_its_session_closes_when_it_ends():
    """A login renewed by a request's 401 retires the old session without closing it (the watch on
    it goes on); once that watch ends, nothing uses the old session and it is closed."""
    go_on = asyncio.Event()

    async def handle(request):
        old = request.headers.get("Authorization") == "Bearer old"
        if request.query.get("watch") != "true":
            return aiohttp.web.json_response({"kind": "Status", "code": 401} if old else {"kind": "Thing"},
                                             status=401 if old else 200)
        response = aiohttp.web.StreamResponse()
        await response.prepare(request)
        await response.write(b'{"type": "ADDED", "n": 1}\n')
        await go_on.wait()
        await response.write(b'{"type": "ADDED", "n": 2}\n')
        return response

    runner, url = await streaming_server(handle)
    api = KubeApi(kopf.ConnectionInfo(server=url, token="old"),
                  relogin=lambda: kopf.ConnectionInfo(server=url, token="new"))
    try:
        lines = api.stream("/api/v1/pods", params={"watch": "true"}, timeout=10)
        assert (await anext(lines))["n"] == 1
        (old,) = api._in_use  # private: the session the watch holds
        assert await api.request("GET", "/api/v1/pods/a") == {"kind": "Thing"}  # 401, new login, again
        assert old in api._retired and not old.closed  # the watch still uses it
        go_on.set()
        assert (await anext(lines))["n"] == 2
        with pytest.raises(StopAsyncIteration):
            await anext(lines)
        assert old.closed and not api._retired
    finally:
        await api.close()
        await runner.cleanup()


async def test_a_stream_quiet_for_longer_than_its_idle_timeout_raises_timeout():
    async def watch(request):
        response = aiohttp.web.StreamResponse()
        await response.prepare(request)
        await response.write(b'{"type": "BOOKMARK"}\n')
        await asyncio.sleep(1)  # then nothing: a connection gone half-open looks like this
        return response

    runner, url = await streaming_server(watch)
    api = KubeApi(kopf.ConnectionInfo(server=url)).for_streams()
    events = []
    try:
        with pytest.raises(TimeoutError):
            async for event in api.stream("/api/v1/pods", params={}, timeout=10, idle_timeout=0.2):
                events.append(event)
    finally:
        await api.close()
        await runner.cleanup()
    assert events == [{"type": "BOOKMARK"}]
