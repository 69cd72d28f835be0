"""An executor replica on the bus: one pull consumer per (task, model) it serves.

A replica only ever receives work it can do, because it subscribes to exactly the subjects
`chorus.invoke.<task>.<model>` of its models; replicas serving the same pair share a durable
consumer, so JetStream spreads the work between them. The LLM's text tasks and remote
inference are routes of their own (`workers.LLM_ROUTE`, `workers.REMOTE_ROUTE`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from chorus.v1.messages_pb2 import TaskInvocation, TaskResult, TaskStatus
from chorus.v1.workers_pb2 import ServedModel, WorkerInfo

from services.common import bus, subjects, tracing
from services.common.artifacts import ArtifactStore
from services.common.llm import open_llm
from services.common.routes import BUILTIN_PREFIX, LLM_ROUTE, REMOTE_ROUTE
from services.common.runtime import Runtime
from services.common.settings import SettingsError
from services.common.tasks import status_name
from services.common.workers import WorkerAnnouncer
from services.executor import metrics
from services.executor.backends import (
    LLMBackend,
    LocalBackend,
    ModelBackend,
    RemoteBackend,
    inference_client,
)
from services.executor.batching import Batcher
from services.executor.cancels import CancelledRequests
from services.executor.config import ExecutorConfig, planned_lanes
from services.executor.execute import execute
from services.executor.fetch import FetchPolicy
from services.executor.handler import Inputs, Produced
from services.executor.handlers import HANDLERS
from services.executor.models import ModelSpec, ModelUnavailable, locate
from services.executor.pool import ModelPool

log = logging.getLogger(__name__)
STAGE = "executor"


@dataclass
class Lane:
    """One (task, route) this replica serves: its backend and a batcher per model."""

    task: str
    route: str  # the model for local models; LLM_ROUTE or REMOTE_ROUTE otherwise
    backend: ModelBackend
    batch_wait_s: float
    _batchers: dict[str, Batcher] = field(default_factory=dict)

    def served(self) -> ServedModel:
        return ServedModel(task=self.task, model=self.route, backend=self.backend.kind)

    async def run(self, model: str, inputs: Inputs) -> list[Produced]:
        # A local lane runs its own model whatever the invocation names: one batcher, so the
        # pipeline is never called from two threads. A remote lane batches per Hub model.
        if self.route != REMOTE_ROUTE:
            model = self.route
        batcher = self._batchers.get(model)
        if batcher is None:
            observer = metrics.batch_observer(self.task, self.backend.kind)
            batcher = Batcher(self.backend, model, self.batch_wait_s, observer)
            self._batchers[model] = batcher
        return await batcher.submit(inputs)

    async def close(self) -> None:
        for batcher in self._batchers.values():
            await batcher.close()


class Executor:
    def __init__(
        self,
        rt: Runtime,
        store: ArtifactStore,
        announcer: WorkerAnnouncer,
        capacity: int,
        fetch: FetchPolicy,
        cancelled: CancelledRequests,
    ) -> None:
        self._js = rt.js
        self._cancelled = cancelled
        self._max_seconds = rt.settings.task_deadline_s
        self._inline_max_bytes = rt.settings.inline_max_bytes
        self._store = store
        self._announcer = announcer
        self._fetch = fetch
        self.slots = asyncio.Semaphore(capacity)  # bounded in flight across all models

    def handler_for(self, lane: Lane) -> Any:
        async def handle(invocation: TaskInvocation) -> None:
            result = await self._unless_cancelled(invocation, self._run(lane, invocation))
            outcome = status_name(result.status)
            # Labels from the lane, not the message: a bounded set whatever arrives.
            metrics.TASKS.labels(lane.task, lane.route, outcome).inc()
            metrics.TASK_SECONDS.labels(lane.task).observe(result.seconds)
            await self._publish(result)

        return handle

    async def _run(self, lane: Lane, invocation: TaskInvocation) -> TaskResult:
        async with self.slots:
            self._announcer.info.in_flight += 1
            try:
                with tracing.span(
                    f"task {invocation.task}",
                    attributes={
                        "chorus.task_id": invocation.task_id,
                        "chorus.model": invocation.model,
                    },
                ):
                    return await execute(
                        invocation,
                        lambda inputs: lane.run(invocation.model, inputs),
                        self._store,
                        self._announcer.info.worker_id,
                        self._fetch,
                        self._max_seconds,
                        self._inline_max_bytes,
                    )
            finally:
                self._announcer.info.in_flight -= 1

    async def _unless_cancelled(
        self, invocation: TaskInvocation, run: Coroutine[Any, Any, TaskResult]
    ) -> TaskResult:
        """The task's result, or a cancelled one as soon as its request is cancelled: an
        invocation waiting for a slot or in its batch's queue is dropped, a running one
        abandoned."""
        request_id = invocation.request_id
        if (reason := self._cancelled.reason(request_id)) is not None:
            run.close()  # cancelled before it came: never started
            return self._cancelled_result(invocation, reason)
        work = asyncio.create_task(run)
        with self._cancelled.watching(request_id, work):
            try:
                return await work
            except asyncio.CancelledError:
                reason = self._cancelled.reason(request_id)
                this = asyncio.current_task()
                if reason is None or (this is not None and this.cancelling()):
                    raise  # not the request's cancel: this replica is stopping
                return self._cancelled_result(invocation, reason)

    def _cancelled_result(self, invocation: TaskInvocation, reason: str) -> TaskResult:
        log.info("task %d dropped: its request was cancelled (%s)", invocation.task_id, reason)
        return self._result(invocation, TaskStatus.TASK_STATUS_CANCELLED, f"cancelled: {reason}")

    def _result(
        self, invocation: TaskInvocation, status: TaskStatus.ValueType, error: str
    ) -> TaskResult:
        return TaskResult(
            request_id=invocation.request_id,
            task_id=invocation.task_id,
            task=invocation.task,
            model=invocation.model,
            status=status,
            error=error,
            executor=self._announcer.info.worker_id,
            attempt=invocation.attempt,
            selection_reason=invocation.selection_reason,
        )

    async def give_up(self, invocation: TaskInvocation, error: Exception) -> None:
        result = self._result(invocation, TaskStatus.TASK_STATUS_FAILED, f"executor error: {error}")
        result.retryable = True  # this replica's trouble, not the task's
        await self._publish(result)

    async def _publish(self, result: TaskResult) -> None:
        msg_id = subjects.result_msg_id(result.request_id, result.task_id, result.attempt)
        await bus.publish(self._js, subjects.RESULT, result, msg_id=msg_id)


async def _local_lanes(config: ExecutorConfig, pool: ModelPool) -> list[Lane]:
    """Lanes for the local models; loaded now with progress logged, or checked and loaded later."""
    lanes: list[Lane] = []
    wanted = [(s, True) for s in config.specs] + [(s, False) for s in config.defaults]
    for i, (spec, required) in enumerate(wanted, 1):
        try:
            await _prepare(spec, config, pool, f"{i}/{len(wanted)}")
        except ModelUnavailable as e:
            if required:
                raise SettingsError(str(e)) from e
            log.warning("not serving %s=%s: %s", spec.task, spec.model, e)
            continue
        backend = LocalBackend(HANDLERS[spec.task], spec, pool, config.batch_size)
        lanes.append(Lane(spec.task, spec.model, backend, config.batch_wait_s))
    return lanes


async def _prepare(spec: ModelSpec, config: ExecutorConfig, pool: ModelPool, step: str) -> None:
    if config.preload:
        log.info("loading model %s: %s=%s", step, spec.task, spec.model)
        loaded = await pool.preload(spec)
        metrics.LOAD_SECONDS.labels(spec.task, spec.model).set(loaded.load_seconds)
        return
    log.info("model %s: %s=%s will load on first use", step, spec.task, spec.model)
    if not spec.model.startswith((BUILTIN_PREFIX, "bundled:")):
        # Found now, so a wrong path stops start-up rather than failing its first task.
        await asyncio.to_thread(locate, spec.model, config.load.allow_download)


def _routed_lanes(config: ExecutorConfig, rt: Runtime, stack: AsyncExitStack) -> list[Lane]:
    """Lanes for the LLM's text tasks and for remote inference: those `planned_lanes` names
    (which also make this replica's NATS user), each with its backend."""
    routed = [(t, r) for t, r in planned_lanes(config) if r in (LLM_ROUTE, REMOTE_ROUTE)]
    routes = {route for _, route in routed}
    llm = open_llm(rt.settings.llm, stack) if LLM_ROUTE in routes else None
    client = (
        inference_client(config.hf_token, config.remote_timeout_s)
        if REMOTE_ROUTE in routes
        else None
    )
    lanes: list[Lane] = []
    for task, route in routed:
        handler = HANDLERS[task]
        backend: ModelBackend
        if route == LLM_ROUTE:
            assert llm is not None  # planned only when the LLM is configured
            backend = LLMBackend(handler, llm, config.capacity)
        else:
            assert client is not None  # planned only when remote inference is on
            backend = RemoteBackend(handler, client, config.remote_endpoint, config.capacity)
        lanes.append(Lane(task, route, backend, 0.0))
    return lanes


async def build(rt: Runtime, stack: AsyncExitStack) -> list[bus.Consumer[Any]]:
    config = ExecutorConfig.from_env(rt.settings.env, rt.settings.llm.configured)
    metrics.watch_device(config.device)
    pool = ModelPool(config.load, config.max_loaded, on_change=metrics.report_loaded)
    metrics.report_loaded(pool)
    lanes = await _local_lanes(config, pool) + _routed_lanes(config, rt, stack)
    for lane in lanes:
        stack.push_async_callback(lane.close)
    store = await ArtifactStore.open(
        rt.js, rt.settings.stream_replicas, rt.settings.artifact_max_bytes
    )
    info = WorkerInfo(
        worker_id=f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
        device=config.device,
        capacity=config.capacity,
        models=[lane.served() for lane in lanes],
    )
    announcer = WorkerAnnouncer(rt.js, info, rt.settings.worker_ttl_s, rt.settings.stream_replicas)
    cancelled = CancelledRequests()
    cancels = await cancelled.listen(rt.nc)
    stack.push_async_callback(cancels.unsubscribe)
    executor = Executor(rt, store, announcer, config.capacity, config.fetch, cancelled)
    consumers: list[bus.Consumer[Any]] = []
    for lane in lanes:
        intake = bus.ConsumerSpec(
            stage=STAGE,
            subject=subjects.invoke(lane.task, lane.route),
            durable=subjects.consumer_name("executor", lane.task, lane.route),
            message_type=TaskInvocation,
            handle=executor.handler_for(lane),
            give_up=executor.give_up,
            concurrency=config.capacity,
            ack_wait_s=60.0,
            shared_slots=executor.slots,
        )
        consumers.append(bus.Consumer(rt.js, intake))
    await announcer.start()
    stack.push_async_callback(announcer.stop)
    return consumers
