"""Cancelling a request end to end: what a user sees once they press Stop."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import nats
from chorus.v1 import chorus_pb2_grpc
from chorus.v1.chorus_pb2 import ListModelsRequest
from chorus.v1.messages_pb2 import (
    CancelRequest,
    ChatMessage,
    ChatRequest,
    ErrorCode,
    ProgressEvent,
    TaskStatus,
)
from nats.js.api import DeliverPolicy

from services.common import subjects
from tests.integration.stack import CANNY_ONLY, running_stack
from tests.support import ScriptedLLM

PLAN = (
    '[{"task": "summarization", "id": 0, "dep": [], "args": {"text": "a long story"}},'
    ' {"task": "summarization", "id": 1, "dep": [0], "args": {"text": "<GENERATED>-0"}},'
    ' {"task": "translation", "id": 2, "dep": [0], "args": {"text": "<GENERATED>-0"}}]'
)


def _slow_summary(_messages: list[dict[str, Any]]) -> str:
    time.sleep(3)  # the first task runs while the user presses Stop
    return "A summary."


async def test_after_stop_no_task_of_the_request_runs(
    nats_url: str, scripted_llm: ScriptedLLM
) -> None:
    scripted_llm.replies = [PLAN, _slow_summary, "Stopped."]
    # The executor's defaults give it the LLM route, which runs the summaries.
    env = {
        "CHORUS_EXECUTOR_MODELS": CANNY_ONLY["CHORUS_EXECUTOR_MODELS"],
        "CHORUS_LLM_BASE_URL": scripted_llm.base_url,
    }
    async with (
        running_stack(nats_url, env) as settings,
        grpc.aio.insecure_channel(settings.grpc_addr) as channel,
    ):
        stub = chorus_pb2_grpc.ChorusStub(channel)
        for _ in range(100):  # until the executor's LLM route is announced
            if (await stub.ListModels(ListModelsRequest(task="summarization"))).workers:
                break
            await asyncio.sleep(0.1)
        call = stub.StreamChat(
            ChatRequest(messages=[ChatMessage(role="user", content="Summarize and translate")])
        )
        request_id = ""
        async for event in call:
            request_id = event.request_id
            if event.WhichOneof("event") == "task_started":
                await stub.Cancel(CancelRequest(request_id=request_id, reason="Stop"))
            if event.HasField("done"):
                assert event.done.error.code == ErrorCode.ERROR_CODE_CANCELLED, (
                    event.done.plan.notes,
                    [r.error for r in event.done.results],
                )
        finished = await _every_task_finished(nats_url, request_id, 3)
    started = {e.task_started.task_id for e in finished if e.WhichOneof("event") == "task_started"}
    assert started == {0}, "a task was dispatched after the cancel"
    statuses = {
        e.task_finished.task_id: e.task_finished.status
        for e in finished
        if e.WhichOneof("event") == "task_finished"
    }
    assert statuses == dict.fromkeys((0, 1, 2), TaskStatus.TASK_STATUS_CANCELLED)


async def _every_task_finished(nats_url: str, request_id: str, tasks: int) -> list[ProgressEvent]:
    """The request's events, replayed, until each task has finished (or 30 s have passed)."""
    nc = await nats.connect(nats_url)
    sub = await nc.jetstream().subscribe(
        subjects.event(request_id), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    events: list[ProgressEvent] = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            try:
                msg = await sub.next_msg(timeout=1)
            except nats.errors.TimeoutError:
                continue
            events.append(ProgressEvent.FromString(msg.data))
            done = {e.task_finished.task_id for e in events if e.HasField("task_finished")}
            if len(done) == tasks:
                break
    finally:
        await nc.close()
    return events
