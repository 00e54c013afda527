"""The operator's own HTTP client for the Kubernetes API: aiohttp, on the credentials kopf logs in with.

Why not the official ``kubernetes`` client: for the handful of requests cluster.py sends it cost
32 MiB of RSS before the first endpoint (96 -> 58 MiB with kopf's own import of it hidden too,
benchmarks/operator/RESULTS.md), and its calls are synchronous (a thread pool per process). Here one
aiohttp session (aiohttp is kopf's own transport, so it costs nothing extra) sends them from the
event loop, authenticated from a :class:`kopf.ConnectionInfo` as kopf's watches are: the same
server, CA, client certificate, token and proxy (``ConnectionInfo.as_ssl_context`` and
``as_http_headers``).

At most ``max_connections`` requests are under way at once (the others wait for a connection); the
timeouts count from the request's own connection, not from the wait: to connect, and between two
reads of the answer. 32 by default: creating 1,000 endpoints at once, 8 connections (the official
client's thread pool before) made 42 endpoints/s, 32 made 54/s and 96 no more (46/s; benchmarks/operator,
RESULTS.md); well inside an apiserver's default --max-requests-inflight of 400.

A 401 logs in again once (``relogin``: a rotated service-account token or a refreshed kubeconfig
token) and repeats the request. Every other error answer is an :class:`ApiError` carrying the status
code, the reason and the body (the apiserver's Status), as ``kubernetes.client.ApiException`` did.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.metadata
from typing import Any, AsyncIterator, Callable, Mapping

import aiohttp
import kopf
import orjson

JSON = "application/json"
MAX_CONNECTIONS = 32
REQUEST_TIMEOUT = (5, 30)  # connect, read (seconds)
try:
    USER_AGENT = f"slotkeeper/{importlib.metadata.version('slotkeeper')}"
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
    USER_AGENT = "slotkeeper/unknown"


class ApiError(Exception):
    """An error answer of the apiserver: ``status`` (HTTP code), ``reason`` and ``body`` (its text)."""

    def __init__(self, status: int = 0, reason: str | None = None, body: str | None = None) -> None:
        super().__init__(f"({status}) Reason: {reason}")
        self.status, self.reason, self.body = status, reason, body


def api_path(group: str, version: str, plural: str, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
    """``/api/v1/...`` for the core group (``group`` ""), ``/apis/<group>/<version>/...`` otherwise."""
    parts = ["/api/v1" if not group else f"/apis/{group}/{version}"]
    if namespace is not None:
        parts.append(f"namespaces/{namespace}")
    parts.append(plural)
    if name is not None:
        parts.append(name)
    if subresource is not None:
        parts.append(subresource)
    return "/".join(parts)


class KubeApi:
    """Requests to one apiserver. The session is made in the running event loop on first use."""

    def __init__(self, connection: kopf.ConnectionInfo, *, request_timeout: tuple[float, float] = REQUEST_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS,
                 relogin: Callable[[], kopf.ConnectionInfo] | None = None) -> None:
        self.connection = connection
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self._relogin = relogin
        self._session: aiohttp.ClientSession | None = None
        self._retired: set[aiohttp.ClientSession] = set()  # of credentials renewed since, still in use
        self._in_use: collections.Counter[aiohttp.ClientSession] = collections.Counter()  # requests, watches
        self._renewing = asyncio.Lock()

    def _new_session(self) -> aiohttp.ClientSession:
        info = self.connection
        headers = {"User-Agent": USER_AGENT, **info.as_http_headers()}  # bearer token or basic auth
        connect, read = self.request_timeout  # as urllib3's: to connect, and between bytes read
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.max_connections, ssl=info.as_ssl_context()),
            headers=headers, proxy=info.proxy_url, trust_env=info.trust_env,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read),
        )

    async def request(self, method: str, path: str, body: Any = None, *, content_type: str = JSON,
                      params: Mapping[str, str] | None = None) -> Any:
        """The parsed JSON answer (None when empty); an error answer raises :class:`ApiError`."""
        data = orjson.dumps(body) if body is not None else None
        for attempt in (1, 2):
            async with self._using() as (session, connection), session.request(
                    method, connection.server.rstrip("/") + path, data=data, params=params,
                    headers={"Content-Type": content_type}) as response:
                if not await self._accepted(response, connection, attempt):
                    continue
                raw = await response.read()
                return orjson.loads(raw) if raw else None
        raise AssertionError("unreachable")  # pragma: no cover

    async def stream(self, path: str, *, params: Mapping[str, str], timeout: float,
                     idle_timeout: float | None = None) -> AsyncIterator[Any]:
        """Each line of a streamed JSON answer (a watch), parsed, until the server ends it; an error
        answer raises :class:`ApiError` (a 401 logs in again once). ``TimeoutError`` after ``timeout``
        seconds in all, or ``idle_timeout`` seconds without a byte (a connection gone half-open: a
        watch that asked for bookmarks hears from the apiserver about once a minute)."""
        connect, _ = self.request_timeout
        limits = aiohttp.ClientTimeout(total=timeout, sock_connect=connect, sock_read=None)
        for attempt in (1, 2):
            async with self._using() as (session, connection), session.get(
                    connection.server.rstrip("/") + path, params=params, timeout=limits) as response:
                if not await self._accepted(response, connection, attempt):
                    continue
                buffer = bytearray()
                while True:
                    async with asyncio.timeout(idle_timeout):
                        chunk = await response.content.readany()
                    if not chunk:
                        return
                    start = len(buffer)
                    buffer += chunk
                    end = buffer.find(b"\n", start)
                    begin = 0
                    while end >= 0:
                        line = buffer[begin:end]  # (a copy: orjson takes a bytearray as it is)
                        if line.strip():
                            yield orjson.loads(line)
                        begin = end + 1
                        end = buffer.find(b"\n", begin)
                    del buffer[:begin]

    async def _accepted(self, response: aiohttp.ClientResponse, connection: kopf.ConnectionInfo,
                        attempt: int) -> bool:
        """A success answer: True. The first 401 logs in again: False (send it once more). Any other
        error answer raises :class:`ApiError`."""
        if response.status == 401 and attempt == 1 and self._relogin is not None:
            await self._renew(connection)
            return False
        if response.status >= 400:
            raw = await response.read()
            raise ApiError(status=response.status, reason=response.reason, body=raw.decode("utf-8", errors="replace"))
        return True

    def for_streams(self) -> KubeApi:
        """A client on the same credentials with no limit of connections: each open watch holds one
        for as long as it runs, and must not take one of the ``max_connections`` the requests share."""
        return KubeApi(self.connection, request_timeout=self.request_timeout, max_connections=0,
                       relogin=self._relogin)

    @contextlib.asynccontextmanager
    async def _using(self) -> AsyncIterator[tuple[aiohttp.ClientSession, kopf.ConnectionInfo]]:
        """The current session and its credentials for one request or watch. A session retired by a
        new login is closed once the last request or watch on it has ended."""
        if self._session is None:
            self._session = self._new_session()
        session = self._session
        self._in_use[session] += 1
        try:
            yield session, self.connection
        finally:
            self._in_use[session] -= 1
            if not self._in_use[session]:
                del self._in_use[session]
                if session in self._retired:
                    self._retired.discard(session)
                    await session.close()

    async def _renew(self, failed: kopf.ConnectionInfo) -> None:
        """Log in again, once for all the requests that got a 401 on the credentials ``failed``. The
        old session is retired, not closed: watches still open on it go on, and it closes after them."""
        assert self._relogin is not None
        async with self._renewing:
            if self.connection is not failed:
                return  # another request renewed them meanwhile
            self.connection = await asyncio.to_thread(self._relogin)
            if self._session is not None:
                self._retired.add(self._session)  # (closed by _using once nothing uses it)
            self._session = None

    async def close(self) -> None:
        sessions, self._session, self._retired = [self._session, *self._retired], None, set()
        for session in sessions:
            if session is not None:
                await session.close()
