"""The requests cancelled lately, as this replica heard of them on `chorus.cancel.<id>`.

Read with a plain core-NATS subscription, not a stream consumer: every replica must hear
every cancel, and one missed (the replica was down) costs only work, never a wrong answer.
The set is bounded and its entries expire, so a flood of cancels cannot grow it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from chorus.v1.messages_pb2 import CancelRequest
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.common import subjects

log = logging.getLogger(__name__)
TTL_S = 3600.0  # longer than any request may run
MAX_IDS = 10_000


class CancelledRequests:
    def __init__(self, ttl_s: float = TTL_S, max_ids: int = MAX_IDS) -> None:
        self._ttl_s = ttl_s
        self._max_ids = max_ids
        self._ids: OrderedDict[str, tuple[float, str]] = OrderedDict()  # id -> (when, reason)
        self._running: dict[str, set[asyncio.Task[Any]]] = {}  # request id -> its work

    def add(self, request_id: str, reason: str) -> None:
        self._ids[request_id] = (time.monotonic(), reason)
        self._ids.move_to_end(request_id)
        self._expire()
        for task in self._running.get(request_id, ()):
            task.cancel()

    def reason(self, request_id: str) -> str | None:
        """Why the request was cancelled; None when it was not (or long ago)."""
        self._expire()
        entry = self._ids.get(request_id)
        return entry[1] if entry else None

    @contextlib.contextmanager
    def watching(self, request_id: str, work: asyncio.Task[Any]) -> Iterator[None]:
        """Cancels `work` when its request is cancelled while the block runs. (A task to cancel,
        not a second task waiting for the cancel beside it: the cancel is rare, work is not.)"""
        running = self._running.setdefault(request_id, set())
        running.add(work)
        try:
            yield
        finally:
            running.discard(work)
            if not running and self._running.get(request_id) is running:
                del self._running[request_id]

    def _expire(self) -> None:
        now = time.monotonic()
        while self._ids and (
            len(self._ids) > self._max_ids or now - next(iter(self._ids.values()))[0] > self._ttl_s
        ):
            self._ids.popitem(last=False)

    async def listen(self, nc: NATS) -> Subscription:
        async def on_cancel(msg: Msg) -> None:
            try:
                cancel = CancelRequest.FromString(msg.data)
            except DecodeError:
                log.warning("skipped an undecodable cancel on %s", msg.subject)
                return
            if subjects.valid_request_id(cancel.request_id):
                self.add(cancel.request_id, cancel.reason or "cancelled")

        return await nc.subscribe(f"{subjects.CANCEL_PREFIX}.>", cb=on_cancel)
