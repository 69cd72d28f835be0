"""The selector on the bus: owns each request's task graph in a KV bucket, updated by CAS.

Consumes `chorus.plan` and `chorus.result`; publishes `chorus.invoke.<task>.<route>` and
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
from nats.js.errors import (
    BadRequestError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
)
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
from services.selector.config import SelectorConfig
from services.selector.dag import (
    UnresolvedInput,
    blocked_tasks,
    drop_duplicate_ids,
    is_complete,
    ready_tasks,
    resolve_args,
    unrunnable_tasks,
)
from services.selector.rank import Candidate, RequestFacts, rank
from services.selector.select import NoCandidate, Selection, choose_models, decide, open_tasks

log = logging.getLogger(__name__)
STAGE = "selector"
RUN_TTL_S = 24 * 3600.0
SWEEP_INTERVAL_S = 5.0
OVERDUE_GRACE_S = 5.0  # an executor that finishes right at the deadline still gets its say
TASK_FAILURES = Counter(
    "chorus_selector_task_failures_total",
    "Tasks the selector failed itself, by reason "
    "(invalid_plan, no_candidate, unresolved_input, overdue).",
    ["reason"],
)
RETRIES = Counter(
    "chorus_selector_retries_total",
    "Tasks dispatched again, by reason (overdue, model_gone, executor_error).",
    ["reason"],
)
STRAY_RESULTS = Counter(
    "chorus_selector_stray_results_total",
    "Results that matched no running task, by reason "
    "(unknown_request, finished_request, unknown_task, duplicate, stale_attempt).",
    ["reason"],
)

Publish = Callable[[], Awaitable[None]]
Choices = dict[tuple[int, int], Selection]  # (task id, attempt) -> the model dispatched to


class Selector:
    def __init__(
        self,
        js: JetStreamContext,
        runs: KeyValue,
        registry: WorkerRegistry,
        catalog: Catalog,
        config: SelectorConfig,
        llm: LLM | None,
    ) -> None:
        self._js = js
        self._runs = runs
        self._registry = registry
        self._catalog = catalog
        self._config = config
        self._llm = llm if config.llm_choice else None

    async def handle_plan(self, plan: TaskPlan) -> None:
        state = RunState(started_unix=time.time(), trace_id=trace_id_var.get())
        state.plan.CopyFrom(plan)
        if plan.request.stop_after == StopAfter.STOP_AFTER_PLAN or not plan.tasks:
            await self._report(state)
            return
        state.notes.extend(drop_duplicate_ids(state.plan))
        try:
            await self._runs.get(plan.request_id)
            log.info("plan redelivered; continuing the existing run")
        except KeyNotFoundError as e:
            if _finished(e):
                log.info("plan redelivered after its run finished; ignored")
                return
            await self._choose_models(state)
            try:
                await self._runs.create(plan.request_id, state.SerializeToString())
            except KeyWrongLastSequenceError:
                log.info("another selector replica started this run; continuing it")
        await self._transact(plan.request_id, self._reject_unrunnable)

    async def handle_result(self, result: TaskResult) -> None:
        def record(state: RunState, choices: Choices) -> list[Publish]:
            stray = _stray_reason(state, result)
            if stray:
                STRAY_RESULTS.labels(stray).inc()
                log.warning("result for task %d ignored: %s", result.task_id, stray)
                return []
            started = state.dispatched[result.task_id]
            failed = result.status == TaskStatus.TASK_STATUS_FAILED
            if failed and result.retryable and started.attempt < self._config.task_retries:
                RETRIES.labels("executor_error").inc()
                return self._dispatch(state, _task(state, result.task_id), choices, started)
            return self._finish(state, result)

        await self._transact(result.request_id, record, stray=True)

    async def sweep(self) -> None:
        """Retries or fails dispatched tasks that went overdue or whose model disappeared.

        Any selector replica may sweep; compare-and-set keeps them from clashing. A retried
        attempt's late answer still counts if it succeeded; a late failure is stale.
        """
        for request_id in await self._run_ids():
            request_id_var.set(request_id)
            await self._transact(request_id, self._recover)

    async def _run_ids(self) -> list[str]:
        try:
            return list(await self._runs.keys())
        except NoKeysError:
            return []

    async def _choose_models(self, state: RunState) -> None:
        """Lets the LLM choose, in one call, for every task that has more than one candidate."""
        if self._llm is None:
            return
        text = request_text(state.plan.request)
        facts = RequestFacts.of(text)
        undecided = open_tasks(state.plan.tasks, lambda task: self._rank(task, facts))
        choices = await choose_models(text, undecided, self._llm)
        for task_id, choice in choices.items():
            state.choices[task_id].CopyFrom(choice)

    def _reject_unrunnable(self, state: RunState, choices: Choices) -> list[Publish]:
        effects = []
        for failed in unrunnable_tasks(state.plan):
            if failed.task_id not in state.results:
                TASK_FAILURES.labels("invalid_plan").inc()
                effects += self._finish(state, failed)
        return effects

    def _recover(self, state: RunState, choices: Choices) -> list[Publish]:
        trace_id_var.set(state.trace_id)  # what the sweep publishes joins the request's trace
        now = time.time()
        effects: list[Publish] = []
        for task_id, started in list(state.dispatched.items()):
            if task_id in state.results:
                continue
            overdue = started.deadline_unix and now > started.deadline_unix + OVERDUE_GRACE_S
            retries_left = started.attempt < self._config.task_retries
            if overdue and not retries_left:
                TASK_FAILURES.labels("overdue").inc()
                error = "no result by the task's deadline (its executor may have stopped)"
                effects += self._finish(state, _failed(state, task_id, started, error))
            elif overdue:
                RETRIES.labels("overdue").inc()
                effects += self._dispatch(state, _task(state, task_id), choices, started)
            elif retries_left and self._model_gone(state, started):
                RETRIES.labels("model_gone").inc()
                effects += self._dispatch(state, _task(state, task_id), choices, started)
        return effects

    def _model_gone(self, state: RunState, started: TaskStarted) -> bool:
        """No live replica serves the task's route any more, and another candidate exists."""
        workers = self._registry.serving(started.task)
        served = {m.model for w in workers for m in w.models if m.task == started.task}
        if started.route in served:
            return False
        facts = RequestFacts.of(request_text(state.plan.request))
        return bool(self._rank(started.task, facts))

    async def _transact(
        self,
        request_id: str,
        change: Callable[[RunState, Choices], list[Publish]],
        *,
        stray: bool = False,
    ) -> None:
        """Applies `change` and advances the graph under compare-and-set, retrying on conflict.

        `stray`: the change is a result, which is counted when its run is unknown or over.
        """
        choices: Choices = {}
        while True:
            try:
                entry = await self._runs.get(request_id)
            except KeyNotFoundError as e:
                _count_stray(stray, "finished_request" if _finished(e) else "unknown_request")
                return
            state = RunState.FromString(entry.value or b"")
            effects = change(state, choices) + self._advance(state, choices)
            if not effects:
                # Every change to a run publishes something (an event, an invocation, the
                # report), so no effects means nothing changed: a sweep that found nothing
                # to do, or a duplicate result. No write.
                return
            for publish in effects:
                await publish()
            try:
                if is_complete(state):
                    # The report is out: the run is over. Deleting it keeps the sweep's
                    # listing to live runs; its delete marker tells late messages it finished.
                    await _delete_at(self._runs, request_id, entry.revision)
                else:
                    await self._runs.update(
                        request_id, state.SerializeToString(), last=entry.revision
                    )
                return
            except KeyWrongLastSequenceError:
                continue  # another replica changed the run; redo on the fresh state

    def _advance(self, state: RunState, choices: Choices) -> list[Publish]:
        """Skips blocked tasks, dispatches ready ones, reports when all are done."""
        effects: list[Publish] = []
        changed = True
        while changed:
            changed = False
            for skipped in blocked_tasks(state):
                effects += self._finish(state, skipped)
                changed = True
            for task in ready_tasks(state):
                effects += self._dispatch(state, task, choices)
                changed = True
        if is_complete(state):
            effects.append(lambda: self._report(state))
        return effects

    def _dispatch(
        self,
        state: RunState,
        task: Task,
        choices: Choices,
        previous: TaskStarted | None = None,
    ) -> list[Publish]:
        """Sends the task to the chosen model's replicas; `previous` is the attempt it retries."""
        request_id = state.plan.request_id
        attempt = previous.attempt + 1 if previous else 0
        try:
            args = resolve_args(task, state)
            choice = choices.get((task.id, attempt))
            if choice is None:
                candidates = self._rank(
                    task.task, RequestFacts.of(request_text(state.plan.request))
                )
                llm_choice = state.choices.get(task.id)
                avoid = previous.model if previous else ""
                choice = choices[(task.id, attempt)] = decide(
                    task.task, candidates, llm_choice, avoid
                )
        except (UnresolvedInput, NoCandidate) as e:
            reason = "unresolved_input" if isinstance(e, UnresolvedInput) else "no_candidate"
            TASK_FAILURES.labels(reason).inc()
            return self._finish(state, _failed(state, task.id, previous, str(e)))
        deadline = time.time() + self._config.task_deadline_s
        started = TaskStarted(
            task_id=task.id,
            task=task.task,
            model=choice.model,
            selection_reason=choice.reason,
            deadline_unix=deadline,
            attempt=attempt,
            route=choice.route,
        )
        state.dispatched[task.id].CopyFrom(started)
        invocation = TaskInvocation(
            request_id=request_id,
            task_id=task.id,
            task=task.task,
            model=choice.model,
            args=args,
            attempt=attempt,
            selection_reason=choice.reason,
        )
        invocation.deadline.FromNanoseconds(int(deadline * 1e9))
        event = events.new_event(request_id)
        event.task_started.CopyFrom(started)
        msg_id = f"{request_id}.{task.id}.{attempt}"

        async def publish() -> None:
            subject = subjects.invoke(task.task, choice.route)
            await bus.publish(self._js, subject, invocation, msg_id=f"{msg_id}.invoke")
            await events.publish_event(self._js, event, msg_id=f"{msg_id}.started")

        return [publish]

    def _rank(self, task: str, facts: RequestFacts) -> list[Candidate]:
        return rank(task, facts, self._registry.serving(task), self._catalog, self._config.top_k)

    def _finish(self, state: RunState, result: TaskResult) -> list[Publish]:
        """Records a task's final result and announces it."""
        started = state.dispatched.get(result.task_id)
        if started is not None and not result.selection_reason:  # a verdict of the selector's
            result.selection_reason = started.selection_reason
        state.results[result.task_id].CopyFrom(result)
        event = events.new_event(result.request_id)
        event.task_finished.CopyFrom(result)
        msg_id = f"{result.request_id}.{result.task_id}.finished"
        return [lambda: events.publish_event(self._js, event, msg_id=msg_id)]

    async def _report(self, state: RunState) -> None:
        report = ExecutionReport(
            request_id=state.plan.request_id,
            plan=state.plan,
            execution_seconds=time.time() - state.started_unix,
            notes=state.notes,
        )
        for task in state.plan.tasks:
            if task.id in state.results:  # none when it stopped after planning
                report.results.append(state.results[task.id])
        await bus.publish(self._js, subjects.REPORT, report, msg_id=f"{report.request_id}.report")


