"""The front door's one subscription per replica (`EventRouter`) on a real NATS server: each
waiting call gets exactly its own events, once each and in order, also across a NATS restart."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from chorus.v1.messages_pb2 import ChatResponse, ProgressEvent, TaskResult
from nats.js import JetStreamContext

from services.common import bus, events, subjects
from services.gateway.router import EventRouter, Follower
from tests.fault.harness import NatsNodes

REQUESTS = 40
EVENTS_EACH = 5  # then `done`


def _event(request_id: str, n: int) -> tuple[ProgressEvent, str]:
    event = events.new_event(request_id)
    event.task_finished.CopyFrom(TaskResult(request_id=request_id, task_id=n))
    return event, f"{request_id}.{n}.finished"


def _done(request_id: str) -> tuple[ProgressEvent, str]:
    event = events.new_event(request_id)
    event.done.CopyFrom(ChatResponse(request_id=request_id, answer=f"answer of {request_id}"))
    return event, f"{request_id}.done"


async def _publish(js: JetStreamContext, sent: tuple[ProgressEvent, str]) -> None:
    """Acked, so the stream holds each event once this returns, whatever the test does next."""
    event, msg_id = sent
    await bus.publish(js, subjects.event(event.request_id), event, msg_id=msg_id)


async def _until_done(
    follower: Follower, router: EventRouter, idle_catch_up: bool = True
) -> list[ProgressEvent]:
    """What the front door's loop does: read, and catch up when nothing comes for a while."""
    received: list[ProgressEvent] = []
    while not received or not received[-1].HasField("done"):
        data = await follower.next(1.0)
        if data is None:
            if idle_catch_up:
                await router.catch_up(follower)
        else:
            received.append(ProgressEvent.FromString(data))
    return received


def _what(event: ProgressEvent) -> tuple[str, int | str]:
    if event.HasField("done"):
        return (event.request_id, "done")
    return (event.request_id, event.task_finished.task_id)


@pytest_asyncio.fixture
async def bus_pair(nats_url: str) -> AsyncIterator[tuple[EventRouter, JetStreamContext]]:
    """A started router on one connection, and a publisher's JetStream on another."""
    gateway, publisher = await bus.connect(nats_url, "gateway"), await bus.connect(nats_url, "p")
    js = publisher.jetstream()
    await bus.ensure_streams(js)
    router = EventRouter(gateway, gateway.jetstream())
    await router.start()
    yield router, js
    await router.stop()
    await gateway.close()
    await publisher.close()


async def test_concurrent_requests_each_get_exactly_their_own_events(
    bus_pair: tuple[EventRouter, JetStreamContext],
) -> None:
    router, js = bus_pair
    ids = [f"r{i}" for i in range(REQUESTS)]
    with contextlib.ExitStack() as stack:
        followers = {rid: stack.enter_context(router.follow(rid)) for rid in ids}
        others = [_event("not-followed", n) for n in range(EVENTS_EACH)]
        # Interleaved across requests, each event twice (a publish repeated after a lost ack),
        # with events of a request nobody here waits on among them.
        for n in range(EVENTS_EACH):
            await bus.pipelined(_publish(js, _event(rid, n)) for rid in ids for _ in range(2))
            await _publish(js, others[n])
        await bus.pipelined(_publish(js, _done(rid)) for rid in ids)
        received = await asyncio.gather(*(_until_done(f, router) for f in followers.values()))
    for rid, got in zip(ids, received, strict=True):
        assert [_what(e) for e in got] == [*((rid, n) for n in range(EVENTS_EACH)), (rid, "done")]
        assert got[-1].done.answer == f"answer of {rid}"


