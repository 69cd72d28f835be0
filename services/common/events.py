"""Publishing what a client sees: progress events and the final response of a request.

Progress events (plan ready, task started / finished / waiting, answer tokens) are core
publishes that no stage waits on; the final response and the `done` event that carries it are
acked. The trade: an event is stored in `CHORUS_EVENTS` (deduplicated by its message id,
replayable for an hour) whenever JetStream takes it, but nothing notices when it does not (the
server dies with it unwritten, an election in a cluster): a subscriber reading the stream
later misses that event. The request does not stall for it, and `done` still comes (retried
until stored) with the whole response: plan, every task's result, the answer. A publish the
connection refuses (closed, or its reconnect buffer full) is counted in
`chorus_events_unsent_total` and logged with the request id; the stage goes on.

Order: a server keeps one connection's messages in order, acked or not, so a stage that sends
its hand-off, then its events, has the events in the stream before anything the hand-off leads
to, `done` included. On a cluster the event and the hand-off may cross different routes to
their streams' leaders: as good as always in order, not guaranteed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from chorus.v1.messages_pb2 import ChatResponse, ErrorCode, PipelineError, ProgressEvent, TaskPlan
from google.protobuf.message import Message
from nats import errors as nats_errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from prometheus_client import Counter

from services.common import bus, subjects
from services.common.telemetry import ERRORS

log = logging.getLogger(__name__)
UNSENT = Counter(
    "chorus_events_unsent_total",
    "Progress events the NATS connection refused (closed, or its reconnect buffer full): "
    "never published, the request went on without them. By event kind.",
    ["event"],
)


def new_event(request_id: str) -> ProgressEvent:
    event = ProgressEvent(request_id=request_id)
    event.time.GetCurrentTime()
    return event


async def publish_event(nc: NATS, event: ProgressEvent, *, msg_id: str) -> None:
    """Publishes a progress event and goes on: no wait for the stream's ack (see above for
    what that trades, and for the order it keeps)."""
    try:
        await bus.publish_unacked(nc, subjects.event(event.request_id), event, msg_id=msg_id)
    except nats_errors.Error as e:
        kind = event.WhichOneof("event") or "none"
        UNSENT.labels(kind).inc()
        log.warning(
            "progress event %s not sent: %r",
            msg_id,
            e,
            extra={"fields": {"request_id": event.request_id, "event": kind}},
        )


async def finish(js: JetStreamContext, response: ChatResponse) -> None:
    """Publishes the final response, then the `done` event that ends every event stream; both
    acked (retried through an outage): they end the request and must be stored."""
    request_id = response.request_id
    event = new_event(request_id)
    event.done.CopyFrom(response)
    await bus.pipelined(  # sent in this order, acked together
        [
            bus.publish(
                js, subjects.response(request_id), response, msg_id=f"{request_id}.response"
            ),
            bus.publish(js, subjects.event(request_id), event, msg_id=f"{request_id}.done"),
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
