"""The responder on the bus: consumes `chorus.report`; streams answer tokens, publishes the response."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from typing import Any

from chorus.v1.messages_pb2 import ExecutionReport
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from services.common import bus, events, subjects
from services.common.llm import LLM, open_llm
from services.common.runtime import Runtime
from services.responder.respond import respond

log = logging.getLogger(__name__)
STAGE = "responder"


TOKEN_INTERVAL_S = 0.01  # answer tokens written within this of the last event share the next


class TokenBatcher:
    """A request's answer tokens as few events: the first goes out at once, and what is written
    within `TOKEN_INTERVAL_S` of the last event goes out together, when that time is up (or at
    the end). Joined, the events' text is the answer as written.

    Each event's message id is the answer's length before it: a redelivered report streams
    again, and its events that start where one already sent did are dropped as duplicates;
    one cut elsewhere by the timing is not, so a caller following tokens may then read some
    text twice (the `done` event carries the answer as written).
    """

    def __init__(self, nc: NATS, request_id: str) -> None:
        self._nc = nc
        self._request_id = request_id
        self._pieces: list[str] = []
        self._offset = 0
        self._last_sent = -TOKEN_INTERVAL_S
        self._timer: asyncio.TimerHandle | None = None
        # Sent in order, each waiting for no ack (events.publish_event); the end awaits them
        # all before `done`, which must come after them on the connection.
        self.sent: list[asyncio.Future[None]] = []

    def add(self, piece: str) -> None:
        if not piece:
            return
        self._pieces.append(piece)
        if self._timer is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self._last_sent + TOKEN_INTERVAL_S - loop.time()
        if wait <= 0:
            self.flush()
        else:
            self._timer = loop.call_later(wait, self.flush)

    def flush(self) -> None:
        """Sends what is written and not yet sent, as one event."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pieces:
            return
        event = events.new_event(self._request_id)
        event.answer_token = "".join(self._pieces)
        self._pieces = []
        msg_id = f"{self._request_id}.token.{self._offset}"
        self._offset += len(event.answer_token)
        self._last_sent = asyncio.get_running_loop().time()
        self.sent.append(
            asyncio.ensure_future(events.publish_event(self._nc, event, msg_id=msg_id))
        )


class Responder:
    def __init__(
        self, nc: NATS, js: JetStreamContext, llm: LLM | None, context_tokens: int
    ) -> None:
        self._nc = nc
        self._js = js
        self._llm = llm
        self._context_tokens = context_tokens

    async def handle(self, report: ExecutionReport) -> None:
        tokens = TokenBatcher(self._nc, report.request_id)

        async def on_token(piece: str) -> None:
            tokens.add(piece)

        try:
            response = await respond(
                report, self._llm, on_token, context_tokens=self._context_tokens
            )
        except BaseException:  # what was written goes out, as each token did before
            tokens.flush()
            await bus.pipelined(tokens.sent)
            raise
        tokens.flush()
        # `done` follows the last token on the connection.
        await bus.pipelined([*tokens.sent, events.finish(self._js, response)])


async def build(rt: Runtime, stack: AsyncExitStack) -> list[bus.Consumer[Any]]:
    llm_settings = rt.settings.llm
    llm = open_llm(llm_settings, stack)
    responder = Responder(rt.nc, rt.js, llm, llm_settings.context_tokens)
    spec = bus.ConsumerSpec(
        stage=STAGE,
        subject=subjects.REPORT,
        durable="responder",
        message_type=ExecutionReport,
        handle=responder.handle,
        give_up=events.fail_on_give_up(rt.js, STAGE),
    )
    return [bus.Consumer(rt.js, spec)]
