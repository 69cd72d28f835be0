"""The planner on the bus: consumes `chorus.request`, publishes `chorus.plan`; serves the gRPC API."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import Any

from chorus.v1.messages_pb2 import ChatRequest

from services.common import bus, events, subjects
from services.common.artifacts import ArtifactStore
from services.common.llm import LLMError, ReportingLLM, open_llm
from services.common.resources import request_text
from services.common.runtime import Runtime
from services.common.workers import WorkerRegistry
from services.planner.api import start_grpc
from services.planner.frontdoor import FrontDoor
from services.planner.openai_http import start_openai_http
from services.planner.plan import plan

log = logging.getLogger(__name__)
STAGE = "planner"


class Planner:
    def __init__(self, rt: Runtime, llm: ReportingLLM | None) -> None:
        self._js = rt.js
        self._llm = llm

    async def handle(self, request: ChatRequest) -> None:
        if not request_text(request).strip():
            await events.fail(
                self._js,
                request.request_id,
                stage=STAGE,
                code="invalid_request",
                message="messages: the request holds no user message with text",
            )
            return
        # A request published straight to the bus may carry no start time: the clock starts here.
        if not request.HasField("created_at"):
            request.created_at.GetCurrentTime()
        try:
            task_plan = await plan(request, self._llm)
        except LLMError as e:
            await events.fail(
                self._js, request.request_id, stage=STAGE, code="llm_unavailable", message=str(e)
            )
            return
        log.info("planned %d tasks", len(task_plan.tasks))
        event = events.new_event(request.request_id)
        event.plan_ready.CopyFrom(task_plan)
        await bus.pipelined(
            [
                events.publish_event(self._js, event, msg_id=f"{request.request_id}.plan_ready"),
                bus.publish(
                    self._js, subjects.PLAN, task_plan, msg_id=f"{request.request_id}.plan"
                ),
            ]
        )


async def build(rt: Runtime, stack: AsyncExitStack) -> list[bus.Consumer[Any]]:
    llm = None if rt.settings.planner == "rules" else open_llm(rt.settings.llm, stack)
    store = await ArtifactStore.open(rt.js, rt.settings.stream_replicas)
    registry = await WorkerRegistry.watch(
        rt.js, rt.settings.worker_ttl_s, rt.settings.stream_replicas
    )
    stack.push_async_callback(registry.stop)
    front = FrontDoor(rt.js, store)
    server = await start_grpc(rt, front, registry)
    stack.push_async_callback(server.stop, 5.0)
    if rt.settings.openai_addr:
        http = await start_openai_http(front, rt.settings.openai_addr)
        stack.push_async_callback(http.stop)
    planner = Planner(rt, llm)
    spec = bus.ConsumerSpec(
        stage=STAGE,
        subject=subjects.REQUEST,
        durable="planner",
        message_type=ChatRequest,
        handle=planner.handle,
        give_up=events.fail_on_give_up(rt.js, STAGE),
        ack_wait_s=max(30.0, rt.settings.llm.timeout_s * (rt.settings.llm.max_retries + 1) + 5),
    )
    return [bus.Consumer(rt.js, spec)]
