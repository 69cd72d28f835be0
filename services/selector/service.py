"""The selector on the bus: owns each request's task graph in a KV bucket, updated by CAS.

Consumes `chorus.plan`, `chorus.result` and `chorus.cancel.>`; publishes
`chorus.invoke.<task>.<route>`, progress events and `chorus.report`. The rules live in
`run.py`; here each event runs one compare-and-set transaction on the run's entry, and what
the rules decided goes out only once the new state is written (record, then dispatch): a
result can never overtake the record of its dispatch, and a lost race publishes nothing. A
finished run is the exception: its report goes out before the entry is deleted, so a crash in
between repeats the report (deduplicated by its message id) instead of losing it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from chorus.v1.messages_pb2 import (
    CancelRequest,
    ErrorCode,
    RunState,
    StopAfter,
    TaskPlan,
    TaskResult,
)
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    BadRequestError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
)
from nats.js.kv import KeyValue
from prometheus_client import Counter, Gauge

from services.common import bus, events, subjects, tracing
from services.common.llm import LLM, open_llm
from services.common.periodic import Periodic
from services.common.resources import request_text
from services.common.runtime import Runtime
from services.common.settings import SettingsError
from services.common.tasks import MAX_PLAN_TASKS
from services.common.telemetry import request_id_var
from services.common.workers import WorkerRegistry
from services.selector.catalog import Catalog, CatalogError, load_catalog
from services.selector.config import SelectorConfig
from services.selector.dag import drop_duplicate_ids, is_complete
from services.selector.rank import Candidate, RequestFacts, rank
from services.selector.run import (
    Cancel,
    Count,
    Effect,
    Emit,
    Event,
    Invoke,
    Report,
    ResultArrived,
    RunRules,
    Start,
    Tick,
    report_of,
    step,
)
from services.selector.select import OpenTask, choose_models, open_tasks

log = logging.getLogger(__name__)
STAGE = "selector"
RUN_TTL_S = 24 * 3600.0
SWEEP_INTERVAL_S = 5.0
OVERDUE_GRACE_S = 5.0  # an executor that finishes right at the deadline still gets its say
RUNS_KEPT = 10_000  # runs whose last written state (a few KiB) and request facts a replica keeps
COUNTERS = {
    "failure": Counter(
        "chorus_selector_task_failures_total",
        "Tasks the selector failed itself, by reason "
        "(invalid_plan, no_candidate, unresolved_input, overdue).",
        ["reason"],
    ),
    "retry": Counter(
        "chorus_selector_retries_total",
        "Tasks dispatched again, by reason (overdue, model_gone, executor_error).",
        ["reason"],
    ),
    "stray": Counter(
        "chorus_selector_stray_results_total",
        "Results that matched no running task, by reason "
        "(unknown_request, finished_request, unknown_task, duplicate, stale_attempt).",
        ["reason"],
    ),
    "waiting": Counter(
        "chorus_selector_capacity_waits_total",
        "Ready tasks that began waiting for a replica of their type, by reason (no_replica).",
        ["reason"],
    ),
}
STRAY_CANCELS = Counter(
    "chorus_selector_stray_cancels_total",
    "Cancels that matched no running request, by reason (unknown_request, finished_request).",
    ["reason"],
)
WAITING_TASKS = Gauge(
    "chorus_selector_waiting_tasks",
    "Ready tasks waiting for a replica of their type, by task type, as of the last sweep "
    "(every selector replica sweeps every run: aggregate with max). KEDA scales an executor "
    "group up from zero on it.",
    ["task"],
)
STATE_CONFLICTS = Counter(
    "chorus_selector_state_conflicts_total",
    "Steps that found another selector replica (or sweep) had moved the run on since this one "
    "wrote it, by how: refused (a compare-and-set write was refused) or stale (the state this "
    "replica kept gave nothing to write, and the read that followed found it out of date). "
    "Each costs a read of the run and its step again.",
    ["how"],
)
BAD_RUN_STATE = Counter(
    "chorus_selector_bad_run_state_total",
    "Run-state entries that did not decode: the request is failed and the entry deleted.",
)


K = TypeVar("K")
V = TypeVar("V")


class PlanTooLarge(bus.PermanentError):
    code = ErrorCode.ERROR_CODE_PAYLOAD_TOO_LARGE


class _Recent(Generic[K, V]):
    """A map that keeps its `kept` most recently used entries: what a replica remembers of
    the runs it last handled. A run that falls out is read or worked out again."""

    def __init__(self, kept: int) -> None:
        self._kept = kept
        self._entries: collections.OrderedDict[K, V] = collections.OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def pop(self, key: K) -> V | None:
        return self._entries.pop(key, None)

    def put(self, key: K, value: V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self._kept:
            self._entries.popitem(last=False)


@dataclass
class _LiveReplicas:
    """The worker registry as one request's rules see it (`run.Replicas`)."""

    registry: WorkerRegistry
    catalog: Catalog
    state: RunState
    known: _Recent[str, RequestFacts]
    top_k: int

    @property
    def synced(self) -> bool:
        return self.registry.synced

    def candidates(self, task: str) -> list[Candidate]:
        return rank(task, self._facts(), self.registry.serving(task), self.catalog, self.top_k)

    def _facts(self) -> RequestFacts:
        """Worked out once per request by each replica: the request's language is a fastText
        prediction that cost 4 % of the selector's CPU when made at every step. The facts
        follow from the request's text alone, so another replica or a redelivery works out
        the same."""
        request_id = self.state.plan.request_id
        facts = self.known.get(request_id)
        if facts is None:
            facts = RequestFacts.of(request_text(self.state.plan.request))
            self.known.put(request_id, facts)
        return facts

    def serves(self, task: str, route: str) -> bool:
        workers = self.registry.serving(task)
        return any(m.task == task and m.model == route for w in workers for m in w.models)


