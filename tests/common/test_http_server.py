"""The embedded uvicorn server as a client meets it over real TCP."""

from __future__ import annotations

import socket

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from services.common.http_server import HttpServer


async def _hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def test_kept_alive_connections_send_without_nagles_delay() -> None:
    # A response is two writes (head, body): with Nagle's algorithm on, the body waits for the
    # client's delayed ACK of the head, about 40 ms on every call of a kept-alive connection.
    server = HttpServer(Starlette(routes=[Route("/", _hello)]), "127.0.0.1:0", "TEST_ADDR")
    await server.start()
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(2):  # the second call rides the kept-alive connection
                response = await client.get(f"http://127.0.0.1:{server.port}/")
                assert response.text == "hello"
            protocols = server._server.server_state.connections  # uvicorn's open connections
            assert protocols
            for protocol in protocols:
                sock = protocol.transport.get_extra_info("socket")
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        await server.stop()
