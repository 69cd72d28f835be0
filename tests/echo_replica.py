"""A stand-in executor replica on the real bus, for selector tests and benchmarks.

It announces (task, model) pairs in the worker registry, pulls their invocations like a real
replica, and answers each with a text output after `delay_s`: where the models themselves are
beside the point, it keeps the bus, the registry and the selector real.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from chorus.v1.messages_pb2 import TaskInvocation, TaskOutput, TaskResult, TaskStatus
from chorus.v1.workers_pb2 import ServedModel, WorkerInfo
from nats.aio.client import Client as NATS

from services.common import bus, subjects
from services.common.workers import WorkerAnnouncer


class EchoReplica:
    def __init__(
        self,
        nats_url: str,
        served: list[tuple[str, str]],
        *,
        delay_s: float = 0.0,
        ttl_s: float = 3.0,
        capacity: int = 8,
        out_of_memory: bool = False,
    ) -> None:
        self._url = nats_url
        self._served = served
        self._delay_s = delay_s
        self._ttl_s = ttl_s
        self._capacity = capacity
        self._out_of_memory = out_of_memory  # answer every task with a retryable failure
        self.received: list[tuple[TaskInvocation, float]] = []  # with the time each arrived
        self.answered: dict[tuple[str, int], float] = {}  # (request, task) -> when published
        self._nc: NATS | None = None
        self._announcer: WorkerAnnouncer | None = None
        self._consumers: list[bus.Consumer[Any]] = []
        self._runs: list[asyncio.Task[None]] = []

    async def start(self) -> EchoReplica:
        self._nc = await bus.connect(self._url, "echo-replica")
        js = self._nc.jetstream()
        await bus.ensure_streams(js)
        for task, model in self._served:
            spec = bus.ConsumerSpec(
                stage="executor",
                subject=subjects.invoke(task, model),
                durable=subjects.consumer_name("executor", task, model),
                message_type=TaskInvocation,
                handle=self._answer,
                give_up=lambda invocation, error: asyncio.sleep(0),
                concurrency=self._capacity,
            )
            self._consumers.append(bus.Consumer(js, spec))
        self._runs = [asyncio.create_task(c.run()) for c in self._consumers]
        info = WorkerInfo(
            worker_id=f"echo-{uuid.uuid4().hex[:6]}",
            device="cpu",
            capacity=self._capacity,
            models=[ServedModel(task=t, model=m, backend="echo") for t, m in self._served],
        )
        self._announcer = WorkerAnnouncer(js, info, self._ttl_s)
        await self._announcer.start()
        for _ in range(500):  # consumers are bound within milliseconds
            if all(c.running for c in self._consumers):
                break
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        for consumer in self._consumers:
            consumer.stop()
        await asyncio.gather(*self._runs)
        if self._announcer:
            await self._announcer.stop()
        if self._nc:
            await self._nc.close()

    async def _answer(self, invocation: TaskInvocation) -> None:
        self.received.append((invocation, time.time()))
        await asyncio.sleep(self._delay_s)
        inputs = " ".join(a.text for a in invocation.args if a.WhichOneof("value") == "text")
        result = TaskResult(
            request_id=invocation.request_id,
            task_id=invocation.task_id,
            task=invocation.task,
            model=invocation.model,
            status=TaskStatus.TASK_STATUS_SUCCEEDED,
            outputs=[TaskOutput(name="text", text=f"{invocation.model}: {inputs[:200]}")],
            attempt=invocation.attempt,
            selection_reason=invocation.selection_reason,
            executor="echo",
        )
        if self._out_of_memory:
            result.status, result.error, result.retryable = (
                TaskStatus.TASK_STATUS_FAILED,
                "out of memory: CUDA out of memory",
                True,
            )
            del result.outputs[:]
        assert self._nc is not None
        key = (invocation.request_id, invocation.task_id)
        self.answered[key] = time.time()
        msg_id = subjects.result_msg_id(result.request_id, result.task_id, result.attempt)
        await bus.publish(self._nc.jetstream(), subjects.RESULT, result, msg_id=msg_id)
