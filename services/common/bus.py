"""NATS plumbing shared by every stage: connection, streams, publishing, and the consumer loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

import nats
from chorus.v1.messages_pb2 import ErrorCode
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from services.common import subjects, tracing
from services.common.outage import OUTAGE, retrying, unavailable
from services.common.settings import DEFAULT_STREAM_MAX_BYTES, NatsAuth
from services.common.telemetry import BUS_REFUSED, MESSAGES, STAGE_SECONDS, request_id_var

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

MSG_ID = "Nats-Msg-Id"
REQUEST_ID = "Chorus-Request-Id"
ERROR_HEADER = "Chorus-Error"
TRACEPARENT = "traceparent"
EVENT_RETENTION_S = 3600.0
FETCH_TIMEOUT_S = 1.0  # how long one pull waits on an idle stream
BACKLOG_FETCH_TIMEOUT_S = 0.05  # how long a pull for messages known to be waiting may take
IDLE_CHECK_FETCHES = 5  # empty fetches between checks that the consumer exists


# Bounds on what the bus may hold (settings CHORUS_STREAM_MAX_BYTES): a flood of requests or
# events cannot fill the servers' disks. The work stream refuses new messages when full (work
# is never dropped); the others drop their oldest.
KV_MAX_BYTES = 64 * 1024**2  # each key-value bucket: small entries with a TTL
MAX_PAYLOAD_BYTES = 1_000_000  # NATS's default max_payload is 1 MiB; headers need the rest


class InvalidMessage(ValueError):
    """A message decoded but cannot be processed; it goes to the dead-letter subject."""


class PermanentError(Exception):
    """A failure that retrying cannot fix: the message is given up on at once."""

    code: ErrorCode.ValueType = ErrorCode.ERROR_CODE_INTERNAL


class PayloadTooLarge(PermanentError):
    code = ErrorCode.ERROR_CODE_PAYLOAD_TOO_LARGE


async def connect(url: str, name: str, auth: NatsAuth | None = None) -> NATS:
    """Connects with unlimited reconnects, so a NATS restart is a pause, not a crash; `auth`
    is the service's role on a locked bus.

    `url` may list several servers, comma-separated (the nodes of a cluster)."""
    auth = auth or NatsAuth()

    async def on_error(e: Exception) -> None:
        text = str(e)
        if "permissions violation" in text:
            # The request that met it times out (and is retried as an outage would be).
            BUS_REFUSED.labels("subscribe" if "subscription" in text else "publish").inc()
            log.error("the bus refused %s: %s (credentials of another role?)", name, text)
            return
        log.warning("nats error: %s", e)

    async def on_disconnect() -> None:
        log.warning("disconnected from nats")

    async def on_reconnect() -> None:
        log.info("reconnected to nats")
        OUTAGE.reconnected()

    return await nats.connect(
        [server.strip() for server in url.split(",")],
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        connect_timeout=5,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        user=auth.user,
        password=auth.password,
        user_credentials=auth.creds,
        tls=_tls_context(auth),
        # Replies, pulled messages and key reads come to inboxes under this prefix, which only
        # this role may subscribe to on a locked bus (services/common/roles.py).
        **({"inbox_prefix": auth.inbox_prefix} if auth.inbox_prefix else {}),
    )


def _tls_context(auth: NatsAuth) -> ssl.SSLContext | None:
    """A context trusting `tls_ca` (and showing a client certificate); None: the defaults (a
    `tls://` URL then trusts the system's CAs)."""
    if auth.tls_ca is None and auth.tls_cert is None:
        return None
    context = ssl.create_default_context(cafile=auth.tls_ca)
    if auth.tls_cert is not None:
        context.load_cert_chain(auth.tls_cert, auth.tls_key)
    return context


async def ensure_streams(
    js: JetStreamContext,
    replicas: int = 1,
    max_bytes: int = DEFAULT_STREAM_MAX_BYTES,
    *,
    update: bool = True,
) -> None:
    """Creates the streams, each bounded to `max_bytes`; safe to call from every service at
    start. A stream that exists with other settings is updated to these if `update`, else
    kept as it is (on a locked bus only the selector may change them)."""
    configs = [
        StreamConfig(
            name=subjects.WORK_STREAM,
            subjects=subjects.WORK_SUBJECTS,
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=120.0,
            max_msg_size=1024 * 1024,
            max_bytes=max_bytes,
            discard=DiscardPolicy.NEW,
        ),
        StreamConfig(
            name=subjects.EVENTS_STREAM,
            subjects=subjects.EVENTS_SUBJECTS,
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_age=EVENT_RETENTION_S,  # replayable for a while: late subscribers miss nothing
            duplicate_window=120.0,
            max_bytes=max_bytes,
        ),
        StreamConfig(
            name=subjects.DEADLETTER_STREAM,
            subjects=subjects.DEADLETTER_SUBJECTS,
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_age=7 * 24 * 3600.0,
            max_bytes=max_bytes,
        ),
    ]
    for config in configs:
        try:
            await retrying("create stream", functools.partial(js.add_stream, config))
        except BadRequestError as e:
            if not update:
                log.debug("stream %s exists with other settings, kept: %s", config.name, e)
                continue
            await retrying("update stream", functools.partial(js.update_stream, config))


async def publish(
    js: JetStreamContext, subject: str, message: Message, *, msg_id: str | None = None
) -> None:
    """Publishes and waits for the stream's ack; `msg_id` makes a redelivered publish a no-op."""
    data, headers = _outgoing(subject, message, msg_id)
    with tracing.publishing(subject, headers):  # adds `traceparent`
        await retrying("publish", lambda: js.publish(subject, data, headers=headers))


async def publish_unacked(nc: NATS, subject: str, message: Message, *, msg_id: str) -> None:
    """Publishes without waiting for the stream's ack: a core publish, handed to the connection
    and written with its next flush (no round trip, no reply future). A stream on `subject`
    stores it and drops a repeated `msg_id` as `publish` would; if JetStream cannot take it
    then (a server going down, an election), nothing says so. Messages of one connection keep
    their order on the server, acked or not. Raises only when the connection cannot take it
    (closed, or its buffer for a reconnect full)."""
    data, headers = _outgoing(subject, message, msg_id)
    with tracing.publishing(subject, headers):
        await nc.publish(subject, data, headers=headers)


def _outgoing(subject: str, message: Message, msg_id: str | None) -> tuple[bytes, dict[str, str]]:
    """A message's bytes, checked against the size limit, and its headers."""
    data = message.SerializeToString()
    if len(data) > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(
            f"the {type(message).__name__} for {subject} would be {len(data)} bytes, over the "
            f"{MAX_PAYLOAD_BYTES}-byte message limit; send long inputs as files"
        )
    headers = {REQUEST_ID: request_id_var.get()}
    if msg_id:
        headers[MSG_ID] = msg_id
    return data, headers


async def pipelined(sends: Iterable[Awaitable[object]]) -> None:
    """Runs publishes together: each is sent in the order given (one connection keeps that
    order on the server), and their acks are awaited at once instead of one after another.
    Raises the first failure once all have ended; a redelivery sends again, deduplicated."""
    tasks = [asyncio.ensure_future(send) for send in sends]
    if not tasks:
        return
    await asyncio.wait(tasks)
    errors = [task.exception() for task in tasks]  # each read, so none is logged as unseen
    if first := next((e for e in errors if e is not None), None):
        raise first


async def open_key_value(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """Creates the bucket (bounded to `KV_MAX_BYTES` unless the config says otherwise), or
    binds to it as it is when it exists with other settings.

    Also how a bucket that vanished with a restarted server comes back."""
    if config.max_bytes is None or config.max_bytes <= 0:
        config.max_bytes = KV_MAX_BYTES
    try:
        return await retrying("create bucket", lambda: js.create_key_value(config=config))
    except BadRequestError as e:
        log.warning("bucket %s exists with other settings, which are kept: %s", config.bucket, e)
        return await retrying("open bucket", lambda: js.key_value(config.bucket))


@dataclass(frozen=True)
class ConsumerSpec(Generic[M]):
    """One durable pull consumer: which subject, which message type, what to do with it."""

    stage: str
    subject: str
    durable: str
    message_type: type[M]
    handle: Callable[[M], Awaitable[None]]
    # Called once when a message is given up on, so the request fails visibly instead of hanging.
    give_up: Callable[[M, Exception], Awaitable[None]]
    concurrency: int = 8
    max_deliver: int = 3
    # Deliveries that met an unreachable JetStream (an election, a restart) do not count
    # towards `max_deliver`: such a message is put back until this many deliveries in all.
    max_redeliver: int = 30
    ack_wait_s: float = 30.0
    # Shared by the consumers of one process that draw on the same capacity (an executor's
    # lanes): a consumer fetches only while a slot is free, so work it could not start yet
    # stays in the stream for another replica instead of waiting here. (A fetch already
    # waiting when the last slot fills may still take one message: one per consumer at most.)
    shared_slots: asyncio.Semaphore | None = None


class Consumer(Generic[M]):
    """Pulls, decodes and handles messages; acks only after the handler (and its publishes) end.

    Undecodable or invalid messages go to `chorus.deadletter.<stage>`; a handler that keeps
    failing is retried `max_deliver` times and then dead-lettered too: nothing redelivers forever.
    """

    def __init__(self, js: JetStreamContext, spec: ConsumerSpec[M]) -> None:
        self._js = js
        self._spec = spec
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.running = False

    async def run(self) -> None:
        """Consumes until stopped. A JetStream outage (disconnect, leader election, a stream
        or consumer gone with a restarted server) pauses it: it binds again and goes on."""
        try:
            while not self._stopping.is_set():
                try:
                    sub = await self._bind()
                    OUTAGE.recovered()  # JetStream answered: the consumer is there again
                    self.running = True
                    await self._pull(sub)
                except Exception as e:
                    if not unavailable(e) and not isinstance(e, NotFoundError):
                        raise
                    self.running = False
                    OUTAGE.failed(f"consume {self._spec.subject}", e)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), 1.0)
        finally:
            self.running = False
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _bind(self) -> JetStreamContext.PullSubscription:
        spec = self._spec
        config = ConsumerConfig(
            # Named, so the create subject carries the filter (`CONSUMER.CREATE.<stream>.
            # <name>.<filter>`): what a locked bus lets each role create (roles.py).
            name=spec.durable,
            durable_name=spec.durable,
            filter_subject=spec.subject,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=spec.ack_wait_s,
            # The handler dead-letters itself; one spare covers a crash mid-way.
            max_deliver=spec.max_redeliver + 1,
            deliver_policy=DeliverPolicy.ALL,
            max_ack_pending=max(spec.concurrency * 4, 64),
        )
        try:  # create, or update the durable when its settings changed
            await self._js.add_consumer(subjects.WORK_STREAM, config)
        except BadRequestError as e:
            log.warning("consumer %s keeps its earlier settings: %s", spec.durable, e)
        return await self._js.pull_subscribe_bind(durable=spec.durable, stream=subjects.WORK_STREAM)

    async def _pull(self, sub: JetStreamContext.PullSubscription) -> None:
        spec = self._spec
        idle = 0
        backlog = 0  # messages the consumer held after the last one fetched
        try:
            while not self._stopping.is_set():
                if len(self._tasks) >= spec.concurrency:
                    await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
                    continue
                if spec.shared_slots is not None and spec.shared_slots.locked():
                    # Wait for a slot to come free, then fetch (the handler takes the slot).
                    # No second look: with other consumers waiting too, it would stay "locked"
                    # while they hand the slot round, and none would ever fetch.
                    async with spec.shared_slots:
                        pass
                # One at a time until a backlog shows, then as many as are waiting and fit:
                # nats-py's fetch of several can hold a lone message back for its whole wait
                # (when a late status of an earlier pull answers its first request), so it is
                # asked only for messages known to be there, and briefly.
                batch = min(backlog, self._free_slots())
                try:
                    if batch > 1:
                        msgs = await sub.fetch(batch, timeout=BACKLOG_FETCH_TIMEOUT_S)
                    else:
                        msgs = await sub.fetch(1, timeout=FETCH_TIMEOUT_S)
                except (TimeoutError, NatsTimeoutError):
                    if batch > 1:
                        backlog = 0  # taken by other replicas meanwhile
                        continue
                    idle += 1
                    if idle % IDLE_CHECK_FETCHES == 0:
                        # A pull on a consumer that was deleted (its stream gone with a
                        # restarted server) only ever times out: ask that it still exists.
                        await sub.consumer_info()
                    continue
                idle = 0
                OUTAGE.recovered()
                backlog = _pending_after(msgs)
                for msg in msgs:
                    task = asyncio.create_task(self._process(msg))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def _free_slots(self) -> int:
        """How many messages one fetch may take: every free slot, so a backlog comes in one
        round trip. Under shared slots one at a time: the free count belongs to every
        consumer of the process, and work it could not start must stay in the stream for
        another replica."""
        if self._spec.shared_slots is not None:
            return 1
        return max(1, self._spec.concurrency - len(self._tasks))

    def stop(self) -> None:
        self._stopping.set()

    async def _process(self, msg: Msg) -> None:
        spec = self._spec
        started = time.perf_counter()
        traceparent = (msg.headers or {}).get(TRACEPARENT)
        with tracing.handling(spec.stage, msg.subject, traceparent):
            try:
                await self._decode_and_handle(msg)
            finally:
                STAGE_SECONDS.labels(spec.stage).observe(time.perf_counter() - started)

    async def _decode_and_handle(self, msg: Msg) -> None:
        spec = self._spec
        try:
            message = spec.message_type.FromString(msg.data)
        except DecodeError as e:
            await self._dead_letter(msg, f"undecodable {spec.message_type.__name__}: {e}")
            return
        request_id = str(getattr(message, "request_id", ""))
        if not subjects.valid_request_id(request_id):
            await self._dead_letter(msg, f"invalid request_id {request_id[:80]!r}")
            return
        request_id_var.set(request_id)
        tracing.annotate(request_id=request_id)
        await self._handle(msg, message)

    async def _handle(self, msg: Msg, message: M) -> None:
        spec = self._spec
        heartbeat = asyncio.create_task(self._keep_alive(msg))
        try:
            await spec.handle(message)
        except InvalidMessage as e:
            await self._dead_letter(msg, f"invalid {spec.message_type.__name__}: {e}")
            return
        except Exception as e:
            delivered = msg.metadata.num_delivered
            if unavailable(e) and delivered < spec.max_redeliver:
                OUTAGE.failed(f"handle {spec.stage}", e)
                MESSAGES.labels(spec.stage, "retry").inc()
                await _quietly(msg.nak(delay=min(2.0 * delivered, 10.0)))
                return
            if delivered < spec.max_deliver and not isinstance(e, PermanentError):
                log.warning("%s failed (attempt %d), will retry: %s", spec.stage, delivered, e)
                MESSAGES.labels(spec.stage, "retry").inc()
                await _quietly(msg.nak(delay=0.5 * delivered))
                return
            log.exception("%s gave up after %d attempt(s)", spec.stage, delivered)
            try:
                await spec.give_up(message, e)
            except Exception:  # still dead-letter and ack: never leave it to redeliver forever
                log.exception("%s could not report the failure", spec.stage)
            await self._dead_letter(msg, f"gave up after {delivered} attempt(s): {e}")
            return
        finally:
            heartbeat.cancel()
        # An ack lost to an outage is a redelivery later, which every stage takes in its stride.
        await _quietly(msg.ack())
        MESSAGES.labels(spec.stage, "ok").inc()

    async def _keep_alive(self, msg: Msg) -> None:
        """Tells JetStream a long handler is still working, so it is not redelivered meanwhile."""
        while True:
            await asyncio.sleep(self._spec.ack_wait_s / 3)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        stage = self._spec.stage
        log.error("dead-lettered a message from %s: %s", msg.subject, reason)
        MESSAGES.labels(stage, "dead_letter").inc()
        headers = {ERROR_HEADER: reason[:512], "Chorus-Subject": msg.subject}
        subject = subjects.deadletter(stage)
        await retrying("dead-letter", lambda: self._js.publish(subject, msg.data, headers=headers))
        await _quietly(msg.ack())


def _pending_after(msgs: list[Msg]) -> int:
    """How many messages the consumer still held when the last of `msgs` was delivered."""
    try:
        return int(msgs[-1].metadata.num_pending or 0) if msgs else 0
    except Exception:  # not a JetStream delivery (no metadata in its reply subject)
        return 0


async def _quietly(reply: Awaitable[None]) -> None:
    """Acks and naks are fire-and-forget: one lost to a disconnect means a redelivery."""
    try:
        await reply
    except Exception as e:
        if not unavailable(e):
            raise
        OUTAGE.failed("ack", e)
