"""Publishing what a client sees: progress events and the final response of a request."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from chorus.v1.messages_pb2 import ChatResponse, ErrorCode, PipelineError, ProgressEvent, TaskPlan
from google.protobuf.message import Message
from nats.js import JetStreamContext

from services.common import bus, subjects
from services.common.telemetry import ERRORS

log = logging.getLogger(__name__)


def new_event(request_id: str) -> ProgressEvent:
    event = ProgressEvent(request_id=request_id)
    event.time.GetCurrentTime()
    return event


async def publish_event(js: JetStreamContext, event: ProgressEvent, *, msg_id: str = "") -> None:
    await bus.publish(js, subjects.event(event.request_id), event, msg_id=msg_id or None)


async def finish(js: JetStreamContext, response: ChatResponse) -> None:
    """Publishes the final response, then the `done` event that ends every event stream."""
    request_id = response.request_id
    event = new_event(request_id)
    event.done.CopyFrom(response)
    await bus.pipelined(  # sent in this order, acked together
        [
            bus.publish(
                js, subjects.response(request_id), response, msg_id=f"{request_id}.response"
            ),
            publish_event(js, event, msg_id=f"{request_id}.done"),
        ]
    )


async def fail(
    js: JetStreamContext,
    request_id: str,
    *,
    stage: str,
    code: ErrorCode.ValueType,
    message: str,
    plan: TaskPlan | None = None,
) -> None:
    """Ends a request with an error the caller can read, instead of leaving it to hang."""
    name = code_name(code)
    ERRORS.labels(stage, name).inc()
    log.error("request failed in %s (%s): %s", stage, name, message)
    response = ChatResponse(
        request_id=request_id,
        error=PipelineError(stage=stage, code=code, message=message),
    )
    if plan is not None and plan.ByteSize() < bus.MAX_PAYLOAD_BYTES // 2:
        response.plan.CopyFrom(plan)
    await finish(js, response)


def code_name(code: ErrorCode.ValueType) -> str:
    """`ERROR_CODE_LLM_UNAVAILABLE` as `llm_unavailable`, for messages and metric labels."""
    return ErrorCode.Name(code).removeprefix("ERROR_CODE_").lower()


def fail_on_give_up(
    js: JetStreamContext, stage: str
) -> Callable[[Message, Exception], Awaitable[None]]:
    """The usual last resort of a stage: end the request with the error."""

    async def give_up(message: Message, error: Exception) -> None:
        code = (
            error.code if isinstance(error, bus.PermanentError) else ErrorCode.ERROR_CODE_INTERNAL
        )
        plan = getattr(message, "plan", None)
        await fail(
            js,
            str(getattr(message, "request_id", "")),
            stage=stage,
            code=code,
            message=str(error),
            plan=plan if isinstance(plan, TaskPlan) else None,
        )

    return give_up
