"""The selector on the bus: owns each request's task graph in a KV bucket, updated by CAS.

Consumes `chorus.plan` and `chorus.result`; publishes `chorus.invoke.<task>.<model>` and
`chorus.report`. Every publish carries a dedup id and happens before the state update, so a
crash or a lost compare-and-set race only repeats a publish, which NATS drops within its
two-minute duplicate window; a retried update reuses the models it already chose.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

from chorus.v1.messages_pb2 import (
    ExecutionReport,
    RunState,
    StopAfter,
    Task,
    TaskInvocation,
    TaskPlan,
    TaskResult,
    TaskStarted,
    TaskStatus,
)
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue
from prometheus_client import Counter

from services.common import bus, events, subjects
from services.common.llm import LLM, open_llm
from services.common.periodic import Periodic
from services.common.resources import request_text
from services.common.runtime import Runtime
from services.common.settings import SettingsError
from services.common.telemetry import request_id_var, trace_id_var
from services.common.workers import WorkerRegistry
from services.selector.catalog import Catalog, CatalogError, load_catalog
from services.selector.dag import (
    UnresolvedInput,
    blocked_tasks,
    is_complete,
    ready_tasks,
    resolve_args,
)
from services.selector.select import NoCandidate, Selection, candidates_for, select_model

log = logging.getLogger(__name__)
STAGE = "selector"
RUN_TTL_S = 24 * 3600.0
SWEEP_INTERVAL_S = 5.0
OVERDUE_GRACE_S = 5.0  # an executor that finishes right at the deadline still gets its say
OVERDUE = Counter(
    "chorus_selector_overdue_tasks_total", "Dispatched tasks failed for want of a result."
)
STRAY_RESULTS = Counter(
    "chorus_selector_stray_results_total",
    "Results that matched no running task, by reason (unknown_request, duplicate).",
    ["reason"],
)

Publish = Callable[[], Awaitable[None]]


class Selector:
    def __init__(
        self,
        js: JetStreamContext,
        runs: KeyValue,
        registry: WorkerRegistry,
        llm: LLM | None,
        catalog: Catalog,
        task_deadline_s: float,
    ) -> None:
        self._js = js
        self._runs = runs
        self._registry = registry
        self._llm = llm
        self._catalog = catalog
        self._deadline_s = task_deadline_s

    async def handle_plan(self, plan: TaskPlan) -> None:
        state = RunState(started_unix=time.time(), trace_id=trace_id_var.get())
        state.plan.CopyFrom(plan)
        if plan.request.stop_after == StopAfter.STOP_AFTER_PLAN or not plan.tasks:
            await self._report(state)
            return
        try:
            await self._runs.create(plan.request_id, state.SerializeToString())
        except KeyWrongLastSequenceError:
            log.info("plan redelivered; continuing the existing run")
        await self._transact(plan.request_id, lambda s: [])

    async def handle_result(self, result: TaskResult) -> None:
        def record(state: RunState) -> list[Publish]:
            if result.task_id in state.results:
                STRAY_RESULTS.labels("duplicate").inc()
                log.warning("duplicate result for task %d ignored", result.task_id)
                return []
            state.results[result.task_id].CopyFrom(result)
            return [self._finished_event(result)]

        await self._transact(result.request_id, record)

    async def sweep_overdue(self) -> None:
        """Fails dispatched tasks whose deadline passed with no result: their replica may have
        died with the work, and a request must still finish. Any selector replica may sweep;
        compare-and-set keeps them from clashing, and a late result counts as a duplicate."""
        for request_id in await self._run_ids():
            request_id_var.set(request_id)
            await self._transact(request_id, self._fail_overdue, missing_ok=True)

    async def _run_ids(self) -> list[str]:
        try:
            return list(await self._runs.keys())
        except NoKeysError:
            return []

    def _fail_overdue(self, state: RunState) -> list[Publish]:
        trace_id_var.set(state.trace_id)  # what the sweep publishes joins the request's trace
        now = time.time()
        effects = []
        for task_id, started in state.dispatched.items():
            late = now - started.deadline_unix - OVERDUE_GRACE_S
            if task_id in state.results or started.deadline_unix == 0 or late < 0:
                continue
            result = TaskResult(
                request_id=state.plan.request_id,
                task_id=task_id,
                task=started.task,
                model=started.model,
                status=TaskStatus.TASK_STATUS_FAILED,
                error="no result by the task's deadline (its executor may have stopped)",
            )
            state.results[task_id].CopyFrom(result)
            OVERDUE.inc()
            effects.append(self._finished_event(result))
        return effects

    async def _transact(
        self,
        request_id: str,
        change: Callable[[RunState], list[Publish]],
        *,
        missing_ok: bool = False,
    ) -> None:
        """Applies `change` and advances the graph under compare-and-set, retrying on conflict."""
        choices: dict[int, Selection] = {}
        while True:
            try:
                entry = await self._runs.get(request_id)
            except KeyNotFoundError:
                if not missing_ok:
                    STRAY_RESULTS.labels("unknown_request").inc()
                    log.warning("message for a request with no run state ignored")
                return
            state = RunState.FromString(entry.value or b"")
            if state.reported:
                return
            effects = change(state) + await self._advance(state, choices)
            if not effects:
                # Every change to a run publishes something (an event, an invocation, the
                # report), so no effects means nothing changed: a sweep that found nothing
                # overdue, or a duplicate result. No write.
                return
            for publish in effects:
                await publish()
            try:
                await self._runs.update(request_id, state.SerializeToString(), last=entry.revision)
                return
            except KeyWrongLastSequenceError:
                continue  # another replica changed the run; redo on the fresh state

    async def _advance(self, state: RunState, choices: dict[int, Selection]) -> list[Publish]:
        """Skips blocked tasks, dispatches ready ones, reports when all are done."""
        effects: list[Publish] = []
        changed = True
        while changed:
            changed = False
            for skipped in blocked_tasks(state):
                state.results[skipped.task_id].CopyFrom(skipped)
                effects.append(self._finished_event(skipped))
                changed = True
            for task in ready_tasks(state):
                effects += await self._dispatch(state, task, choices)
                changed = True
        if is_complete(state):
            state.reported = True
            effects.append(lambda: self._report(state))
        return effects

    async def _dispatch(
        self, state: RunState, task: Task, choices: dict[int, Selection]
    ) -> list[Publish]:
        request_id = state.plan.request_id
        failed = TaskResult(
            request_id=request_id,
            task_id=task.id,
            task=task.task,
            status=TaskStatus.TASK_STATUS_FAILED,
        )
        try:
            args = resolve_args(task, state)
            choice = choices.get(task.id)
            if choice is None:
                candidates = candidates_for(task.task, self._registry.live(), self._catalog)
                choice = await select_model(
                    task, request_text(state.plan.request), candidates, self._llm
                )
                choices[task.id] = choice
        except (UnresolvedInput, NoCandidate) as e:
            failed.error = str(e)
            state.results[task.id].CopyFrom(failed)
            return [self._finished_event(failed)]
        deadline = time.time() + self._deadline_s
        started = TaskStarted(
            task_id=task.id,
            task=task.task,
            model=choice.model,
            selection_reason=choice.reason,
            deadline_unix=deadline,
        )
        state.dispatched[task.id].CopyFrom(started)
        invocation = TaskInvocation(
            request_id=request_id, task_id=task.id, task=task.task, model=choice.model, args=args
        )
        invocation.deadline.FromNanoseconds(int(deadline * 1e9))
        event = events.new_event(request_id)
        event.task_started.CopyFrom(started)

        async def publish() -> None:
            await bus.publish(
                self._js,
                subjects.invoke(task.task, choice.model),
                invocation,
                msg_id=f"{request_id}.{task.id}.invoke",
            )
            await events.publish_event(self._js, event, msg_id=f"{request_id}.{task.id}.started")

        return [publish]

    def _finished_event(self, result: TaskResult) -> Publish:
        event = events.new_event(result.request_id)
        event.task_finished.CopyFrom(result)
        msg_id = f"{result.request_id}.{result.task_id}.finished"
        return lambda: events.publish_event(self._js, event, msg_id=msg_id)

    async def _report(self, state: RunState) -> None:
        report = ExecutionReport(
            request_id=state.plan.request_id,
            plan=state.plan,
            execution_seconds=time.time() - state.started_unix,
        )
        for task in state.plan.tasks:
            if task.id not in state.results:  # stopped after planning: nothing ran
                continue
            result = TaskResult()
            result.CopyFrom(state.results[task.id])
            if task.id in state.dispatched and not result.selection_reason:
                result.selection_reason = state.dispatched[task.id].selection_reason
            report.results.append(result)
        await bus.publish(self._js, subjects.REPORT, report, msg_id=f"{report.request_id}.report")


async def build(rt: Runtime, stack: AsyncExitStack) -> list[bus.Consumer[Any]]:
    settings = rt.settings
    runs = await bus.open_key_value(
        rt.js,
        KeyValueConfig(
            bucket=subjects.RUN_STATE_BUCKET,
            history=1,
            ttl=RUN_TTL_S,
            storage=StorageType.FILE,
            replicas=settings.stream_replicas,
        ),
    )
    registry = await WorkerRegistry.watch(rt.js, settings.worker_ttl_s, settings.stream_replicas)
    stack.push_async_callback(registry.stop)
    try:
        catalog = load_catalog(settings.env)
    except (CatalogError, OSError) as e:
        raise SettingsError(f"model catalog: {e}") from e
    log.info("model catalog: %d models", len(catalog.entries))
    selector = Selector(
        rt.js, runs, registry, open_llm(settings.llm, stack), catalog, settings.task_deadline_s
    )
    plans = bus.ConsumerSpec(
        stage=STAGE,
        subject=subjects.PLAN,
        durable="selector-plans",
        message_type=TaskPlan,
        handle=selector.handle_plan,
        give_up=events.fail_on_give_up(rt.js, STAGE),
    )
    results = bus.ConsumerSpec(
        stage=STAGE,
        subject=subjects.RESULT,
        durable="selector-results",
        message_type=TaskResult,
        handle=selector.handle_result,
        give_up=events.fail_on_give_up(rt.js, STAGE),
    )
    sweeper = Periodic(selector.sweep_overdue, SWEEP_INTERVAL_S, "overdue sweep")
    sweeper.start()
    stack.push_async_callback(sweeper.stop)
    return [bus.Consumer(rt.js, plans), bus.Consumer(rt.js, results)]
