"""The front door's one way to run a request: validate, publish, follow its events until `done`.

The gRPC API and the OpenAI-compatible endpoint both call this; each turns `RequestError`
into its own wire error in one place. A caller that goes away cancels the generator, which
unsubscribes at once: nothing keeps waiting for a client that left.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable

from chorus.v1.messages_pb2 import ChatRequest, ProgressEvent
from google.protobuf.message import DecodeError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError
from opentelemetry import trace
from prometheus_client import Gauge

from services.common import bus, subjects, tracing
from services.common.artifact_refs import ArtifactNotFound
from services.common.artifacts import ArtifactStore
from services.common.telemetry import ERRORS, request_id_var

log = logging.getLogger(__name__)
MAX_REQUEST_BYTES = 256 * 1024  # larger inputs travel as artifacts
REQUEST_TIMEOUT_S = 900.0
OPEN_WAITS = Gauge("chorus_api_open_waits", "Calls waiting on a request's events, by API.", ["api"])


class RequestError(Exception):
    """A call the front door turns down; `code` is `invalid_argument`, `not_found` or `deadline`."""

    code = "invalid_argument"


class InvalidRequest(RequestError):
    code = "invalid_argument"


class RequestNotFound(RequestError):
    code = "not_found"


class RequestTimedOut(RequestError):
    code = "deadline"


class FrontDoor:
    def __init__(self, js: JetStreamContext, store: ArtifactStore) -> None:
        self._js = js
        self.store = store

    async def run(
        self, request: ChatRequest, *, api: str, traceparent: str = ""
    ) -> AsyncGenerator[ProgressEvent, None]:
        """Publishes the request and yields its events; the last one is `done`."""
        await self.validate(request)
        request.request_id = request.request_id or uuid.uuid4().hex
        request_id_var.set(request.request_id)
        if not request.HasField("created_at"):
            request.created_at.GetCurrentTime()
        # The root of the request's trace (or a child of the caller's). Not made current here:
        # a generator's context would leak into its caller between events.
        span = tracing.tracer().start_span(
            "chorus request",
            context=tracing.extract(traceparent),
            kind=trace.SpanKind.SERVER,
            attributes={"chorus.request_id": request.request_id, "chorus.api": api},
        )

        async def publish() -> None:
            with trace.use_span(span):
                await bus.publish(self._js, subjects.REQUEST, request, msg_id=request.request_id)

        try:
            async for event in self._follow(request.request_id, api, publish):
                yield event
        finally:
            span.end()

    async def watch(self, request_id: str, *, api: str) -> AsyncGenerator[ProgressEvent, None]:
        """The events of a request already sent, from its first (replayed) to `done`."""
        if not subjects.valid_request_id(request_id):
            raise InvalidRequest("request_id: 1 to 64 letters, digits, '-' or '_'")
        try:
            await self._js.get_last_msg(subjects.EVENTS_STREAM, subjects.event(request_id))
        except NotFoundError as e:
            raise RequestNotFound(
                f"request_id: no request {request_id!r} (never sent, or its events expired)"
            ) from e
        request_id_var.set(request_id)

        async def nothing() -> None:
            pass

        async for event in self._follow(request_id, api, nothing):
            yield event

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
            ERRORS.labels("planner", "deadline").inc()
            raise RequestTimedOut(
                f"request {request_id} got no response in {REQUEST_TIMEOUT_S:.0f}s"
            )
        finally:
            OPEN_WAITS.labels(api).dec()
            await sub.unsubscribe()

    async def validate(self, request: ChatRequest) -> None:
        """Checks the request, and replaces each attachment with what the store holds for it."""
        if request.request_id and not subjects.valid_request_id(request.request_id):
            raise InvalidRequest(
                "request_id: 1 to 64 letters, digits, '-' or '_' (or empty, to get one)"
            )
        if not request.messages:
            raise InvalidRequest("messages: must hold at least one message")
        if not request.messages[-1].content.strip():
            raise InvalidRequest(
                f"messages[{len(request.messages) - 1}].content: the last message is empty"
            )
        size = request.ByteSize()
        if size > MAX_REQUEST_BYTES:
            raise InvalidRequest(
                f"messages: the request is {size} bytes, over the {MAX_REQUEST_BYTES}-byte "
                "limit; send large inputs with UploadArtifact"
            )
        for i, message in enumerate(request.messages):
            for j, artifact in enumerate(message.artifacts):
                try:
                    artifact.CopyFrom(await self.store.info(artifact.id))
                except ArtifactNotFound as e:
                    raise RequestNotFound(f"messages[{i}].artifacts[{j}].id: {e}") from e
