"""The shared bus plumbing rides out a NATS restart: consumers bind again, the memory-backed
worker registry is recreated and refilled, and the outage ends by itself."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from chorus.v1.messages_pb2 import TaskResult
from chorus.v1.workers_pb2 import ServedModel, WorkerInfo
from nats.js.errors import ServiceUnavailableError
from prometheus_client import REGISTRY

from services.common import bus, subjects
from services.common.outage import OUTAGE, retrying, unavailable
from services.common.workers import WorkerAnnouncer, WorkerRegistry
from tests.fault.harness import NatsNodes


async def _until(check: Any, timeout_s: float = 30.0) -> None:
    for _ in range(int(timeout_s / 0.1)):
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_a_consumer_and_the_worker_registry_ride_out_a_nats_restart(tmp_path: Path) -> None:
    nodes = NatsNodes(tmp_path / "nats", 1)
    nodes.start()
    try:
        asyncio.run(_ride_out_a_restart(nodes))
    finally:
        nodes.close()


async def _ride_out_a_restart(nodes: NatsNodes) -> None:
    nc = await bus.connect(nodes.url, "outage-test")
    js = nc.jetstream()
    await bus.ensure_streams(js)
    handled: list[TaskResult] = []

    async def handle(result: TaskResult) -> None:
        handled.append(result)

    async def give_up(message: TaskResult, error: Exception) -> None:
        raise AssertionError(f"gave up on {message}: {error}")

    spec = bus.ConsumerSpec("test", subjects.RESULT, "outage-test", TaskResult, handle, give_up)
    consumer = bus.Consumer(js, spec)
    consuming = asyncio.create_task(consumer.run())
    worker = WorkerInfo(worker_id="w1", models=[ServedModel(task="summarization", model="m")])
    announcer = WorkerAnnouncer(js, worker, ttl_s=3.0)
    await announcer.start()
    registry = await WorkerRegistry.watch(js, ttl_s=3.0, replicas=1)
    outages = _outages()
    try:
        await _until(lambda: consumer.running and registry.serving("summarization"))

        await asyncio.to_thread(nodes.restart, 0)  # the memory-backed registry bucket is gone

        # The streams were on disk; the publish waits for the server to come back.
        await bus.publish(js, subjects.RESULT, TaskResult(request_id="r1"), msg_id="r1")
        await _until(lambda: [r.request_id for r in handled] == ["r1"])
        kv = await js.key_value(subjects.WORKER_BUCKET)  # recreated, and the worker is back
        assert WorkerInfo.FromString((await kv.get("w1")).value or b"").worker_id == "w1"
        await _until(lambda: registry.serving("summarization") and not OUTAGE.active)
        assert consuming.done() is False
    finally:
        consumer.stop()
        await announcer.stop()
        await registry.stop()
        await asyncio.wait_for(consuming, 30)
        await nc.close()
    assert _outages() > outages  # the restart was counted (once per outage, not per call)


def _outages() -> float:
    return sum(
        sample.value
        for metric in REGISTRY.collect()
        if metric.name == "chorus_bus_outages"
        for sample in metric.samples
        if sample.name == "chorus_bus_outages_total"
    )


async def test_retrying_gives_up_on_what_is_not_an_outage() -> None:
    calls = 0

    async def refuses() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        await retrying("test", refuses, patience_s=5)
    assert calls == 1
    assert unavailable(ServiceUnavailableError()) and not unavailable(ValueError())
