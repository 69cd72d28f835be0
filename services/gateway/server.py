"""uvicorn embedded in a service's event loop: started and stopped with the service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette

log = logging.getLogger(__name__)
# A head still arriving past this is a 400 from h11; one that arrives whole is checked by
# `guard.HeadGuard` (a smaller limit, a 431).
MAX_HEAD_BYTES = 64 * 1024
KEEP_ALIVE_S = 30


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The service owns SIGTERM and drains everything, this server included.
        yield


class HttpServer:
    def __init__(self, app: Starlette, addr: str) -> None:
        self._addr = addr
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_keep_alive=KEEP_ALIVE_S,
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
            raise OSError(f"cannot listen on CHORUS_OPENAI_ADDR={self._addr}: {e}") from e
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                await self._task
                raise OSError(f"the HTTP server on {self._addr} did not start")
            await asyncio.sleep(0.02)
        log.info("HTTP (OpenAI-compatible API and web UI) on http://%s/", self._addr)

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
