"""The front door's events: one subscription per gateway replica, routed by request id.

A request's events reach the call waiting on them through one core NATS subscription on
`chorus.event.>`, taken when the gateway starts (before any request it sends, so none of their
events can come before it), and a queue per open request; an event of a request this replica
does not wait on is dropped before it is decoded. No JetStream consumer per request.

A core subscription sees each publish, not what the stream kept, and nothing while cut off:

- a publish repeated after a lost ack arrives twice (the stream drops the copy by its message
  id, the subscription does not), and so does an event seen live and again in a catch-up:
  every event carries a message id, and a follower passes each id once;
- what was published while this replica was disconnected (a NATS restart, a lost link) never
  arrives: on reconnect, every open request is caught up from `CHORUS_EVENTS` once, from where
  its last catch-up stopped, its live events held meanwhile so the stream's order is kept;
- a request that hears nothing for `IDLE_CHECK_S` is caught up too, which covers the rest (an
  event routed before the subscription was back but stored after the catch-up read, a route
  lost with a cluster node, a slow-consumer drop).

Every replica receives every event (a core subscription cannot select by owner): an event of
another replica's request costs its parsing and one dict lookup, no decode, about 10 µs of
CPU. With the two replicas `deploy/` runs and the capacity model's 1,000 requests/s (~10k
events/s) that is ~5k foreign events/s per replica, about 5 % of a core; at 10,000 requests/s
`CHORUS_EVENTS` must be partitioned by a token in its subjects anyway (deploy/README), and then
a replica subscribes to the partitions its requests are in.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Iterator

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import Counter

from services.common import bus, subjects
from services.common.outage import OUTAGE, retrying, unavailable

log = logging.getLogger(__name__)
IDLE_CHECK_S = 5.0  # a request silent this long is caught up from the stream
_EVENT_PREFIX = subjects.event("")
CAUGHT_UP = Counter(
    "chorus_gateway_events_caught_up_total",
    "Events a request's caller got from the stream, not its subscription (missed while "
    "disconnected, or stored after a catch-up read), by why the catch-up ran.",
    ["reason"],
)


class Follower:
    """The events of one request on their way to its caller: each message id once, in order."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.next_seq = 1  # where the next catch-up reads the stream from
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._seen: set[str] = set()
        self._held: list[tuple[str, bytes]] | None = None  # live events during a catch-up

    @property
    def catching_up(self) -> bool:
        return self._held is not None

    def offer(self, msg_id: str, data: bytes) -> None:
        """A live event: passed on, or held until the catch-up under way ends."""
        if self._held is not None:
            self._held.append((msg_id, data))
        else:
            self._pass(msg_id, data)

    def hold(self) -> None:
        self._held = []

    def stored(self, msg_id: str, data: bytes) -> bool:
        """An event read from the stream in a catch-up; whether it was new."""
        return self._pass(msg_id, data)

    def seen(self, msg_id: str) -> bool:
        return msg_id in self._seen

    def release(self) -> None:
        held, self._held = self._held or [], None
        for msg_id, data in held:
            self._pass(msg_id, data)

    async def next(self, timeout_s: float) -> bytes | None:
        """The next event's bytes, or None after `timeout_s` without one."""
        if not self._queue.empty():
            return self._queue.get_nowait()
        try:
            async with asyncio.timeout(timeout_s):  # no task per wait, as `wait_for`'s
                return await self._queue.get()
        except TimeoutError:
            return None

    def _pass(self, msg_id: str, data: bytes) -> bool:
        if msg_id:  # every Chorus event has one; a message without one cannot be deduplicated
            if msg_id in self._seen:
                return False
            self._seen.add(msg_id)
        self._queue.put_nowait(data)
        return True


class EventRouter:
    """One replica's subscription to every request's events, and who waits on which."""

    def __init__(self, nc: NATS, js: JetStreamContext) -> None:
        self._nc = nc
        self._js = js
        self._followers: dict[str, Follower] = {}
        self._sub: Subscription | None = None
        self._catching_up: set[asyncio.Task[None]] = set()
        self._undo_on_reconnect: Callable[[], None] | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(f"{_EVENT_PREFIX}>", cb=self._route)
        await self._nc.flush()  # the server has it: a request sent after this misses nothing
        self._undo_on_reconnect = OUTAGE.on_reconnect(self._reconnected)

    async def stop(self) -> None:
        if self._undo_on_reconnect is not None:
            self._undo_on_reconnect()
        for task in self._catching_up:
            task.cancel()
        await asyncio.gather(*self._catching_up, return_exceptions=True)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    @contextlib.contextmanager
    def follow(self, request_id: str) -> Iterator[Follower]:
        """Routes `request_id`'s events to the follower until the block ends; enter it before
        sending the request."""
        follower = Follower(request_id)
        self._followers[request_id] = follower
        try:
            yield follower
        finally:
            if self._followers.get(request_id) is follower:
                del self._followers[request_id]

    async def catch_up(self, follower: Follower, reason: str = "idle") -> None:
        """Passes the request's events the stream holds past the last catch-up, in the stream's
        order; live events that come meanwhile follow them. One at a time per follower."""
        if follower.catching_up:
            return
        follower.hold()
        try:
            # A request that is only slow (a long task) is checked often: one read of its last
            # stored event tells whether anything came that the subscription did not bring.
            if reason == "idle" and await self._last_stored_seen(follower):
                return
            await self._read_stored(follower, reason)
        except Exception as e:
            if not unavailable(e):
                raise
            log.warning("could not catch up on a request's events (will retry): %s", e)
        finally:
            follower.release()

    async def _last_stored_seen(self, follower: Follower) -> bool:
        read = functools.partial(
            self._js.get_last_msg, subjects.EVENTS_STREAM, subjects.event(follower.request_id)
        )
        try:
            msg = await retrying("check a request's last event", read)
        except NotFoundError:
            return True  # nothing stored yet
        return follower.seen((msg.headers or {}).get(bus.MSG_ID, ""))

    async def _read_stored(self, follower: Follower, reason: str) -> None:
        subject = subjects.event(follower.request_id)
        while True:
            seq = follower.next_seq
            try:
                read = functools.partial(
                    self._js.get_msg, subjects.EVENTS_STREAM, seq, subject=subject, next=True
                )
                msg = await retrying("catch up on events", read)
            except NotFoundError:
                return
            follower.next_seq = (msg.seq or seq) + 1
            if follower.stored((msg.headers or {}).get(bus.MSG_ID, ""), msg.data or b""):
                CAUGHT_UP.labels(reason).inc()
                log.info("an event the subscription missed came from the stream (%s)", reason)

    async def _route(self, msg: Msg) -> None:
        follower = self._followers.get(msg.subject[len(_EVENT_PREFIX) :])
        if follower is not None:
            follower.offer((msg.headers or {}).get(bus.MSG_ID, ""), msg.data)

    def _reconnected(self) -> None:
        """Catches up every open request: what was published while cut off never came."""
        for follower in list(self._followers.values()):
            task = asyncio.create_task(self.catch_up(follower, "reconnect"))
            self._catching_up.add(task)
            task.add_done_callback(self._catching_up.discard)