async def test_a_catch_up_brings_what_the_subscription_missed_once_and_in_order(
    bus_pair: tuple[EventRouter, JetStreamContext],
) -> None:
    router, js = bus_pair
    for n in range(3):  # published before anyone followed: the subscription dropped them
        await _publish(js, _event("late", n))
    with router.follow("late") as follower:
        await _publish(js, _event("late", 3))  # stored, and seen live
        await router.catch_up(follower, "reconnect")
        await router.catch_up(follower, "reconnect")  # a second pass adds nothing
        await _publish(js, _done("late"))
        got = await _until_done(follower, router)
    assert [_what(e) for e in got] in (
        [("late", 3), ("late", 0), ("late", 1), ("late", 2), ("late", "done")],  # live first
        [*(("late", n) for n in range(4)), ("late", "done")],  # the catch-up read 3 first
    )


async def test_an_idle_check_reads_the_history_only_when_its_last_event_was_missed(
    bus_pair: tuple[EventRouter, JetStreamContext],
) -> None:
    router, js = bus_pair
    with router.follow("slow") as follower:
        for n in range(3):  # seen live, and stored
            await _publish(js, _event("slow", n))
        assert all([await follower.next(5.0) for _ in range(3)])
        await router.catch_up(follower)  # a slow task: nothing missed, nothing read again
        assert follower.next_seq == 1 and await follower.next(0.1) is None
        router._followers.pop("slow")  # the subscription misses the next event
        await _publish(js, _event("slow", 3))
        router._followers["slow"] = follower
        await router.catch_up(follower)  # its last event is unseen: the history is read
        got = await follower.next(1.0)
    assert got is not None and _what(ProgressEvent.FromString(got)) == ("slow", 3)
    assert follower.next_seq > 1


class Link:
    """A TCP relay between the gateway and NATS that the test cuts and mends: while cut, the
    gateway is disconnected for certain, whatever the timing."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._open = True
        self._writers: list[asyncio.StreamWriter] = []
        self._relays: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.url = f"nats://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def cut(self) -> None:
        self._open = False
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    def mend(self) -> None:
        self._open = True

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
        if self._relays:  # each ends with its closed connections (a cancel would be logged)
            await asyncio.wait(self._relays, timeout=10)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._open:
            writer.close()
            return
        relay = asyncio.current_task()
        assert relay is not None
        self._relays.add(relay)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream)
            self._writers += [writer, up_writer]
            await asyncio.gather(
                self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
            )
        finally:
            self._relays.discard(relay)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


def test_events_sent_across_a_nats_restart_reach_the_waiting_call(tmp_path: Path) -> None:
    nodes = NatsNodes(tmp_path / "nats", 1)
    nodes.start()
    try:
        asyncio.run(_across_a_restart(nodes))
    finally:
        nodes.close()


async def _across_a_restart(nodes: NatsNodes) -> None:
    link = Link(nodes.nodes[0].port)
    await link.start()
    gateway = await bus.connect(link.url, "gateway")
    await bus.ensure_streams(gateway.jetstream())
    router = EventRouter(gateway, gateway.jetstream())
    await router.start()
    try:
        with router.follow("r1") as follower:
            publisher = await bus.connect(nodes.url, "before")
            await _publish(publisher.jetstream(), _event("r1", 0))
            await publisher.close()
            link.cut()  # the gateway is cut off, and stays so until mended
            await asyncio.to_thread(nodes.restart, 0)
            # The services reconnect first and go on: what they publish now never reaches
            # the gateway's subscription; it must come from the stream.
            publisher = await bus.connect(nodes.url, "after")
            for n in range(1, 3):
                await _publish(publisher.jetstream(), _event("r1", n))
            await _publish(publisher.jetstream(), _done("r1"))
            await publisher.close()
            assert not gateway.is_connected
            link.mend()
            # No catch-up when idle here: the one on reconnect alone must bring them.
            got = await asyncio.wait_for(_until_done(follower, router, False), 120)
    finally:
        await router.stop()
        await gateway.close()
        await link.close()
    assert [_what(e) for e in got] == [("r1", 0), ("r1", 1), ("r1", 2), ("r1", "done")]
