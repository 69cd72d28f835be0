"""The live worker registry: executor replicas announce what they serve in a KV bucket with a TTL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from chorus.v1.workers_pb2 import WorkerInfo
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from services.common import subjects
from services.common.bus import open_key_value
from services.common.periodic import Periodic

log = logging.getLogger(__name__)

# Routes that are not one model's files. A replica that serves `(task, LLM_ROUTE)` runs the
# task on the LLM itself (HuggingGPT does this for the text tasks in `tasks.LLM_TASKS`); one that
# serves `(task, REMOTE_ROUTE)` runs any Hub model remotely through `huggingface_hub`'s
# InferenceClient. Invocations travel on `subjects.invoke(task, route)`; for the remote route
# `TaskInvocation.model` names the Hub model to run.
LLM_ROUTE = "llm"
REMOTE_ROUTE = "hf-inference"
# Model ids of operations built into the executor (`builtin:canny`): no weights to load.
BUILTIN_PREFIX = "builtin:"


async def open_worker_bucket(js: JetStreamContext, ttl_s: float, replicas: int) -> KeyValue:
    # Entries are dropped by the bucket after a few TTLs; readers also ignore stale heartbeats.
    config = KeyValueConfig(
        bucket=subjects.WORKER_BUCKET,
        ttl=ttl_s * 6,
        history=1,
        storage=StorageType.MEMORY,
        replicas=replicas,
    )
    return await open_key_value(js, config)


class WorkerRegistry:
    """A live view of the bucket, kept current by a watch: no per-request status calls."""

    def __init__(self, kv: KeyValue, ttl_s: float) -> None:
        self._kv = kv
        self._ttl_s = ttl_s
        self._workers: dict[str, WorkerInfo] = {}
        # Worker ids by the task types they serve: a selection looks at one task's replicas.
        self._by_task: dict[str, set[str]] = {}
        self._task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()

    @classmethod
    async def watch(cls, js: JetStreamContext, ttl_s: float, replicas: int) -> WorkerRegistry:
        registry = cls(await open_worker_bucket(js, ttl_s, replicas), ttl_s)
        await registry.start()
        return registry

    async def start(self, sync_timeout_s: float = 5.0) -> None:
        """Starts following the bucket and waits for its current entries, so a selector that
        has just (re)started does not mistake "not read yet" for "no replica serves this"."""
        watcher = await self._kv.watchall()
        self._task = asyncio.create_task(self._follow(watcher))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._synced.wait(), sync_timeout_s)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:  # end of the initial values
                self._synced.set()
                continue
            self._forget(entry.key)
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                continue
            try:
                worker = WorkerInfo.FromString(entry.value)
            except Exception:
                log.warning("ignored an undecodable worker entry %s", entry.key)
                continue
            self._workers[entry.key] = worker
            for served in worker.models:
                self._by_task.setdefault(served.task, set()).add(entry.key)

    def _forget(self, worker_id: str) -> None:
        worker = self._workers.pop(worker_id, None)
        for served in worker.models if worker else ():
            self._by_task.get(served.task, set()).discard(worker_id)

    def live(self) -> list[WorkerInfo]:
        cutoff = time.time() - self._ttl_s
        return [w for w in self._workers.values() if w.heartbeat_unix >= cutoff]

    def serving(self, task: str) -> list[WorkerInfo]:
        """The live replicas that serve `task`."""
        cutoff = time.time() - self._ttl_s
        workers = (self._workers[i] for i in self._by_task.get(task, ()))
        return [w for w in workers if w.heartbeat_unix >= cutoff]


class WorkerAnnouncer:
    """Keeps one replica's entry fresh; deletes it on a clean stop."""

    def __init__(self, kv: KeyValue, info: WorkerInfo, ttl_s: float) -> None:
        self._kv = kv
        self.info = info
        self._heartbeat = Periodic(self.announce, ttl_s / 3, "worker heartbeat")

    async def start(self) -> None:
        await self.announce()
        self._heartbeat.start()

    async def announce(self) -> None:
        self.info.heartbeat_unix = time.time()
        await self._kv.put(self.info.worker_id, self.info.SerializeToString())

    async def stop(self) -> None:
        await self._heartbeat.stop()
        with contextlib.suppress(Exception):
            await self._kv.delete(self.info.worker_id)
