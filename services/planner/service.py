"""The planner on the bus: consumes `chorus.request`, publishes `chorus.plan`; hosts the gateway
unless `CHORUS_PLANNER_HOSTS_GATEWAY=0` (when the gateway runs at the edge on its own)."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import Any

from chorus.v1.messages_pb2 import ChatRequest, ErrorCode

from services.common import bus, events, subjects
from services.common.llm import LLMError, ReportingLLM, open_llm
from services.common.resources import request_text
from services.common.runtime import Runtime
from services.common.settings import bool_setting
from services.gateway import service as gateway
from services.planner.plan import plan

log = logging.getLogger(__name__)
STAGE = "planner"


class Planner:
    def __init__(self, rt: Runtime, llm: ReportingLLM | None) -> None:
        self._nc = rt.nc
        self._js = rt.js
        self._llm = llm

    async def handle(self, request: ChatRequest) -> None:
        if not request_text(request).strip():
            await events.fail(
                self._js,
                request.request_id,
                stage=STAGE,
                code=ErrorCode.ERROR_CODE_INVALID_REQUEST,
                message="messages: the request holds no user message with text",
            )
            return
        # A request published straight to the bus may carry no start time: the clock starts here.
        if not request.HasField("created_at"):
            request.created_at.GetCurrentTime()
        # Nor may it bring a file's bytes inline (only a task's output travels so): its files
        # are read from the store, which checks them, like any client's.
        for message in request.messages:
            for artifact in message.artifacts:
                artifact.ClearField("inline")
        try:
            task_plan = await plan(request, self._llm)
        except LLMError as e:
            await events.fail(
                self._js,
                request.request_id,
                stage=STAGE,
                code=ErrorCode.ERROR_CODE_LLM_UNAVAILABLE,
                message=str(e),
            )
            return
        log.info("planned %d tasks", len(task_plan.tasks))
        event = events.new_event(request.request_id)
        event.plan_ready.CopyFrom(task_plan)
        await bus.pipelined(  # the plan first; the event behind it waits for no ack
            [
                bus.publish(
                    self._js, subjects.PLAN, task_plan, msg_id=f"{request.request_id}.plan"
                ),
                events.publish_event(self._nc, event, msg_id=f"{request.request_id}.plan_ready"),
            ]
        )


async def build(rt: Runtime, stack: AsyncExitStack) -> list[bus.Consumer[Any]]:
    llm = None if rt.settings.planner == "rules" else open_llm(rt.settings.llm, stack)
    if bool_setting(rt.settings.env, "CHORUS_PLANNER_HOSTS_GATEWAY", True):
        await gateway.start(rt, stack)
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
