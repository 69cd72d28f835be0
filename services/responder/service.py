"""The responder on the bus: consumes `chorus.report`; streams answer tokens, publishes the response."""

from __future__ import annotations

import asyncio
import itertools
import logging
from contextlib import AsyncExitStack
from typing import Any

from chorus.v1.messages_pb2 import ExecutionReport
from nats.js import JetStreamContext

from services.common import bus, events, subjects
from services.common.llm import LLM, open_llm
from services.common.runtime import Runtime
from services.responder.respond import respond

log = logging.getLogger(__name__)
STAGE = "responder"


class Responder:
    def __init__(self, js: JetStreamContext, llm: LLM | None, context_tokens: int) -> None:
        self._js = js
        self._llm = llm
        self._context_tokens = context_tokens

    async def handle(self, report: ExecutionReport) -> None:
        counter = itertools.count()
        sent: list[asyncio.Task[None]] = []

        async def on_token(piece: str) -> None:
            event = events.new_event(report.request_id)
            event.answer_token = piece
            # Numbered ids: a redelivered report re-streams without duplicating tokens.
            msg_id = f"{report.request_id}.token.{next(counter)}"
            # Sent in order, acks awaited together at the end: the stream never waits on them.
            sent.append(asyncio.ensure_future(events.publish_event(self._js, event, msg_id=msg_id)))

        try:
            response = await respond(
                report, self._llm, on_token, context_tokens=self._context_tokens
            )
        finally:
            await bus.pipelined(sent)
        await events.finish(self._js, response)


async def build(rt: Runtime, stack: AsyncExitStack) -> list[bus.Consumer[Any]]:
    llm_settings = rt.settings.llm
    responder = Responder(rt.js, open_llm(llm_settings, stack), llm_settings.context_tokens)
    spec = bus.ConsumerSpec(
        stage=STAGE,
        subject=subjects.REPORT,
        durable="responder",
        message_type=ExecutionReport,
        handle=responder.handle,
        give_up=events.fail_on_give_up(rt.js, STAGE),
    )
    return [bus.Consumer(rt.js, spec)]