class Selector:
    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        runs: KeyValue,
        registry: WorkerRegistry,
        catalog: Catalog,
        config: SelectorConfig,
        llm: LLM | None,
    ) -> None:
        self._nc = nc
        self._js = js
        self._runs = runs
        self._registry = registry
        self._catalog = catalog
        self._config = config
        self._llm = llm if config.llm_choice else None
        # The last state this replica wrote of each run, with its revision: the next step
        # writes on top of it with compare-and-set and reads only when another replica moved
        # the run on (the write is refused) or the run is not here (another replica's run).
        self._written: _Recent[str, tuple[int, bytes]] = _Recent(RUNS_KEPT)
        self._request_facts: _Recent[str, RequestFacts] = _Recent(RUNS_KEPT)

    @property
    def _rules(self) -> RunRules:  # a property: tests shorten OVERDUE_GRACE_S
        config = self._config
        return RunRules(
            config.task_deadline_s, config.task_retries, config.capacity_wait_s, OVERDUE_GRACE_S
        )

    async def handle_plan(self, plan: TaskPlan) -> None:
        if len(plan.tasks) > MAX_PLAN_TASKS:
            raise PlanTooLarge(f"the plan has {len(plan.tasks)} tasks, more than {MAX_PLAN_TASKS}")
        state = RunState(started_unix=time.time(), trace_id=tracing.current_traceparent())
        state.plan.CopyFrom(plan)
        if plan.request.stop_after == StopAfter.STOP_AFTER_PLAN or not plan.tasks:
            await self._carry_out([Report(report_of(state, time.time()))])
            return
        state.notes.extend(drop_duplicate_ids(state.plan))
        if not await self._start_run(state):
            # A redelivered plan: a selector that stopped between creating the run and sending
            # its first invocations left them unsent, and starting again is idempotent.
            await self._transact(plan.request_id, Start(), missing=_finished_plan)

    async def handle_result(self, result: TaskResult) -> None:
        await self._transact(result.request_id, ResultArrived(result), missing=_stray_result)

    async def handle_cancel(self, cancel: CancelRequest) -> None:
        await self._transact(cancel.request_id, Cancel(cancel.reason), missing=_stray_cancel)

    async def sweep(self) -> None:
        """Retries or fails overdue tasks and tasks whose model disappeared; dispatches tasks
        that waited for a replica which has come; fails those that waited too long.

        Any selector replica may sweep; compare-and-set keeps them from clashing.
        """
        waiting: collections.Counter[str] = collections.Counter()
        for request_id in await self._run_ids():
            request_id_var.set(request_id)
            state = await self._transact(request_id, Tick())
            if state is not None:
                waiting.update(w.task for w in state.waiting.values())
        WAITING_TASKS.clear()
        for task, count in waiting.items():
            WAITING_TASKS.labels(task).set(count)

    async def _run_ids(self) -> list[str]:
        try:
            return list(await self._runs.keys())
        except NoKeysError:
            return []

    async def _start_run(self, state: RunState) -> bool:
        """Creates the run with its first step taken, in one write, and carries that step out.
        False, with nothing written or sent, where its request has a run already or had one
        that finished (a redelivered plan)."""
        request_id = state.plan.request_id
        if self._llm is not None and (undecided := self._undecided(state)):
            # Asking the LLM again for a redelivered plan would be wasted: look for a run first.
            if await self._has_entry(request_id):
                return False
            # One call chooses for every task that has more than one candidate.
            text = request_text(state.plan.request)
            for task_id, choice in (await choose_models(text, undecided, self._llm)).items():
                state.choices[task_id].CopyFrom(choice)
        effects = step(state, Start(), time.time(), self._rules, self._replicas(state))
        value = state.SerializeToString(deterministic=True)
        try:
            # Refused where the key holds anything, a finished run's delete marker included.
            revision = await self._runs.update(request_id, value, last=0)
        except KeyWrongLastSequenceError:
            return False
        self._written.put(request_id, (revision, value))
        await self._carry_out(effects)
        if is_complete(state):  # no task could start: the report is out, the run is over
            with contextlib.suppress(KeyWrongLastSequenceError):  # a sweep deletes it then
                await _delete_at(self._runs, request_id, revision)
        return True

    async def _has_entry(self, request_id: str) -> bool:
        try:
            await self._runs.get(request_id)
        except KeyNotFoundError as e:
            return _finished(e)
        return True

    def _undecided(self, state: RunState) -> list[OpenTask]:
        """The tasks of a new run that the LLM may choose a model for."""
        replicas = self._replicas(state)
        return open_tasks(state.plan.tasks, lambda task: replicas.candidates(task))

    def _replicas(self, state: RunState) -> _LiveReplicas:
        return _LiveReplicas(
            self._registry, self._catalog, state, self._request_facts, self._config.top_k
        )

    async def _transact(
        self, request_id: str, event: Event, *, missing: Callable[[str], None] | None = None
    ) -> RunState | None:
        """Applies `event` to the run under compare-and-set, retrying on conflict, and carries
        out what the rules decided once the new state is written.

        `missing(reason)` counts an event for a run that is unknown or over. Returns the run's
        state as it now stands, if it still runs.
        """
        stale_at: int | None = None  # the revision of a kept state that is read afresh
        while True:
            known = self._written.pop(request_id)
            kept = known is not None
            if known is None:
                try:
                    entry = await self._runs.get(request_id)
                except KeyNotFoundError as e:
                    if missing is not None:
                        missing("finished_request" if _finished(e) else "unknown_request")
                    return None
                known = (entry.revision or 0, entry.value or b"")
                if stale_at is not None and known[0] != stale_at:
                    STATE_CONFLICTS.labels("stale").inc()
            revision, value = known
            try:
                state = RunState.FromString(value)
            except DecodeError as e:
                await self._discard_bad_state(request_id, revision, e)
                return None
            # What a sweep publishes joins the request's trace (`trace_id` holds a traceparent).
            with tracing.joined(state.trace_id, "selector sweep"):
                before = state.SerializeToString(deterministic=True)
                effects = step(state, event, time.time(), self._rules, self._replicas(state))
                value = state.SerializeToString(deterministic=True)  # also what is written
                unchanged = value == before
                if kept and (unchanged or is_complete(state)):
                    # Only a write would show that the kept state is stale; with none to come
                    # (a stray, or a report that goes out before the delete) read it afresh.
                    stale_at = revision
                    continue
                if unchanged:
                    await self._carry_out(effects)  # only counts: a stray, nothing to do
                    return state
                try:
                    if is_complete(state):
                        # The report goes out first: once the entry is gone, nothing could send
                        # it. Its delete marker tells late messages that the run finished.
                        await self._carry_out(effects)
                        await _delete_at(self._runs, request_id, revision)
                        return None
                    written = await self._runs.update(request_id, value, last=revision)
                    self._written.put(request_id, (written, value))
                    await self._carry_out(effects)
                    return state
                except KeyWrongLastSequenceError:
                    STATE_CONFLICTS.labels("refused").inc()
                    continue  # another replica changed the run; redo on the fresh state

    async def _carry_out(self, effects: list[Effect]) -> None:
        """Sends the messages of `effects` in this order: the invocations, which move the
        request on, then the progress events, which wait for no ack (events.py), then the
        report; the acks of the invocations and the report are awaited together. One
        connection keeps that order on the server: every `task_finished` is there before the
        report, and so before the responder's `done` that the report leads to."""
        forward: list[Awaitable[None]] = []
        progress: list[Awaitable[None]] = []
        last: list[Awaitable[None]] = []
        for effect in effects:
            match effect:
                case Invoke(task, route, invocation, msg_id):
                    subject = subjects.invoke(task, route)
                    forward.append(bus.publish(self._js, subject, invocation, msg_id=msg_id))
                case Emit(event, msg_id):
                    progress.append(events.publish_event(self._nc, event, msg_id=msg_id))
                case Report(report):
                    msg_id = f"{report.request_id}.report"
                    last.append(bus.publish(self._js, subjects.REPORT, report, msg_id=msg_id))
                case Count(counter, reason, task_id):
                    COUNTERS[counter].labels(reason).inc()
                    if counter == "stray":
                        log.warning("result for task %d ignored: %s", task_id, reason)
        await bus.pipelined([*forward, *progress, *last])

    async def _discard_bad_state(
        self, request_id: str, revision: int | None, error: Exception
    ) -> None:
        """One entry that does not decode must not stall the sweep or its request: the request
        is failed, so its client hears of it, and the entry goes."""
        BAD_RUN_STATE.inc()
        log.error("run state of %s does not decode (%s); the request is failed", request_id, error)
        await events.fail(
            self._js,
            request_id,
            stage=STAGE,
            code=ErrorCode.ERROR_CODE_INTERNAL,
            message="the selector's record of this request was unreadable",
        )
        # A lost race means it was rewritten meanwhile: the next look judges it again.
        with contextlib.suppress(KeyWrongLastSequenceError):
            await _delete_at(self._runs, request_id, revision)


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