async def _delete_at(runs: KeyValue, key: str, revision: int | None) -> None:
    """Compare-and-delete. nats-py's `delete` reports a lost race as a plain bad request
    (10071, wrong last sequence), where `update` raises `KeyWrongLastSequenceError`."""
    try:
        await runs.delete(key, last=revision)
    except BadRequestError as e:
        if e.err_code == 10071:
            raise KeyWrongLastSequenceError(description=e.description) from e
        raise


def _finished(error: KeyNotFoundError) -> bool:
    """Whether the key holds a delete marker (a run that finished), not nothing at all."""
    return error.op is not None


def _count_stray(is_result: bool, reason: str) -> None:
    if is_result:
        STRAY_RESULTS.labels(reason).inc()
        log.warning("result ignored: %s", reason.replace("_", " "))


def _stray_reason(state: RunState, result: TaskResult) -> str:
    """Why a result does not belong to the run as it stands; empty when it does."""
    if result.task_id in state.results:
        return "duplicate"
    if result.task_id not in state.dispatched:
        return "unknown_task"
    late = result.attempt != state.dispatched[result.task_id].attempt
    if late and result.status != TaskStatus.TASK_STATUS_SUCCEEDED:
        return "stale_attempt"  # a retry is out, and its answer decides
    return ""  # even late, an answer is an answer


def _task(state: RunState, task_id: int) -> Task:
    return next(t for t in state.plan.tasks if t.id == task_id)


def _failed(state: RunState, task_id: int, started: TaskStarted | None, error: str) -> TaskResult:
    """The selector's own verdict on a task; `started` is its last attempt, if it had one."""
    return TaskResult(
        request_id=state.plan.request_id,
        task_id=task_id,
        task=_task(state, task_id).task,
        model=started.model if started else "",
        status=TaskStatus.TASK_STATUS_FAILED,
        error=error,
        attempt=started.attempt if started else 0,
    )


async def build(rt: Runtime, stack: AsyncExitStack) -> list[bus.Consumer[Any]]:
    settings = rt.settings
    config = SelectorConfig.from_settings(settings)
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
    llm = open_llm(settings.llm, stack)
    selector = Selector(rt.js, runs, registry, catalog, config, llm)
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
    sweeper = Periodic(selector.sweep, SWEEP_INTERVAL_S, "task sweep")
    sweeper.start()
    stack.push_async_callback(sweeper.stop)
    return [bus.Consumer(rt.js, plans), bus.Consumer(rt.js, results)]
