"""Dynamic batching and the model pool, with scripted backends and loaders."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from services.executor.batching import Batcher, BatchObserver
from services.executor.handler import Inputs, Produced
from services.executor.handlers import HANDLERS
from services.executor.models import LoadedModel, LoadOptions, ModelSpec
from services.executor.pool import ModelPool


class ScriptedBackend:
    """Echoes each input's text; fails on "boom"; records the batches it was given."""

    kind = "scripted"

    def __init__(self, max_batch: int, parallel: int = 1, gate: asyncio.Event | None = None):
        self.max_batch = max_batch
        self.parallel = parallel
        self.batches: list[list[str]] = []
        self._gate = gate

    async def infer(self, model: str, batch: Sequence[Inputs]) -> list[list[Produced]]:
        self.batches.append([i["text"] for i in batch])
        if self._gate is not None:
            await self._gate.wait()
        if any(i["text"] == "boom" for i in batch):
            raise RuntimeError("boom")
        return [[Produced("text", text=i["text"].upper())] for i in batch]


async def test_invocations_queued_behind_a_running_batch_share_the_next_one() -> None:
    gate = asyncio.Event()
    backend = ScriptedBackend(max_batch=4, gate=gate)
    sizes: list[int] = []
    batcher = Batcher(backend, "m", max_wait_s=0.0, observer=BatchObserver(batch=sizes.append))
    first = asyncio.create_task(batcher.submit({"text": "a"}))
    await asyncio.sleep(0.01)  # "a" runs alone and holds the model
    rest = [asyncio.create_task(batcher.submit({"text": t})) for t in "bcdef"]
    await asyncio.sleep(0.01)
    gate.set()
    outputs = await asyncio.gather(first, *rest)
    await batcher.close()
    assert [o[0].text for o in outputs] == list("ABCDEF")
    assert backend.batches == [["a"], ["b", "c", "d", "e"], ["f"]] and sizes == [1, 4, 1]


async def test_a_lone_invocation_waits_at_most_the_batch_window() -> None:
    backend = ScriptedBackend(max_batch=8)
    batcher = Batcher(backend, "m", max_wait_s=0.05)
    outputs = await batcher.submit({"text": "solo"})
    await batcher.close()
    assert outputs[0].text == "SOLO" and backend.batches == [["solo"]]


async def test_a_failing_input_fails_alone_and_the_rest_of_its_batch_succeeds() -> None:
    backend = ScriptedBackend(max_batch=4)
    batcher = Batcher(backend, "m", max_wait_s=0.05)
    tasks = [asyncio.create_task(batcher.submit({"text": t})) for t in ("x", "boom", "y")]
    done = await asyncio.gather(*tasks, return_exceptions=True)
    await batcher.close()
    assert backend.batches[0] == ["x", "boom", "y"]  # tried together first
    assert [d[0].text for d in done if isinstance(d, list)] == ["X", "Y"]
    assert isinstance(done[1], RuntimeError)


async def test_an_invocation_that_gave_up_waiting_is_not_run() -> None:
    gate = asyncio.Event()
    backend = ScriptedBackend(max_batch=1, gate=gate)
    batcher = Batcher(backend, "m", max_wait_s=0.0)
    running = asyncio.create_task(batcher.submit({"text": "a"}))
    await asyncio.sleep(0.01)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(batcher.submit({"text": "late"}), 0.01)
    gate.set()
    await running
    assert (await batcher.submit({"text": "b"}))[0].text == "B"
    await batcher.close()
    assert backend.batches == [["a"], ["b"]]


def _fake_loader(loads: list[str]) -> Any:
    def load(spec: ModelSpec, options: LoadOptions) -> LoadedModel:
        loads.append(spec.model)
        return LoadedModel(spec, HANDLERS[spec.task], object(), 0.1, 1000)

    return load


async def test_the_pool_loads_on_first_use_and_evicts_the_least_recently_used() -> None:
    loads: list[str] = []
    pool = ModelPool(LoadOptions(), max_loaded=2, loader=_fake_loader(loads))
    a, b, c = (ModelSpec("text-classification", m) for m in "abc")
    for spec in (a, b, a, c):  # c evicts b, the least recently used
        async with pool.use(spec):
            pass
    assert [m.spec.model for m in pool.loaded] == ["a", "c"] and loads == ["a", "b", "c"]
    async with pool.use(b):  # b comes back, a goes
        pass
    assert [m.spec.model for m in pool.loaded] == ["c", "b"] and loads[-1] == "b"


async def test_a_model_in_use_is_not_evicted() -> None:
    pool = ModelPool(LoadOptions(), max_loaded=1, loader=_fake_loader([]))
    a, b = ModelSpec("text-classification", "a"), ModelSpec("text-classification", "b")
    async with pool.use(a):
        async with pool.use(b):
            assert len(pool.loaded) == 2  # over the bound while both are busy
        assert [m.spec.model for m in pool.loaded] == ["a"]  # b idle, a busy: b goes
    assert len(pool.loaded) == 1


async def test_concurrent_first_uses_load_once() -> None:
    loads: list[str] = []
    pool = ModelPool(LoadOptions(), loader=_fake_loader(loads))
    spec = ModelSpec("text-classification", "a")
    await asyncio.gather(*(pool.preload(spec) for _ in range(5)))
    assert loads == ["a"]
