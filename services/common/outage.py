"""When JetStream cannot be reached: which errors mean that, and riding it out.

A NATS restart, a leader election in a cluster or a stream that vanished with a restarted
server are passing states, not reasons to exit. Every bus call that may meet one goes through
`retrying` (or catches `unavailable` itself); the first failure is logged and counted, later
ones of the same outage are not, and the recovery is logged once. `/readyz` reads `OUTAGE`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats import errors as nats_errors
from nats.js import errors as js_errors
from prometheus_client import Counter

log = logging.getLogger(__name__)
T = TypeVar("T")

BUS_OUTAGES = Counter(
    "chorus_bus_outages_total",
    "Times JetStream could not be reached (disconnect, leader election, missing stream), "
    "by the first operation that met it.",
    ["operation"],
)
STREAM_NOT_FOUND = 10059
_TRANSIENT: tuple[type[BaseException], ...] = (
    nats_errors.TimeoutError,  # also a request or fetch that timed out mid-election
    nats_errors.NoRespondersError,
    nats_errors.ConnectionClosedError,
    nats_errors.ConnectionReconnectingError,
    nats_errors.StaleConnectionError,
    nats_errors.OutboundBufferLimitError,
    js_errors.ServiceUnavailableError,
    js_errors.NoStreamResponseError,
    asyncio.TimeoutError,
)


def unavailable(error: BaseException) -> bool:
    """Whether `error` means "JetStream cannot be reached now", which passes by itself."""
    if isinstance(error, js_errors.NotFoundError):
        return error.err_code == STREAM_NOT_FOUND  # gone with a restarted server, recreated
    return isinstance(error, _TRANSIENT)


class Outage:
    """One process's view of whether JetStream is reachable."""

    def __init__(self) -> None:
        self.since: float | None = None
        self._on_reconnect: list[Callable[[], None]] = []

    def on_reconnect(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Calls `callback` each time the connection to NATS is back; returns its undo."""
        self._on_reconnect.append(callback)
        return lambda: self._on_reconnect.remove(callback)

    def reconnected(self) -> None:
        for callback in list(self._on_reconnect):
            callback()

    @property
    def active(self) -> bool:
        return self.since is not None

    def failed(self, operation: str, error: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            BUS_OUTAGES.labels(operation).inc()
            log.warning("jetstream unavailable (%s: %r); riding it out", operation, error)

    def recovered(self) -> None:
        if self.since is not None:
            log.info("jetstream reachable again after %.1f s", time.monotonic() - self.since)
            self.since = None


OUTAGE = Outage()
PATIENCE_S = 30.0  # how long one call waits for JetStream before its caller hears of it


async def retrying(
    operation: str, call: Callable[[], Awaitable[T]], *, patience_s: float = PATIENCE_S
) -> T:
    """`call()`, tried again (with backoff) while JetStream is unavailable, up to `patience_s`.

    Safe for idempotent calls: publishes with a dedup id, reads, compare-and-set writes.
    """
    deadline = time.monotonic() + patience_s
    delay = 0.1
    while True:
        try:
            value = await call()
        except Exception as e:
            if not unavailable(e) or time.monotonic() + delay > deadline:
                raise
            OUTAGE.failed(operation, e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            continue
        OUTAGE.recovered()
        return value
