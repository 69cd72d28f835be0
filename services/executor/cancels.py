"""The requests cancelled lately, as this replica heard of them on `chorus.cancel.<id>`.

Read with a plain core-NATS subscription, not a stream consumer: every replica must hear
every cancel, and one missed (the replica was down) costs only work, never a wrong answer.
The set is bounded and its entries expire, so a flood of cancels cannot grow it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

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
        self._waiters: dict[str, set[asyncio.Event]] = {}

    def add(self, request_id: str, reason: str) -> None:
        self._ids[request_id] = (time.monotonic(), reason)
        self._ids.move_to_end(request_id)
        self._expire()
        for event in self._waiters.pop(request_id, ()):
            event.set()

    def reason(self, request_id: str) -> str | None:
        """Why the request was cancelled; None when it was not (or long ago)."""
        self._expire()
        entry = self._ids.get(request_id)
        return entry[1] if entry else None

    async def wait(self, request_id: str) -> str:
        """Returns (the reason) once the request is cancelled."""
        while (reason := self.reason(request_id)) is None:
            event = asyncio.Event()
            self._waiters.setdefault(request_id, set()).add(event)
            try:
                await event.wait()
            finally:
                waiting = self._waiters.get(request_id)
                if waiting is not None:
                    waiting.discard(event)
                    if not waiting:
                        del self._waiters[request_id]
        return reason

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
