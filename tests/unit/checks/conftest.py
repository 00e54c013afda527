"""Real HTTP on loopback: each fake (pod, Prometheus, model server) is an aiohttp app on 127.0.0.1."""

from __future__ import annotations

import socket

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def serve():
    """serve(routes, host=127.0.0.1, port=any free) -> the base URL of a server answering those routes."""
    servers: list[TestServer] = []

    async def start(routes: list[web.RouteDef], host: str = "127.0.0.1", port: int | None = None) -> str:
        app = web.Application()
        app.add_routes(routes)
        server = TestServer(app, host=host, port=port)
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
