"""NATS plumbing shared by every stage: connection, streams, publishing, and the consumer loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import nats
from chorus.v1.messages_pb2 import ErrorCode
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
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
PULL_EXPIRES_S = 10.0  # how long one pull request waits on the server before it is renewed
PULL_HEARTBEAT_S = 2.0  # the server's word on a waiting pull when idle; two missed: it is gone
SHARED_PULL_EXPIRES_S = 1.0  # under shared slots: work a busy replica cannot start leaves soon
PULL_PENDING_MSGS = "Nats-Pending-Messages"  # on a status: how many of a pull will not come
DRAIN_S = 2.0  # how long a stopping consumer waits for the messages already on their way


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


class ConsumerLost(Exception):
    """The server called the consumer's pulls off (a deleted consumer, none there, a refused
    request): the loop binds it again, with a fresh inbox."""


class Consumer(Generic[M]):
    """Pulls, decodes and handles messages; acks only after the handler (and its publishes) end.

    Undecodable or invalid messages go to `chorus.deadletter.<stage>`; a handler that keeps
    failing is retried `max_deliver` times and then dead-lettered too: nothing redelivers forever.
    """

    def __init__(self, js: JetStreamContext, spec: ConsumerSpec[M]) -> None:
        self._js = js
        self._spec = spec
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()  # a delivery, a status, a free slot or a stop
        self._tasks: set[asyncio.Task[None]] = set()
        self.running = False

    async def run(self) -> None:
        """Consumes until stopped. A JetStream outage (disconnect, leader election, a stream
        or consumer gone with a restarted server) pauses it: it binds again and goes on."""
        try:
            while not self._stopping.is_set():
                try:
                    await self._bind()
                    OUTAGE.recovered()  # JetStream answered: the consumer is there again
                    self.running = True
                    await self._pull()
                except Exception as e:
                    if not unavailable(e) and not isinstance(e, NotFoundError | ConsumerLost):
                        raise
                    self.running = False
                    OUTAGE.failed(f"consume {self._spec.subject}", e)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), 1.0)
        finally:
            self.running = False
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _bind(self) -> None:
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

    async def _pull(self) -> None:
        """Keeps pull requests outstanding for as many messages as there are free slots, and
        handles each message as it arrives (nats.go's `Consume`): one request serves about
        half the slots, and a lone message never waits for a batch to fill. Returns on stop;
        raises `ConsumerLost` when the server calls the pulls off."""
        spec = self._spec
        nc = self._js._nc
        terms = _PullTerms.of(spec)
        pulls = _Pulls()
        next_subject = (
            f"{api.DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{subjects.WORK_STREAM}.{spec.durable}"
        )

        async def delivered(msg: Msg) -> None:
            if pulls.received(msg.headers or {}):
                OUTAGE.recovered()  # JetStream delivers again
                task = asyncio.create_task(self._process(msg))
                self._tasks.add(task)
                task.add_done_callback(self._finished)
            self._wake.set()

        # Pulled messages come to an inbox under the service's own prefix (roles.py).
        sub = await nc.subscribe(nc.new_inbox(), cb=delivered)
        try:
            while not self._stopping.is_set():
                self._wake.clear()  # before reading the state: a change after it wakes us
                if pulls.lost is not None:
                    raise ConsumerLost(f"a pull on {spec.durable} ended with {pulls.lost}")
                shared = spec.shared_slots
                slot_free = shared is None or not shared.locked()
                if (
                    shared is not None
                    and not slot_free
                    and not pulls.pending
                    and len(self._tasks) < spec.concurrency
                ):
                    # Wait for a slot to come free, then pull (the handler takes the slot).
                    # No second look: with other consumers waiting too, it would stay "locked"
                    # while they hand the slot round, and none would ever pull.
                    async with shared:
                        slot_free = True
                if ask := terms.to_ask(pulls.pending, len(self._tasks), slot_free):
                    await nc.publish(next_subject, terms.request(ask), reply=sub.subject)
                    pulls.asked(ask)
                # While a pull waits, the server sends a heartbeat when idle: silence means
                # the pull may be gone (a reconnect, a restarted server).
                quiet = pulls.quiet_s() if pulls.pending else None
                try:
                    async with asyncio.timeout(None if quiet is None else terms.silence_s - quiet):
                        await self._wake.wait()
                except TimeoutError:
                    # Ask the server: no consumer (NotFoundError) or no server binds again.
                    await self._js.consumer_info(subjects.WORK_STREAM, spec.durable)
                    if pulls.quiet_s() >= terms.silence_s:  # nothing came meanwhile either
                        pulls.pending = 0  # ask anew, on the same inbox
        finally:
            # Stale pulls find no inbox. On a stop, messages already on their way are still
            # handled; after a fault they come again when their ack wait ends.
            with contextlib.suppress(Exception):
                if self._stopping.is_set():
                    await asyncio.wait_for(sub.drain(), DRAIN_S)  # type: ignore[no-untyped-call]
                else:
                    await sub.unsubscribe()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()  # a slot came free

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

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


@dataclass(frozen=True)
class _PullTerms:
    """How a consumer asks for messages (decisions only): never more in hand or asked for
    than its slots, so work it cannot start stays in the stream for another replica."""

    slots: int
    batch: int  # the most one consumer has asked for and not yet received
    expires_s: float
    heartbeat_s: float | None

    @classmethod
    def of(cls, spec: ConsumerSpec[M]) -> _PullTerms:
        if spec.shared_slots is not None:
            # One at a time and briefly: the free slots belong to every consumer of the
            # process (a 408 at the expiry is the server's word, no heartbeat needed).
            return cls(spec.concurrency, 1, SHARED_PULL_EXPIRES_S, None)
        return cls(spec.concurrency, spec.concurrency, PULL_EXPIRES_S, PULL_HEARTBEAT_S)

    @property
    def silence_s(self) -> float:
        """How long a waiting pull may go unheard: two heartbeats, or past its expiry."""
        return 2 * self.heartbeat_s if self.heartbeat_s else self.expires_s + 1.0

    def to_ask(self, pending: int, running: int, slot_free: bool) -> int:
        """How many more messages to ask for: every free one, once about half are free
        (or nothing is asked for), so one request serves several messages."""
        free = min(self.batch - pending, self.slots - pending - running)
        if free <= 0 or not slot_free:
            return 0
        return free if pending == 0 or free >= (self.batch + 1) // 2 else 0

    def request(self, batch: int) -> bytes:
        """The body of a `CONSUMER.MSG.NEXT` request for `batch` messages."""
        body = {"batch": batch, "expires": int(self.expires_s * 1e9)}
        if self.heartbeat_s:
            body["idle_heartbeat"] = int(self.heartbeat_s * 1e9)
        return json.dumps(body).encode()


@dataclass
class _Pulls:
    """What a consumer's outstanding pull requests still owe it."""

    pending: int = 0  # messages asked for, neither delivered nor called off by a status
    lost: str | None = None  # why the pulls can no longer be trusted
    last_heard: float = field(default_factory=time.monotonic)

    def asked(self, batch: int) -> None:
        self.pending += batch
        self.heard()

    def received(self, headers: dict[str, str]) -> bool:
        """Takes in one delivery to the inbox; True: a message to handle, not a status."""
        self.heard()
        status = headers.get(api.Header.STATUS)
        if status is None:
            self.pending = max(0, self.pending - 1)
            return True
        ended = _ended_by(status, headers)
        if ended is None:
            self.lost = f"{status} {headers.get(api.Header.DESCRIPTION, '').strip()}"
        else:
            self.pending = max(0, self.pending - ended)
        return False

    def heard(self) -> None:
        self.last_heard = time.monotonic()

    def quiet_s(self) -> float:
        return time.monotonic() - self.last_heard


def _ended_by(status: str, headers: dict[str, str]) -> int | None:
    """How many asked-for messages a status says will not come: 0 for a heartbeat, the
    pull's remainder when one expired (408) or a leader changed (409, with the count). None
    when the pulls are void: the consumer was deleted (409), is not there (503), or a
    request was refused (409 Exceeded MaxWaiting, 400)."""
    if status == api.StatusCode.CONTROL_MESSAGE:
        return 0
    pending = headers.get(PULL_PENDING_MSGS)
    if status in (api.StatusCode.REQUEST_TIMEOUT, api.StatusCode.CONFLICT) and pending:
        with contextlib.suppress(ValueError):
            return int(pending)
    return None


async def _quietly(reply: Awaitable[None]) -> None:
    """Acks and naks are fire-and-forget: one lost to a disconnect means a redelivery."""
    try:
        await reply
    except Exception as e:
        if not unavailable(e):
            raise
        OUTAGE.failed("ack", e)
