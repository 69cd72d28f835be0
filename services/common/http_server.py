"""uvicorn embedded in a service's event loop: started and stopped with the service. It serves
the gateway's HTTP API and every service's metrics and health endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)
# A head still arriving past this is a 400 from h11; one that arrives whole is checked by
# `guard.HeadGuard` (a smaller limit, a 431).
MAX_HEAD_BYTES = 64 * 1024
KEEP_ALIVE_S = 30


class _IdleClosingH11(H11Protocol):
    """Closes a connection that sends nothing for the keep-alive time from the start, not only
    between requests: an idle client cannot hold a connection open for ever. Sends without
    Nagle's delay: a response goes out as two writes (head, body), and the second would wait
    for the client's delayed ACK of the first, 40 ms on every kept-alive call. (asyncio sets
    this itself only on sockets made with an explicit IPPROTO_TCP, which ours is not.)"""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The service owns SIGTERM and drains everything, this server included.
        yield


class HttpServer:
    def __init__(
        self, app: ASGIApp, addr: str, setting: str, keep_alive_s: int = KEEP_ALIVE_S
    ) -> None:
        self._addr = addr
        self._setting = setting  # the variable `addr` came from, for a clear error
        self.port = 0  # known once started (`addr` may ask for any free port, :0)
        config = uvicorn.Config(
            app,
            http=_IdleClosingH11,
            interface="asgi3",
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_keep_alive=keep_alive_s,
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            timeout_graceful_shutdown=5,
        )
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        host, port = split_addr(self._addr)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            sock.close()
            raise OSError(f"cannot listen on {self._setting}={self._addr}: {e}") from e
        self.port = sock.getsockname()[1]
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                await self._task
                raise OSError(f"the HTTP server on {self._addr} did not start")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        await asyncio.gather(self._task, return_exceptions=True)


def split_addr(addr: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:8000`)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"not host:port: {addr!r}")
    return host.strip("[]") or "0.0.0.0", int(port)
