"""The front door's one way to run a request: validate, publish, follow its events until `done`;
and its one way to stop one: `cancel`.

The gRPC API and the HTTP endpoint both call this; each turns `RequestError` into its own wire
error through the one table in `errors`. A caller that goes away closes the generator, which
unsubscribes at once and cancels the request on the bus: nothing keeps running for a client
that left.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable

from chorus.v1.messages_pb2 import CancelRequest, ChatRequest, ErrorCode, ProgressEvent
from google.protobuf.message import DecodeError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError
from opentelemetry import trace
from prometheus_client import Counter, Gauge

from services.common import bus, events, subjects, tracing
from services.common.artifact_refs import ArtifactNotFound
from services.common.artifacts import ArtifactStore
from services.common.telemetry import ERRORS, request_id_var
from services.gateway.errors import RequestError

log = logging.getLogger(__name__)
MAX_REQUEST_BYTES = 256 * 1024  # larger inputs travel as artifacts
REQUEST_TIMEOUT_S = 900.0
STAGE = "gateway"
OPEN_WAITS = Gauge("chorus_api_open_waits", "Calls waiting on a request's events, by API.", ["api"])
CANCELLED = Counter(
    "chorus_requests_cancelled_total",
    "Requests cancelled, by API and how (disconnect: the client left; request: it asked).",
    ["api", "how"],
)
_NOT_FOUND = ErrorCode.ERROR_CODE_NOT_FOUND


class FrontDoor:
    def __init__(self, js: JetStreamContext, store: ArtifactStore) -> None:
        self._js = js
        self.store = store
        self._cancelling: set[asyncio.Task[None]] = set()
        # Requests this replica started and still waits on (by start time): they can be
        # cancelled before their first event. Pruned, as a caller may never read its events.
        self._open: dict[str, float] = {}

    async def start(
        self, request: ChatRequest, *, api: str, traceparent: str = ""
    ) -> AsyncGenerator[ProgressEvent, None]:
        """Checks the request (raising `RequestError`) and gives it an id; the events that
        come back, the last one `done`, start with publishing it when first read."""
        await self.validate(request)
        request.request_id = request.request_id or uuid.uuid4().hex
        request_id_var.set(request.request_id)
        if not request.HasField("created_at"):
            request.created_at.GetCurrentTime()
        now = time.monotonic()
        self._open = {k: t for k, t in self._open.items() if now - t < REQUEST_TIMEOUT_S}
        self._open[request.request_id] = now
        # The root of the request's trace (or a child of the caller's). Not made current here:
        # a generator's context would leak into its caller between events.
        span = tracing.tracer().start_span(
            "chorus request",
            context=tracing.extract(traceparent),
            kind=trace.SpanKind.SERVER,
            attributes={"chorus.request_id": request.request_id, "chorus.api": api},
        )
        return self._run(request, api, span)

    async def _run(
        self, request: ChatRequest, api: str, span: trace.Span
    ) -> AsyncGenerator[ProgressEvent, None]:
        request_id = request.request_id

        async def publish() -> None:
            with trace.use_span(span):
                await bus.publish(self._js, subjects.REQUEST, request, msg_id=request_id)

        finished = False
        try:
            async for event in self._follow(request_id, api, publish):
                finished = event.HasField("done")
                yield event
        finally:
            if not finished and request_id in self._open:  # the caller left, or timed out
                self._cancel_soon(request_id, api)
            self._open.pop(request_id, None)
            span.end()

    async def watch(self, request_id: str, *, api: str) -> AsyncGenerator[ProgressEvent, None]:
        """The events of a request already sent, from its first (replayed) to `done`."""
        if not subjects.valid_request_id(request_id):
            raise RequestError("request_id: 1 to 64 letters, digits, '-' or '_'")
        await self._finished(request_id)  # raises NOT_FOUND for a request never sent
        request_id_var.set(request_id)

        async def nothing() -> None:
            pass

        async for event in self._follow(request_id, api, nothing):
            yield event

    async def cancel(self, request_id: str, *, api: str, how: str, reason: str) -> None:
        """Stops a request: a `CancelRequest` on the bus (the selector dispatches nothing more,
        executors drop its queued work), then its response, ended as cancelled, so every
        caller waiting on it learns at once. A request that has finished is left as it is."""
        if not subjects.valid_request_id(request_id):
            raise RequestError("request_id: 1 to 64 letters, digits, '-' or '_'")
        if await self._finished(request_id):
            return
        request_id_var.set(request_id)
        cancel = CancelRequest(request_id=request_id, reason=reason)
        await bus.publish(
            self._js, subjects.cancel(request_id), cancel, msg_id=f"{request_id}.cancel"
        )
        CANCELLED.labels(api, how).inc()
        log.info("request cancelled (%s): %s", how, reason)
        await events.fail(
            self._js,
            request_id,
            stage=STAGE,
            code=ErrorCode.ERROR_CODE_CANCELLED,
            message=f"cancelled: {reason}",
        )

    def _cancel_soon(self, request_id: str, api: str) -> None:
        # The caller's task is being cancelled: the cancel runs in a task of its own.
        task = asyncio.create_task(
            self.cancel(request_id, api=api, how="disconnect", reason="client disconnected")
        )
        self._cancelling.add(task)
        task.add_done_callback(self._cancel_done)

    def _cancel_done(self, task: asyncio.Task[None]) -> None:
        self._cancelling.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.warning("could not cancel a request whose client left: %s", error)

    async def close(self) -> None:
        """Waits for the cancels still being sent."""
        await asyncio.gather(*self._cancelling, return_exceptions=True)

    async def _finished(self, request_id: str) -> bool:
        """Whether the request has ended (its last event is `done`); `NOT_FOUND` when there
        is no such request."""
        if request_id in self._open:  # sent, perhaps not yet planned: no event yet
            return False
        try:
            last = await self._js.get_last_msg(subjects.EVENTS_STREAM, subjects.event(request_id))
        except NotFoundError as e:
            raise RequestError(
                f"request_id: no request {request_id!r} (never sent, or its events expired)",
                _NOT_FOUND,
            ) from e
        try:
            return ProgressEvent.FromString(last.data or b"").HasField("done")
        except DecodeError:
            return False

    async def _follow(
        self, request_id: str, api: str, start: Callable[[], Awaitable[None]]
    ) -> AsyncGenerator[ProgressEvent, None]:
        # Subscribe before publishing; the stream also replays, so nothing is missed either way.
        sub = await self._js.subscribe(
            subjects.event(request_id), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        OPEN_WAITS.labels(api).inc()
        try:
            await start()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + REQUEST_TIMEOUT_S
            while (remaining := deadline - loop.time()) > 0:
                try:
                    msg = await sub.next_msg(timeout=min(remaining, 5.0))
                except NatsTimeoutError:
                    continue
                try:
                    event = ProgressEvent.FromString(msg.data)
                except DecodeError:
                    log.warning("skipped an undecodable message on %s", msg.subject)
                    continue
                yield event
                if event.HasField("done"):
                    return
            ERRORS.labels(STAGE, "deadline").inc()
            raise RequestError(
                f"request {request_id} got no response in {REQUEST_TIMEOUT_S:.0f}s",
                ErrorCode.ERROR_CODE_DEADLINE,
            )
        finally:
            OPEN_WAITS.labels(api).dec()
            await sub.unsubscribe()

    async def validate(self, request: ChatRequest) -> None:
        """Checks the request, and replaces each attachment with what the store holds for it."""
        if request.request_id and not subjects.valid_request_id(request.request_id):
            raise RequestError(
                "request_id: 1 to 64 letters, digits, '-' or '_' (or empty, to get one)"
            )
        if not request.messages:
            raise RequestError("messages: must hold at least one message")
        if not request.messages[-1].content.strip():
            raise RequestError(
                f"messages[{len(request.messages) - 1}].content: the last message is empty"
            )
        size = request.ByteSize()
        if size > MAX_REQUEST_BYTES:
            raise RequestError(
                f"messages: the request is {size} bytes, over the {MAX_REQUEST_BYTES}-byte "
                "limit; send large inputs with UploadArtifact",
                ErrorCode.ERROR_CODE_PAYLOAD_TOO_LARGE,
            )
        for i, message in enumerate(request.messages):
            for j, artifact in enumerate(message.artifacts):
                try:
                    artifact.CopyFrom(await self.store.info(artifact.id))
                except ArtifactNotFound as e:
                    raise RequestError(f"messages[{i}].artifacts[{j}].id: {e}", _NOT_FOUND) from e
