"""Answer tokens as few events (`TokenBatcher`), on a real NATS server: the text is the answer
as written, the first token goes out at once, and a repeated stream adds nothing.

Token events wait for no ack; the acked `done` published after them on the same connection
(as the responder does) is stored after them, so once it is acked the stream holds them."""

from __future__ import annotations

import asyncio

from chorus.v1.messages_pb2 import ChatResponse, ProgressEvent
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from services.common import bus, events, subjects
from services.responder.service import TokenBatcher

PIECES = ["The", " edges", " are", " drawn", " in", " canny-control-0.png."]


async def _stored_tokens(js: JetStreamContext, request_id: str) -> list[tuple[str, str]]:
    """(message id, text) of each answer-token event the stream holds for the request."""
    found: list[tuple[str, str]] = []
    seq = 1
    while True:
        try:
            msg = await js.get_msg(
                subjects.EVENTS_STREAM, seq, subject=subjects.event(request_id), next=True
            )
        except NotFoundError:
            return found
        seq = (msg.seq or seq) + 1
        event = ProgressEvent.FromString(msg.data or b"")
        if event.HasField("answer_token"):
            found.append(((msg.headers or {})[bus.MSG_ID], event.answer_token))


async def _stream(nc: NATS, request_id: str) -> None:
    tokens = TokenBatcher(nc, request_id)
    for piece in PIECES:  # written back to back: no turn of the loop in between
        tokens.add(piece)
    tokens.flush()
    await _end(nc, tokens, request_id)


async def _end(nc: NATS, tokens: TokenBatcher, request_id: str) -> None:
    """What the responder does at the end: the tokens, then `done`, acked."""
    done = events.finish(nc.jetstream(), ChatResponse(request_id=request_id))
    await bus.pipelined([*tokens.sent, done])


async def test_tokens_written_together_are_one_event_after_the_first(nats_url: str) -> None:
    nc = await bus.connect(nats_url, "test")
    js = nc.jetstream()
    await bus.ensure_streams(js)
    try:
        await _stream(nc, "r1")
        first = await _stored_tokens(js, "r1")
        await _stream(nc, "r1")  # a redelivered report streams the same answer again
        again = await _stored_tokens(js, "r1")
    finally:
        await nc.close()
    assert first == [("r1.token.0", "The"), ("r1.token.3", "".join(PIECES[1:]))]
    assert again == first


async def test_what_waits_goes_out_when_its_time_is_up(nats_url: str) -> None:
    nc = await bus.connect(nats_url, "test")
    js = nc.jetstream()
    await bus.ensure_streams(js)
    try:
        tokens = TokenBatcher(nc, "r2")
        tokens.add("Hello")
        tokens.add(", world")  # held: the first went out just now
        for _ in range(500):  # no further token, no end: the timer sends it
            if len(tokens.sent) == 2:
                break
            await asyncio.sleep(0.01)
        await _end(nc, tokens, "r2")
        stored = await _stored_tokens(js, "r2")
    finally:
        await nc.close()
    assert stored == [("r2.token.0", "Hello"), ("r2.token.5", ", world")]
