"""A background loop that does one thing every so often, until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from services.common.outage import OUTAGE, unavailable

log = logging.getLogger(__name__)


class Periodic:
    """Runs `work` every `interval_s`, or at once when woken, until stopped; a failure is
    logged, not fatal.

    Stopped by an event rather than by cancel: the NATS client may swallow a cancellation that
    lands inside a request, which would leave the loop running forever.
    """

    def __init__(self, work: Callable[[], Awaitable[None]], interval_s: float, name: str) -> None:
        self._work = work
        self._interval_s = interval_s
        self._name = name
        self._stopping = asyncio.Event()
        self._woken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    def wake(self) -> None:
        """Runs the work now rather than at the next interval (once, however often woken)."""
        self._woken.set()

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), self._interval_s)
            if self._stopping.is_set():
                return
            self._woken.clear()
            try:
                await self._work()
            except Exception as e:
                if unavailable(e):  # logged once per outage, not once per beat
                    OUTAGE.failed(self._name, e)
                else:
                    log.warning("%s failed: %s", self._name, e)

    async def stop(self) -> None:
        self._stopping.set()
        self._woken.set()
        if self._task:
            await self._task
