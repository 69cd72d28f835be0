"""An executor replica on the bus: one pull consumer per (task, model) it serves.

A replica only ever receives work it can do, because it subscribes to exactly the subjects
`chorus.invoke.<task>.<model>` of its models; replicas serving the same pair share a durable
consumer, so JetStream spreads the work between them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from contextlib import AsyncExitStack
from typing import Any

from chorus.v1.messages_pb2 import TaskInvocation, TaskResult, TaskStatus
from chorus.v1.workers_pb2 import ServedModel, WorkerInfo
from prometheus_client import Counter, Gauge, Histogram

from services.common import bus, subjects
from services.common.artifacts import ArtifactStore
from services.common.runtime import Runtime
from services.common.settings import SettingsError
from services.common.tasks import status_name
from services.common.workers import WorkerAnnouncer, open_worker_bucket
from services.executor.config import ExecutorConfig
from services.executor.execute import execute
from services.executor.models import LoadedModel, ModelUnavailable, load

log = logging.getLogger(__name__)
STAGE = "executor"
TASKS = Counter("chorus_executor_tasks_total", "Invocations run.", ["task", "model", "outcome"])
INFERENCE = Histogram("chorus_executor_inference_seconds", "Time per invocation.", ["task"])
LOAD_SECONDS = Gauge("chorus_executor_model_load_seconds", "Model load time.", ["task", "model"])


class Executor:
    def __init__(
        self, rt: Runtime, store: ArtifactStore, announcer: WorkerAnnouncer, capacity: int
    ) -> None:
        self._js = rt.js
        self._store = store
        self._announcer = announcer
        self._slots = asyncio.Semaphore(capacity)  # bounded in flight across all models

    def handler_for(self, loaded: LoadedModel) -> Any:
        async def handle(invocation: TaskInvocation) -> None:
            async with self._slots:
                self._announcer.info.in_flight += 1
                try:
                    result = await execute(
                        invocation, loaded, self._store, self._announcer.info.worker_id
                    )
                finally:
                    self._announcer.info.in_flight -= 1
            outcome = status_name(result.status)
            TASKS.labels(invocation.task, invocation.model, outcome).inc()
            INFERENCE.labels(invocation.task).observe(result.seconds)
            await self._publish(result)

        return handle

    async def give_up(self, invocation: TaskInvocation, error: Exception) -> None:
        await self._publish(
            TaskResult(
                request_id=invocation.request_id,
                task_id=invocation.task_id,
                task=invocation.task,
                model=invocation.model,
                status=TaskStatus.TASK_STATUS_FAILED,
                error=f"executor error: {error}",
                executor=self._announcer.info.worker_id,
                attempt=invocation.attempt,
            )
        )

    async def _publish(self, result: TaskResult) -> None:
        msg_id = subjects.result_msg_id(result.request_id, result.task_id, result.attempt)
        await bus.publish(self._js, subjects.RESULT, result, msg_id=msg_id)


async def _load_models(config: ExecutorConfig) -> list[LoadedModel]:
    """Loads every model before serving, saying how far it got."""
    loaded: list[LoadedModel] = []
    wanted = [(s, True) for s in config.specs] + [(s, False) for s in config.defaults]
    for i, (spec, required) in enumerate(wanted, 1):
        log.info("loading model %d/%d: %s=%s", i, len(wanted), spec.task, spec.model)
        try:
            model = await asyncio.to_thread(load, spec, config.device, config.allow_download)
        except ModelUnavailable as e:
            if required:
                raise SettingsError(str(e)) from e
            log.warning("not serving %s=%s: %s", spec.task, spec.model, e)
            continue
        LOAD_SECONDS.labels(spec.task, spec.model).set(model.load_seconds)
        loaded.append(model)
    return loaded


async def build(rt: Runtime, stack: AsyncExitStack) -> list[bus.Consumer[Any]]:
    config = ExecutorConfig.from_env(rt.settings.env)
    loaded = await _load_models(config)
    store = await ArtifactStore.open(rt.js, rt.settings.stream_replicas)
    info = WorkerInfo(
        worker_id=f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
        device=config.device,
        capacity=config.capacity,
        models=[
            ServedModel(task=m.spec.task, model=m.spec.model, backend=m.handler.backend)
            for m in loaded
        ],
    )
    announcer = WorkerAnnouncer(
        await open_worker_bucket(rt.js, rt.settings.worker_ttl_s, rt.settings.stream_replicas),
        info,
        rt.settings.worker_ttl_s,
    )
    executor = Executor(rt, store, announcer, config.capacity)
    consumers: list[bus.Consumer[Any]] = []
    for model in loaded:
        intake = bus.ConsumerSpec(
            stage=STAGE,
            subject=subjects.invoke(model.spec.task, model.spec.model),
            durable=subjects.consumer_name("executor", model.spec.task, model.spec.model),
            message_type=TaskInvocation,
            handle=executor.handler_for(model),
            give_up=executor.give_up,
            concurrency=config.capacity,
            ack_wait_s=60.0,
        )
        consumers.append(bus.Consumer(rt.js, intake))
    await announcer.start()
    stack.push_async_callback(announcer.stop)
    return consumers