def _finished_plan(_: str) -> None:
    log.info("plan redelivered after its run finished; ignored")


def _stray_result(reason: str) -> None:
    COUNTERS["stray"].labels(reason).inc()
    log.warning("result ignored: %s", reason.replace("_", " "))


def _stray_cancel(reason: str) -> None:
    STRAY_CANCELS.labels(reason).inc()
    log.info("cancel ignored: %s", reason.replace("_", " "))


async def open_runs(js: JetStreamContext, replicas: int) -> KeyValue:
    """The bucket of run states, one entry per running request."""
    config = KeyValueConfig(
        bucket=subjects.RUN_STATE_BUCKET,
        history=1,
        ttl=RUN_TTL_S,
        storage=StorageType.FILE,
        replicas=replicas,
    )
    return await bus.open_key_value(js, config)


async def build(rt: Runtime, stack: AsyncExitStack) -> list[bus.Consumer[Any]]:
    settings = rt.settings
    config = SelectorConfig.from_settings(settings)
    runs = await open_runs(rt.js, settings.stream_replicas)
    registry = await WorkerRegistry.watch(rt.js, settings.worker_ttl_s, settings.stream_replicas)
    stack.push_async_callback(registry.stop)
    try:
        catalog = load_catalog(settings.env)
    except (CatalogError, OSError) as e:
        raise SettingsError(f"model catalog: {e}") from e
    log.info("model catalog: %d models", len(catalog.entries))
    llm = open_llm(settings.llm, stack)
    selector = Selector(rt.nc, rt.js, runs, registry, catalog, config, llm)
    give_up = events.fail_on_give_up(rt.js, STAGE)

    plans = bus.ConsumerSpec(
        stage=STAGE,
        subject=subjects.PLAN,
        durable="selector-plans",
        message_type=TaskPlan,
        handle=selector.handle_plan,
        give_up=give_up,
    )
    results = bus.ConsumerSpec(
        stage=STAGE,
        subject=subjects.RESULT,
        durable="selector-results",
        message_type=TaskResult,
        handle=selector.handle_result,
        give_up=give_up,
    )
    cancels = bus.ConsumerSpec(
        stage=STAGE,
        subject=f"{subjects.CANCEL_PREFIX}.>",
        durable="selector-cancels",
        message_type=CancelRequest,
        handle=selector.handle_cancel,
        give_up=give_up,
    )
    sweeper = Periodic(selector.sweep, SWEEP_INTERVAL_S, "task sweep")
    # A replica of a task type that had none: tasks waiting for it go now, not at the next sweep.
    registry.on_capacity(sweeper.wake)
    sweeper.start()
    stack.push_async_callback(sweeper.stop)
    return [bus.Consumer(rt.js, plans), bus.Consumer(rt.js, results), bus.Consumer(rt.js, cancels)]
