"""The worker registry on a real bus: bad entries and silent replicas do not count as capacity."""

from __future__ import annotations

import asyncio

from chorus.v1.workers_pb2 import ServedModel, WorkerInfo
from prometheus_client import REGISTRY

from services.common import bus, subjects
from services.common.workers import WorkerAnnouncer, WorkerRegistry


def _bad_entries() -> float:
    return REGISTRY.get_sample_value("chorus_worker_registry_bad_entries_total") or 0


async def test_a_garbage_entry_is_skipped_and_a_silent_replica_stops_counting(
    nats_url: str,
) -> None:
    nc = await bus.connect(nats_url, "registry-test")
    js = nc.jetstream()
    registry = await WorkerRegistry.watch(js, ttl_s=1.0, replicas=1)
    woken: list[bool] = []
    registry.on_capacity(lambda: woken.append(True))
    bad = _bad_entries()
    kv = await js.key_value(subjects.WORKER_BUCKET)
    await kv.put("junk", b"\xff\xff not a WorkerInfo")
    served = [ServedModel(task="summarization", model="m")]
    # Announced once and never again: it counts until its heartbeat is a TTL old.
    await WorkerAnnouncer(js, WorkerInfo(worker_id="w1", models=served), 1.0).announce()
    for _ in range(100):
        if registry.serving("summarization"):
            break
        await asyncio.sleep(0.05)
    assert [w.worker_id for w in registry.serving("summarization")] == ["w1"]
    assert woken  # a task type gained its first replica: waiting tasks are looked at now
    await asyncio.sleep(1.2)
    assert registry.serving("summarization") == []
    assert _bad_entries() == bad + 1
    await registry.stop()
    await nc.close()
