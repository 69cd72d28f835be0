"""Dynamic batching: invocations for one model are gathered (up to `max_batch`, or for at most
`max_wait_s`) and run in one call of the backend.

While a batch runs, the next invocations queue, so under load batches fill by themselves and
at low load a lone invocation waits at most `max_wait_s`. A batch that fails is run again one
invocation at a time, so a bad input fails only its own task.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from services.executor.backends import ModelBackend, Outputs
from services.executor.handler import Inputs


@dataclass
class _Item:
    inputs: Inputs
    future: asyncio.Future[Outputs]
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class BatchObserver:
    """Callbacks for metrics: a batch's size, each item's queue wait, a batch's run time."""

    batch: Callable[[int], None] = lambda size: None
    waited: Callable[[float], None] = lambda seconds: None
    ran: Callable[[float], None] = lambda seconds: None


class Batcher:
    """One model's queue in front of its backend."""

    def __init__(
        self,
        backend: ModelBackend,
        model: str,
        max_wait_s: float,
        observer: BatchObserver | None = None,
    ) -> None:
        self._backend = backend
        self._model = model
        self._max_wait_s = max_wait_s
        self._observer = observer or BatchObserver()
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._slots = asyncio.Semaphore(backend.parallel)
        self._worker: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, inputs: Inputs) -> Outputs:
        """The outputs for these inputs; cancelling the wait drops the item if it has not run."""
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._collect())
        item = _Item(inputs, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(item)
        return await item.future

    async def close(self) -> None:
        """Stops collecting and abandons batches still running: the service drained its
        consumers first, so what is left is unacked and will be redelivered elsewhere."""
        for task in [self._worker, *self._running]:
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *[t for t in [self._worker, *self._running] if t], return_exceptions=True
        )

    async def _collect(self) -> None:
        while True:
            batch = [await self._queue.get()]
            await self._slots.acquire()  # while a batch runs, the queue fills
            closes_at = time.perf_counter() + self._max_wait_s
            while len(batch) < self._backend.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = closes_at - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Item]) -> None:
        try:
            live = [item for item in batch if not item.future.done()]  # cancelled: past deadline
            if live:
                now = time.perf_counter()
                for item in live:
                    self._observer.waited(now - item.queued_at)
                await self._infer(live)
        finally:
            self._slots.release()

    async def _infer(self, items: Sequence[_Item]) -> None:
        self._observer.batch(len(items))
        started = time.perf_counter()
        try:
            outputs = await self._backend.infer(self._model, [i.inputs for i in items])
        except Exception as e:
            if len(items) > 1:  # find the input that fails; the others still get answers
                for item in items:
                    if not item.future.done():  # cancelled meanwhile: stop before it
                        await self._infer([item])
                return
            _settle(items[0], error=e)
            return
        finally:
            self._observer.ran(time.perf_counter() - started)
        for item, produced in zip(items, outputs, strict=True):
            _settle(item, produced)


def _settle(item: _Item, outputs: Outputs | None = None, error: Exception | None = None) -> None:
    if item.future.done():
        return
    if error is not None:
        item.future.set_exception(error)
    else:
        item.future.set_result(outputs or [])
