"""The consumer loop takes a backlog in batches up to its free slots, and never holds a lone
message back for the rest of a batch (real NATS)."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import pytest
from chorus.v1.messages_pb2 import TaskResult
from nats.js import JetStreamContext

from services.common import bus, subjects

CONCURRENCY = 4


def _spec(handle: Any, durable: str) -> bus.ConsumerSpec[TaskResult]:
    return bus.ConsumerSpec(
        stage="selector",
        subject=subjects.RESULT,
        durable=durable,
        message_type=TaskResult,
        handle=handle,
        give_up=lambda message, error: asyncio.sleep(0),
        concurrency=CONCURRENCY,
    )


@pytest.fixture
def fetched(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many messages each fetch brought (the real fetch, watched)."""
    sizes: list[int] = []
    real = JetStreamContext.PullSubscription.fetch

    async def watched(self: Any, *args: Any, **kwargs: Any) -> Any:
        msgs = await real(self, *args, **kwargs)
        sizes.append(len(msgs))
        return msgs

    monkeypatch.setattr(JetStreamContext.PullSubscription, "fetch", watched)
    return sizes


async def test_a_burst_is_fetched_in_batches_up_to_the_free_slots(
    nats_url: str, fetched: list[int]
) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await bus.ensure_streams(js)
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

    consumer = bus.Consumer(js, _spec(handle, "burst"))
    run = asyncio.create_task(consumer.run())
    for _ in range(200):
        if len(handled) == 20:
            break
        await asyncio.sleep(0.05)
    info = await js.consumer_info(subjects.WORK_STREAM, "burst")
    consumer.stop()
    await run
    await nc.close()
    assert sorted(handled) == sorted(f"r-{i}" for i in range(20))
    assert most <= CONCURRENCY  # never more in hand than its slots
    # The first fetch takes one and learns of the backlog; the next fills the other slots.
    assert fetched[:2] == [1, CONCURRENCY - 1]
    assert sum(fetched) == 20 and len(fetched) < 20
    assert info.num_ack_pending == 0 and info.num_pending == 0  # each acked after its handler


async def test_a_lone_message_is_handled_without_waiting_for_a_full_batch(
    nats_url: str, fetched: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fetch that held a lone message back would hold it for its whole wait: a minute here.
    monkeypatch.setattr(bus, "FETCH_TIMEOUT_S", 60.0)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await bus.ensure_streams(js)
    arrived = asyncio.Event()

    async def handle(result: TaskResult) -> None:
        arrived.set()

    consumer = bus.Consumer(js, _spec(handle, "lone"))
    run = asyncio.create_task(consumer.run())
    for _ in range(100):  # until its first fetch waits on the server
        if consumer.running:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    await bus.publish(js, subjects.RESULT, TaskResult(request_id="lone"))
    await asyncio.wait_for(arrived.wait(), 20)  # not the minute
    consumer.stop()
    await nc.close()
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
