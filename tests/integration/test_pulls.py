"""The consumer loop keeps a pull for its free slots outstanding and handles each message as it
arrives: a backlog comes in a few requests, a lone message never waits for a batch, work it has
no slot for stays in the stream for another replica, and a deleted consumer comes back (real
NATS)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import nats
import pytest
from chorus.v1.messages_pb2 import TaskResult
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.common import bus, subjects

CONCURRENCY = 4


def _consumer(
    js: JetStreamContext,
    durable: str,
    handle: Callable[[TaskResult], Awaitable[None]],
    concurrency: int = CONCURRENCY,
) -> bus.Consumer[TaskResult]:
    spec = bus.ConsumerSpec(
        stage="selector",
        subject=subjects.RESULT,
        durable=durable,
        message_type=TaskResult,
        handle=handle,
        give_up=lambda message, error: asyncio.sleep(0),
        concurrency=concurrency,
    )
    return bus.Consumer(js, spec)


@asynccontextmanager
async def _running(*consumers: bus.Consumer[TaskResult]) -> AsyncIterator[None]:
    runs = [asyncio.create_task(consumer.run()) for consumer in consumers]
    try:
        yield
    finally:
        for consumer in consumers:
            consumer.stop()
        await asyncio.wait_for(asyncio.gather(*runs), 30)


async def _pull_requests(nats_url: str, durable: str) -> tuple[NATS, list[int]]:
    """The batch of every pull request sent for `durable`, as the server sees them."""
    watcher = await nats.connect(nats_url)
    batches: list[int] = []

    async def seen(msg: Msg) -> None:
        batches.append(json.loads(msg.data)["batch"])

    await watcher.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{subjects.WORK_STREAM}.{durable}", cb=seen)
    await watcher.flush()
    return watcher, batches


async def _until(check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_a_burst_comes_in_few_pulls_never_over_the_slots(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await bus.ensure_streams(js)
    watcher, batches = await _pull_requests(nats_url, "burst")
    for i in range(20):  # waiting before the consumer starts: a burst
        await bus.publish(js, subjects.RESULT, TaskResult(request_id=f"r-{i}"))
    running, most, handled = 0, 0, []

    async def handle(result: TaskResult) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.05)
        running -= 1
        handled.append(result.request_id)

    async with _running(_consumer(js, "burst", handle)):
        await _until(lambda: len(handled) == 20)
        info = await js.consumer_info(subjects.WORK_STREAM, "burst")
    await watcher.close()
    await nc.close()
    assert sorted(handled) == sorted(f"r-{i}" for i in range(20))
    assert most <= CONCURRENCY  # never more in hand than its slots
    assert batches[0] == CONCURRENCY and max(batches) <= CONCURRENCY
    assert len(batches) < 20  # fewer requests than messages
    assert info.num_ack_pending == 0 and info.num_pending == 0  # each acked after its handler


async def test_a_lone_message_is_handled_while_a_pull_for_many_waits(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pull that held a lone message back for its batch would hold it a minute here.
    monkeypatch.setattr(bus, "PULL_EXPIRES_S", 60.0)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await bus.ensure_streams(js)
    watcher, batches = await _pull_requests(nats_url, "lone")
    arrived = asyncio.Event()

    async def handle(result: TaskResult) -> None:
        arrived.set()

    async with _running(_consumer(js, "lone", handle)):
        await _until(lambda: batches == [CONCURRENCY])  # a pull for every slot waits
        await bus.publish(js, subjects.RESULT, TaskResult(request_id="lone"))
        await asyncio.wait_for(arrived.wait(), 20)  # not the minute
    await watcher.close()
    await nc.close()
    assert batches == [CONCURRENCY]  # one message did not need another request


async def test_work_beyond_the_slots_is_left_for_another_replica(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await bus.ensure_streams(js)
    release = asyncio.Event()
    busy: list[str] = []
    idle: list[str] = []

    async def hold(result: TaskResult) -> None:
        busy.append(result.request_id)
        await release.wait()

    async def take(result: TaskResult) -> None:
        idle.append(result.request_id)

    first = _consumer(js, "replicas", hold, concurrency=2)
    async with _running(first):
        for i in range(2):
            await bus.publish(js, subjects.RESULT, TaskResult(request_id=f"r-{i}"))
        await _until(lambda: len(busy) == 2)  # both slots taken
        async with _running(_consumer(js, "replicas", take)):
            for i in range(2, 5):
                await bus.publish(js, subjects.RESULT, TaskResult(request_id=f"r-{i}"))
            await _until(lambda: len(idle) == 3)
        release.set()
    await nc.close()
    assert sorted(busy) == ["r-0", "r-1"] and sorted(idle) == ["r-2", "r-3", "r-4"]


async def test_a_consumer_deleted_under_the_loop_comes_back(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await bus.ensure_streams(js)
    handled: list[str] = []

    async def handle(result: TaskResult) -> None:
        handled.append(result.request_id)

    consumer = _consumer(js, "deleted", handle)
    async with _running(consumer):
        await bus.publish(js, subjects.RESULT, TaskResult(request_id="before"))
        await _until(lambda: handled == ["before"])
        await js.delete_consumer(subjects.WORK_STREAM, "deleted")  # its waiting pull hears 409
        await bus.publish(js, subjects.RESULT, TaskResult(request_id="after"))
        await _until(lambda: handled == ["before", "after"])
        info = await js.consumer_info(subjects.WORK_STREAM, "deleted")
    await nc.close()
    assert info.num_ack_pending == 0 and info.num_pending == 0
