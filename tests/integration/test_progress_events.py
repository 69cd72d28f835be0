"""A request's progress events over the real pipeline (3-task canny chain): no stage waits for
an ack of one; each stage sends the message that moves the request on before its events, every
event before `done`, none twice; the stream holds them all for a subscriber that comes once the
request has ended.

Progress events wait for no ack, so what the stream holds is read after the acked `done`: a
stage's events go out on its connection before the message that leads to `done`, and one
connection's messages keep their order on the server."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import nats
import pytest
from chorus.v1.messages_pb2 import ChatMessage, ChatRequest, TaskStatus
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.common import bus, subjects
from services.common.artifacts import ArtifactStore
from tests.integration.stack import CANNY_ONLY, running_stack
from tests.support import CANNY_CHAIN_ANSWER, canny_chain_llm, square_png, stored_events


async def test_a_chain_sends_its_events_behind_its_hand_offs_once_each_and_stores_them(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    acked: list[str] = []  # subjects of the publishes that waited for the stream's ack
    js_publish = JetStreamContext.publish

    async def publish(self: JetStreamContext, subject: str, *args: Any, **kw: Any) -> Any:
        acked.append(subject)
        return await js_publish(self, subject, *args, **kw)

    monkeypatch.setattr(JetStreamContext, "publish", publish)
    llm = canny_chain_llm()
    env = {**CANNY_ONLY, "CHORUS_LLM_BASE_URL": llm.base_url}
    request_id = uuid.uuid4().hex
    nc = await nats.connect(nats_url)
    live: list[str] = []  # message ids in the order one plain subscriber sees them
    done = asyncio.Event()

    async def watch(msg: Msg) -> None:
        msg_id = (msg.headers or {}).get(bus.MSG_ID, "")
        if msg_id.startswith(request_id):
            live.append(msg_id)
        if msg_id == f"{request_id}.done":
            done.set()

    await nc.subscribe("chorus.>", cb=watch)
    try:
        async with running_stack(nats_url, env):
            store = await ArtifactStore.open(nc.jetstream())
            photo = await store.put(square_png(), "photo.png")
            message = ChatMessage(role="user", content="Edges of photo.png", artifacts=[photo])
            request = ChatRequest(request_id=request_id, messages=[message])
            await nc.jetstream().publish(subjects.REQUEST, request.SerializeToString())
            await asyncio.wait_for(done.wait(), 120)
    finally:
        llm.stop()
        await nc.close()

    stored = await stored_events(nats_url, request_id)
    kinds = [e.WhichOneof("event") for _, e in stored]
    tokens = [e.answer_token for _, e in stored if e.HasField("answer_token")]
    progress = ["plan_ready", *(["task_started", "task_finished"] * 3)]
    assert kinds == [*progress, *["answer_token"] * len(tokens), "done"]
    assert "".join(tokens) == CANNY_CHAIN_ANSWER == stored[-1][1].done.answer
    statuses = [r.status for r in stored[-1][1].done.results]
    assert statuses == [TaskStatus.TASK_STATUS_SUCCEEDED] * 3
    events = [msg_id for msg_id, _ in stored]
    assert len(set(events)) == len(events)
    # Of the request's events only `done` was acked (once); no stage waited on the others.
    assert acked.count(subjects.event(request_id)) == 1

    # Live, each event was published once (no copy that the stream then dropped) ...
    live_events = [m for m in live if m in events]
    assert sorted(live_events) == sorted(events) and live_events[-1] == f"{request_id}.done"

    # ... and behind the hand-off its stage sent before it.
    def before(first: str, then: str) -> bool:
        return live.index(f"{request_id}.{first}") < live.index(f"{request_id}.{then}")

    assert before("plan", "plan_ready")
    assert all(before(f"{task}.0.invoke", f"{task}.0.started") for task in range(3))
    assert before("2.finished", "report") and before("report", "done")
