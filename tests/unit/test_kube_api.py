"""The operator's HTTP client (kube_api.py) against a small aiohttp server standing in for the
apiserver: what goes on the wire (method, path, query, Content-Type, body, the bearer token, the
User-Agent), what comes back (the parsed JSON; an ApiError with status, reason and body), and the
one new login after a 401."""

from __future__ import annotations

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
