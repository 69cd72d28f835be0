"""The live worker registry: executor replicas announce what they serve in a KV bucket with a TTL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from chorus.v1.workers_pb2 import WorkerInfo
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue
from prometheus_client import Counter

from services.common import subjects
from services.common.bus import open_key_value
from services.common.outage import OUTAGE, retrying, unavailable
from services.common.periodic import Periodic

log = logging.getLogger(__name__)
BAD_WORKER_ENTRIES = Counter(
    "chorus_worker_registry_bad_entries_total",
    "Worker registry entries that did not decode (skipped).",
)


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
    """A live view of the bucket, kept current by a watch: no per-request status calls.

    The watch is re-established when it breaks or when the bucket was recreated (a memory
    bucket vanishes with a restarted server); the view it had is kept meanwhile, so replicas
    that re-announce find their entries in place.
    """

    def __init__(self, js: JetStreamContext, ttl_s: float, replicas: int) -> None:
        self._js = js
        self._ttl_s = ttl_s
        self._replicas = replicas
        self._workers: dict[str, WorkerInfo] = {}
        # Worker ids by the task types they serve: a selection looks at one task's replicas.
        self._by_task: dict[str, set[str]] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._synced = asyncio.Event()
        self._on_capacity: list[Callable[[], None]] = []

    @classmethod
    async def watch(cls, js: JetStreamContext, ttl_s: float, replicas: int) -> WorkerRegistry:
        registry = cls(js, ttl_s, replicas)
        await registry.start()
        return registry

    @property
    def synced(self) -> bool:
        """Whether the bucket's entries have been read: before that, seeing no replica for a
        task means "not read yet", not "nobody serves this"."""
        return self._synced.is_set()

    def on_capacity(self, callback: Callable[[], None]) -> None:
        """Calls `callback` when a task type gains its first live replica, and once synced."""
        self._on_capacity.append(callback)

    async def start(self, sync_timeout_s: float = 5.0) -> None:
        """Starts following the bucket and waits (a while) for its current entries."""
        self._task = asyncio.create_task(self._keep_watching())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._synced.wait(), sync_timeout_s)

    async def stop(self) -> None:
        self._stopping.set()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _keep_watching(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._watch_once()
            except Exception as e:  # the watch is this service's view of capacity: never lose it
                if not unavailable(e) and not isinstance(e, NotFoundError):
                    log.exception("worker registry watch failed; watching again")
                OUTAGE.failed("watch worker registry", e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 1.0)

    async def _watch_once(self) -> None:
        """Follows the bucket until its stream is gone or replaced, or the watch ends."""
        kv = await open_worker_bucket(self._js, self._ttl_s, self._replicas)
        stream = f"KV_{subjects.WORKER_BUCKET}"
        created = (await self._js.stream_info(stream)).created
        watcher = await kv.watchall()
        follow = asyncio.create_task(self._follow(watcher))
        try:
            while not follow.done() and not self._stopping.is_set():
                await asyncio.wait({follow}, timeout=self._ttl_s / 3)
                if not follow.done() and (await self._js.stream_info(stream)).created != created:
                    log.info("the worker registry bucket was recreated; watching it again")
                    return
            if follow.done():
                follow.result()
        finally:
            follow.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await follow
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:  # end of the initial values
                self._synced.set()
                self._capacity_came()
                continue
            tasks_before = {t for t in self._served_by(entry.key) if self.serving(t)}
            self._forget(entry.key)
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                continue
            try:
                worker = WorkerInfo.FromString(entry.value)
            except Exception:
                BAD_WORKER_ENTRIES.inc()
                log.warning("ignored an undecodable worker entry %s", entry.key)
                continue
            self._workers[entry.key] = worker
            for served in worker.models:
                self._by_task.setdefault(served.task, set()).add(entry.key)
            gained = {m.task for m in worker.models} - tasks_before
            if self._synced.is_set() and any(len(self.serving(t)) == 1 for t in gained):
                self._capacity_came()

    def _served_by(self, worker_id: str) -> set[str]:
        worker = self._workers.get(worker_id)
        return {m.task for m in worker.models} if worker else set()

    def _capacity_came(self) -> None:
        for callback in self._on_capacity:
            callback()

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
    """Keeps one replica's entry fresh; deletes it on a clean stop.

    A heartbeat that finds the bucket gone (a memory bucket does not outlive a restarted
    server) makes it again and announces at once, so the registry refills by itself.
    """

    def __init__(
        self, js: JetStreamContext, info: WorkerInfo, ttl_s: float, replicas: int = 1
    ) -> None:
        self._js = js
        self.info = info
        self._ttl_s = ttl_s
        self._replicas = replicas
        self._kv: KeyValue | None = None
        self._heartbeat = Periodic(self.announce, ttl_s / 3, "worker heartbeat")
        self._forget_reconnect: Callable[[], None] = lambda: None

    async def start(self) -> None:
        await self.announce()
        self._heartbeat.start()
        # Back from a NATS restart: announce now, not at the next beat, so the registry
        # (recreated empty, if it was memory-backed) fills again at once.
        self._forget_reconnect = OUTAGE.on_reconnect(self._heartbeat.wake)

    async def announce(self) -> None:
        self.info.heartbeat_unix = time.time()
        entry = self.info.SerializeToString()
        if self._kv is None:
            self._kv = await open_worker_bucket(self._js, self._ttl_s, self._replicas)
        try:
            await self._kv.put(self.info.worker_id, entry)
        except Exception as e:
            if not unavailable(e):
                raise
            OUTAGE.failed("announce worker", e)
            kv = self._kv = await open_worker_bucket(self._js, self._ttl_s, self._replicas)
            await retrying("announce worker", lambda: kv.put(self.info.worker_id, entry))

    async def stop(self) -> None:
        self._forget_reconnect()
        await self._heartbeat.stop()
        if self._kv is not None:
            with contextlib.suppress(Exception):
                await self._kv.delete(self.info.worker_id)
