"""The front door's one way to run a request: validate, publish, follow its events until `done`;
and its one way to stop one: `cancel`.

The gRPC API and the HTTP endpoint both call this; each turns `RequestError` into its own wire
error through the one table in `errors`. A caller that goes away closes the generator, which
stops following at once and cancels the request on the bus: nothing keeps running for a client
that left. Events come through the replica's one subscription (`router`), not a consumer per
request.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import IO

from chorus.v1.messages_pb2 import (
    ArtifactRef,
    CancelRequest,
    ChatRequest,
    ErrorCode,
    ProgressEvent,
)
from google.protobuf.message import DecodeError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError
from opentelemetry import trace
from prometheus_client import Counter, Gauge

from services.common import bus, events, subjects, tracing
from services.common.artifact_refs import ArtifactNotFound, BadMediaType
from services.common.artifacts import ArtifactStore, Stored
from services.common.telemetry import ERRORS, request_id_var
from services.gateway.errors import RequestError
from services.gateway.owners import RequestOwners
from services.gateway.router import IDLE_CHECK_S, EventRouter

log = logging.getLogger(__name__)
MAX_REQUEST_BYTES = 256 * 1024  # larger inputs travel as artifacts
REQUEST_TIMEOUT_S = 900.0
# A caller reads a request's events at once; one whose events are not read this long after
# it was admitted never will be (its client left before the response began): its slot is freed.
START_TIMEOUT_S = 30.0
STAGE = "gateway"
OPEN_WAITS = Gauge("chorus_api_open_waits", "Calls waiting on a request's events, by API.", ["api"])
CANCELLED = Counter(
    "chorus_requests_cancelled_total",
    "Requests cancelled, by API and how (disconnect: the client left; request: it asked).",
    ["api", "how"],
)
_NOT_FOUND = ErrorCode.ERROR_CODE_NOT_FOUND
_ALREADY_EXISTS = ErrorCode.ERROR_CODE_ALREADY_EXISTS
ADMISSION_REFUSED = Counter(
    "chorus_admission_refused_total",
    "Requests turned away over a concurrency limit (overall, per_key).",
    ["limit"],
)
RETRY_AFTER_S = 5


@dataclass(frozen=True)
class Limits:
    max_requests: int  # running at once through this gateway
    max_requests_per_key: int  # of those, by one key


class FrontDoor:
    def __init__(
        self,
        js: JetStreamContext,
        router: EventRouter,
        store: ArtifactStore,
        owners: RequestOwners,
        limits: Limits,
    ) -> None:
        self._js = js
        self._router = router
        self.store = store
        self._owners = owners
        self._limits = limits
        self._cancelling: set[asyncio.Task[None]] = set()
        # Requests this replica started and still waits on (start time, owner): they can be
        # cancelled before their first event, and they are what the limits count (one still
        # here after REQUEST_TIMEOUT_S is pruned).
        self._open: dict[str, tuple[float, str]] = {}
        # Of those, the ones whose events nobody has begun to read: freed at START_TIMEOUT_S.
        self._unread: dict[str, asyncio.TimerHandle] = {}

    async def start(
        self, request: ChatRequest, *, api: str, owner: str, traceparent: str = ""
    ) -> AsyncGenerator[ProgressEvent, None]:
        """Checks the request (raising `RequestError`), admits it under the limits and records
        `owner` as its owner; the events that come back, the last one `done`, start with
        publishing it when first read."""
        await self.validate(request, owner)
        self.admit(owner)
        chosen = bool(request.request_id)
        request.request_id = request.request_id or uuid.uuid4().hex
        request_id_var.set(request.request_id)
        await self._claim(request.request_id, owner, chosen)
        if not request.HasField("created_at"):
            request.created_at.GetCurrentTime()
        self._open[request.request_id] = (time.monotonic(), owner)
        # The root of the request's trace (or a child of the caller's). Not made current here:
        # a generator's context would leak into its caller between events.
        span = tracing.tracer().start_span(
            "chorus request",
            context=tracing.extract(traceparent),
            kind=trace.SpanKind.SERVER,
            attributes={"chorus.request_id": request.request_id, "chorus.api": api},
        )
        events = self._run(request, api, span)
        self._free_if_unread(events, request.request_id, span)
        return events

    def _free_if_unread(
        self, events: AsyncGenerator[ProgressEvent, None], request_id: str, span: trace.Span
    ) -> None:
        """Frees the request's slot if its events are never read: when `events` is dropped
        unstarted (closing a generator that never ran runs none of its code), or when it is
        still unstarted after START_TIMEOUT_S. Nothing was published, so nothing is cancelled."""

        def free() -> None:
            if (timer := self._unread.pop(request_id, None)) is not None:
                timer.cancel()
                self._open.pop(request_id, None)
                span.end()
                log.info("freed the slot of a request whose events were never read")

        self._unread[request_id] = asyncio.get_running_loop().call_later(START_TIMEOUT_S, free)
        weakref.finalize(events, free)

    def admit(self, owner: str) -> None:
        """`RESOURCE_EXHAUSTED` when `owner`, or the gateway, runs as many requests as allowed."""
        now = time.monotonic()
        self._open = {k: v for k, v in self._open.items() if now - v[0] < REQUEST_TIMEOUT_S}
        running = [o for _, o in self._open.values()]
        if len(running) >= self._limits.max_requests:
            limit, which = self._limits.max_requests, "overall"
        elif running.count(owner) >= self._limits.max_requests_per_key:
            limit, which = self._limits.max_requests_per_key, "per_key"
        else:
            return
        ADMISSION_REFUSED.labels(which).inc()
        log.warning("request refused: %d requests running (%s limit)", limit, which)
        raise RequestError(
            f"{limit} requests are running ({which.replace('_', ' ')} limit); "
            f"retry in {RETRY_AFTER_S} s",
            ErrorCode.ERROR_CODE_RESOURCE_EXHAUSTED,
            retry_after_s=RETRY_AFTER_S,
        )

    async def _claim(self, request_id: str, owner: str, chosen: bool) -> None:
        # A request sent straight to the bus has events but no owner entry: its id is taken
        # too, and is checked first, or claiming it would hand its events to the claimant.
        # An id made here is new: only one the caller chose can be another request's.
        taken = request_id in self._open or (
            chosen and await self._last_event(request_id) is not None
        )
        if taken or not await self._owners.claim(request_id, owner):
            raise RequestError(f"request_id: {request_id!r} is in use", _ALREADY_EXISTS)

    async def check_owner(self, request_id: str, owner: str) -> None:
        """`NOT_FOUND` unless `owner` sent the request: another's request is not shown to exist."""
        if not subjects.valid_request_id(request_id):
            raise RequestError("request_id: 1 to 64 letters, digits, '-' or '_'")
        if await self._owners.owner_of(request_id) != owner:
            raise RequestError(f"request_id: no request {request_id!r}", _NOT_FOUND)

    async def artifact(
        self, artifact_id: str, owner: str
    ) -> tuple[ArtifactRef, AsyncIterator[bytes]]:
        """A file `owner` uploaded, or one a request of theirs made, and its bytes part by
        part as the store reads them; else `NOT_FOUND`. One read of its metadata serves both."""
        try:
            stored, parts = await self.store.stream(artifact_id)
        except ArtifactNotFound as e:
            raise RequestError(f"id: {e}", _NOT_FOUND) from e
        await self._check_owner_of(stored, owner)
        return stored.ref, _not_found_as_refusal(parts)

    async def _check_artifact_owner(self, artifact_id: str, owner: str) -> ArtifactRef:
        """What the store holds under the id, if it is `owner`'s; else `NOT_FOUND`."""
        try:
            stored = await self.store.described(artifact_id)
        except ArtifactNotFound as e:
            raise RequestError(f"id: {e}", _NOT_FOUND) from e
        await self._check_owner_of(stored, owner)
        return stored.ref

    async def _check_owner_of(self, stored: Stored, owner: str) -> None:
        made_for = stored.made_for
        actual = stored.uploader or (await self._owners.owner_of(made_for) if made_for else "")
        if actual != owner:
            log.warning("refused a file of another owner")
            raise RequestError(
                f"id: artifact {stored.ref.id!r} does not exist or expired", _NOT_FOUND
            )

    async def put_artifact(
        self, data: bytes | IO[bytes], name: str, media_type: str | None, owner: str
    ) -> ArtifactRef:
        """Stores an upload as `owner`'s; a bad media type is the caller's error."""
        try:
            return await self.store.put(data, name, media_type, owner=owner)
        except BadMediaType as e:
            raise RequestError(f"media_type: {e}") from e

    async def _run(
        self, request: ChatRequest, api: str, span: trace.Span
    ) -> AsyncGenerator[ProgressEvent, None]:
        request_id = request.request_id
        if (timer := self._unread.pop(request_id, None)) is None:
            raise RequestError(
                f"request {request_id} was not read within {START_TIMEOUT_S:.0f}s of being "
                "accepted, and was dropped; send it again under a new request_id (this one "
                "stays taken)",
                ErrorCode.ERROR_CODE_DEADLINE,
            )
        timer.cancel()

        async def publish() -> None:
            with trace.use_span(span):
                await bus.publish(self._js, subjects.REQUEST, request, msg_id=request_id)

        finished = False
        try:
            async for event in self._routed(request_id, api, publish):
                finished = event.HasField("done")
                yield event
        finally:
            if not finished and request_id in self._open:  # the caller left, or timed out
                self._cancel_soon(request_id, api)
            self._open.pop(request_id, None)
            span.end()

    async def watch(
        self, request_id: str, *, api: str, owner: str
    ) -> AsyncGenerator[ProgressEvent, None]:
        """The events of a request `owner` sent, from its first (replayed) to `done`."""
        await self.check_owner(request_id, owner)
        await self._finished(request_id)  # raises NOT_FOUND for a request never sent
        request_id_var.set(request_id)

        async for event in self._replayed(request_id, api):
            yield event

    async def cancel(self, request_id: str, *, api: str, owner: str, reason: str) -> None:
        """Stops a request `owner` sent: a `CancelRequest` on the bus (the selector dispatches
        nothing more, executors drop its queued work), then its response, ended as cancelled,
        so every caller waiting on it learns at once. A finished request is left as it is."""
        await self.check_owner(request_id, owner)
        await self._cancel(request_id, api=api, how="request", reason=reason)

    async def _cancel(self, request_id: str, *, api: str, how: str, reason: str) -> None:
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
            self._cancel(request_id, api=api, how="disconnect", reason="client disconnected")
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
        last = await self._last_event(request_id)
        if last is None:
            raise RequestError(
                f"request_id: no request {request_id!r} (never sent, or its events expired)",
                _NOT_FOUND,
            )
        try:
            return ProgressEvent.FromString(last).HasField("done")
        except DecodeError:
            return False

    async def _last_event(self, request_id: str) -> bytes | None:
        try:
            last = await self._js.get_last_msg(subjects.EVENTS_STREAM, subjects.event(request_id))
        except NotFoundError:
            return None
        return last.data or b""

    async def _routed(
        self, request_id: str, api: str, start: Callable[[], Awaitable[None]]
    ) -> AsyncGenerator[ProgressEvent, None]:
        """The events of a request this replica sends, through its one subscription: routed
        here from before `start` publishes it, so none is missed."""
        with self._router.follow(request_id) as follower:

            async def receive(timeout_s: float) -> bytes | None:
                data = await follower.next(min(timeout_s, IDLE_CHECK_S))
                if data is None:  # silent a while: anything the subscription missed?
                    await self._router.catch_up(follower)
                return data

            await start()
            async for event in self._events(request_id, api, receive):
                yield event

    async def _replayed(self, request_id: str, api: str) -> AsyncGenerator[ProgressEvent, None]:
        """The events of an earlier request, from its first: an ordered consumer of its own
        replays the stream (watching is not the hot path; sending is)."""
        sub = await self._js.subscribe(
            subjects.event(request_id), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )

        async def receive(timeout_s: float) -> bytes | None:
            try:
                return (await sub.next_msg(timeout=min(timeout_s, IDLE_CHECK_S))).data
            except NatsTimeoutError:
                return None

        try:
            async for event in self._events(request_id, api, receive):
                yield event
        finally:
            await sub.unsubscribe()

    async def _events(
        self,
        request_id: str,
        api: str,
        receive: Callable[[float], Awaitable[bytes | None]],
    ) -> AsyncGenerator[ProgressEvent, None]:
        """Decoded events from `receive` (None: nothing within the time given), up to `done`."""
        OPEN_WAITS.labels(api).inc()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + REQUEST_TIMEOUT_S
            while (remaining := deadline - loop.time()) > 0:
                data = await receive(remaining)
                if data is None:
                    continue
                try:
                    event = ProgressEvent.FromString(data)
                except DecodeError:
                    log.warning("skipped an undecodable event of %s", request_id)
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

    async def validate(self, request: ChatRequest, owner: str) -> None:
        """Checks the request, and replaces each attachment with what the store holds for it
        (`NOT_FOUND` for a file that is not `owner`'s)."""
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
                field = f"messages[{i}].artifacts[{j}]"
                try:  # one read of the store tells both whose it is and what it is
                    artifact.CopyFrom(await self._check_artifact_owner(artifact.id, owner))
                except RequestError as e:
                    raise RequestError(f"{field}.{e}", _NOT_FOUND) from e


async def _not_found_as_refusal(parts: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A file's parts; one lost on the way (expired, damaged) is `NOT_FOUND` to the caller."""
    try:
        async for part in parts:
            yield part
    except ArtifactNotFound as e:
        raise RequestError(f"id: {e}", _NOT_FOUND) from e
