"""Consumers that share a process's capacity fetch only while a slot is free (real NATS)."""

from __future__ import annotations

import asyncio

import nats
from chorus.v1.messages_pb2 import TaskInvocation

from services.common import bus, subjects


async def test_a_busy_replica_leaves_other_work_in_the_stream(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await bus.ensure_streams(js)
    slots = asyncio.Semaphore(1)
    release = asyncio.Event()
    handled: list[str] = []

    async def handle(invocation: TaskInvocation) -> None:
        async with slots:  # as the executor's handler does
            handled.append(invocation.task)
            if invocation.task == "summarization":
                await release.wait()

    consumers = []
    for task in ("summarization", "translation"):
        spec = bus.ConsumerSpec(
            stage="executor",
            subject=subjects.invoke(task, "m"),
            durable=f"slots-{task}",
            message_type=TaskInvocation,
            handle=handle,
            give_up=lambda message, error: asyncio.sleep(0),
            shared_slots=slots,
        )
        consumers.append(bus.Consumer(js, spec))
    runs = [asyncio.create_task(c.run()) for c in consumers]
    for i, task in enumerate(("summarization", "translation", "translation")):
        invocation = TaskInvocation(request_id=f"r-{i}", task=task, model="m")
        await bus.publish(js, subjects.invoke(task, "m"), invocation)
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.5)  # more than a fetch's wait: the idle lane had its chances
    waiting = await js.consumer_info(subjects.WORK_STREAM, "slots-translation")
    assert handled == ["summarization"]
    # A fetch already waiting when the slot filled may take one message; no more leave.
    assert waiting.num_ack_pending <= 1 and waiting.num_pending >= 1
    release.set()
    for _ in range(100):
        if handled == ["summarization", "translation", "translation"]:
            break
        await asyncio.sleep(0.05)
    for consumer in consumers:
        consumer.stop()
    await asyncio.gather(*runs)
    await nc.close()
    assert handled == ["summarization", "translation", "translation"]
