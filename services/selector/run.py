"""Stage 2b, running one request's task graph: the selector's rules as a pure core.

`step` takes a run's state, one event (its plan accepted, a result, a tick of the clock or of
the worker registry, a cancel) and the current time; it changes the state in place and returns
what to do as plain data (invoke a model, emit a progress event, report, count). No NATS, no
clock of its own: `services/selector/service.py` runs it inside a compare-and-set transaction
on the run's KV entry and carries the effects out once the new state is written, so a result
can never arrive for a dispatch the state does not record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from chorus.v1.messages_pb2 import (
    ExecutionReport,
    ProgressEvent,
    RunState,
    Task,
    TaskArgument,
    TaskInvocation,
    TaskResult,
    TaskStarted,
    TaskStatus,
    TaskWaiting,
)

from services.common.artifact_refs import drop_inline
from services.selector.dag import (
    UnresolvedInput,
    blocked_tasks,
    drop_spent_inline,
    is_complete,
    ready_tasks,
    resolve_args,
    unrunnable_tasks,
)
from services.selector.rank import Candidate
from services.selector.select import NoCandidate, decide

# Invocations are sent again only this soon after their dispatch: well within the work
# stream's two-minute duplicate window, so a send that had gone out is dropped by NATS.
RESEND_WITHIN_S = 90.0


@dataclass(frozen=True)
class RunRules:
    """The selector's settings that the rules read."""

    task_deadline_s: float  # from dispatch to result, queueing included
    task_retries: int  # further attempts after an overdue task, a lost model, an executor error
    capacity_wait_s: float  # how long a ready task waits for a replica of its type
    overdue_grace_s: float = 5.0  # an executor that finishes right at the deadline has its say


class Replicas(Protocol):
    """What the rules read of the live worker registry, for one request."""

    @property
    def synced(self) -> bool:
        """Whether the registry has been read since the selector (re)connected: before that,
        no candidate means "not read yet", not "nobody serves this"."""
        ...

    def candidates(self, task: str) -> list[Candidate]:
        """The models that can run `task` now, best first."""
        ...

    def serves(self, task: str, route: str) -> bool:
        """Whether a live replica takes `task` on `route`."""
        ...


# Events: what happened to a run.
@dataclass(frozen=True)
class Start:
    """The run's state was just created from its plan."""


@dataclass(frozen=True)
class ResultArrived:
    result: TaskResult


@dataclass(frozen=True)
class Tick:
    """Time passed (the sweep) or the registry changed: deadlines, lost models, capacity."""


@dataclass(frozen=True)
class Cancel:
    reason: str


Event = Start | ResultArrived | Tick | Cancel


# Effects: what the service does once the new state is written.
@dataclass(frozen=True)
class Invoke:
    task: str
    route: str
    invocation: TaskInvocation
    msg_id: str


@dataclass(frozen=True)
class Emit:
    event: ProgressEvent
    msg_id: str


@dataclass(frozen=True)
class Report:
    report: ExecutionReport


Metric = Literal["stray", "failure", "retry", "waiting"]


@dataclass(frozen=True)
class Count:
    """One for a selector metric: `counter` names it, `reason` is its label."""

    counter: Metric
    reason: str
    task_id: int


Effect = Invoke | Emit | Report | Count


def step(
    state: RunState, event: Event, now: float, rules: RunRules, replicas: Replicas
) -> list[Effect]:
    """Applies `event` to `state` (in place) and advances the graph; returns what to do."""
    run = _Run(state, now, rules, replicas)
    match event:
        case Start():
            run.reject_unrunnable()
            run.resend_recent()  # a redelivered plan: its first dispatches may not have gone out
        case ResultArrived(result):
            run.record(result)
        case Tick():
            run.recover()
        case Cancel(reason):
            run.cancel(reason)
    run.advance()
    drop_spent_inline(state)  # after the dispatches, which carried what they needed
    return run.effects


def report_of(state: RunState, now: float) -> ExecutionReport:
    """What the run did, for the responder: every task's result, in the plan's order."""
    report = ExecutionReport(
        request_id=state.plan.request_id,
        plan=state.plan,
        execution_seconds=max(0.0, now - state.started_unix),
        notes=state.notes,
    )
    for task in state.plan.tasks:
        if task.id in state.results:  # none when it stopped after planning
            report.results.append(state.results[task.id])
            drop_inline(report.results[-1])
    return report


def stray_reason(state: RunState, result: TaskResult) -> str:
    """Why a result does not belong to the run as it stands; empty when it does."""
    task_id = result.task_id
    succeeded = result.status == TaskStatus.TASK_STATUS_SUCCEEDED
    if task_id in state.results:
        return "duplicate"
    if task_id in state.waiting and state.waiting[task_id].attempt > 0:
        # The task waits for a replica to retry on; an earlier attempt's answer still counts.
        return "" if succeeded else "stale_attempt"
    if task_id not in state.dispatched:
        return "unknown_task"
    if result.attempt != state.dispatched[task_id].attempt and not succeeded:
        return "stale_attempt"  # a retry is out, and its answer decides
    return ""  # even late, an answer is an answer


class _Run:
    """One step's working set: the state it changes and the effects it collects."""

    def __init__(self, state: RunState, now: float, rules: RunRules, replicas: Replicas) -> None:
        self.state = state
        self.now = now
        self.rules = rules
        self.replicas = replicas
        self.effects: list[Effect] = []
        self._tasks = {t.id: t for t in state.plan.tasks}

    def reject_unrunnable(self) -> None:
        for failed in unrunnable_tasks(self.state.plan):
            if failed.task_id not in self.state.results:
                self._count("failure", "invalid_plan", failed.task_id)
                self.finish(failed)

    def record(self, result: TaskResult) -> None:
        stray = stray_reason(self.state, result)
        if stray == "duplicate":  # often a redelivery: what it caused may not have gone out
            self.resend_recent()
        if stray:
            self._count("stray", stray, result.task_id)
            return
        started = self.state.dispatched.get(result.task_id)
        failed = result.status == TaskStatus.TASK_STATUS_FAILED
        if started and failed and result.retryable and started.attempt < self.rules.task_retries:
            self._count("retry", "executor_error", result.task_id)
            self.dispatch(self._tasks[result.task_id], started)
            return
        self.finish(result)

    def recover(self) -> None:
        """Retries or fails dispatched tasks that went overdue or whose model disappeared.

        A retried attempt's late answer still counts if it succeeded; a late failure is stale.
        """
        for task_id, started in list(self.state.dispatched.items()):
            if task_id in self.state.results:
                continue
            deadline = started.deadline_unix + self.rules.overdue_grace_s
            overdue = started.deadline_unix and self.now > deadline
            retries_left = started.attempt < self.rules.task_retries
            if overdue and not retries_left:
                self._count("failure", "overdue", task_id)
                error = "no result by the task's deadline (its executor may have stopped)"
                self.finish(self._failed(task_id, started, error))
            elif overdue:
                self._count("retry", "overdue", task_id)
                self.dispatch(self._tasks[task_id], started)
            elif retries_left and self._model_gone(started):
                self._count("retry", "model_gone", task_id)
                self.dispatch(self._tasks[task_id], started)

    def cancel(self, reason: str) -> None:
        """Every unfinished task is cancelled; nothing more is dispatched."""
        for task in self.state.plan.tasks:
            if task.id in self.state.results:
                continue
            started = self.state.dispatched.get(task.id)
            result = self._failed(task.id, started, f"cancelled: {reason or 'no reason given'}")
            result.status = TaskStatus.TASK_STATUS_CANCELLED
            self.finish(result)
        self.state.waiting.clear()

    def advance(self) -> None:
        """Skips blocked tasks, dispatches ready ones, reports when all are done."""
        changed = True
        while changed:
            changed = False
            for skipped in blocked_tasks(self.state):
                self.finish(skipped)
                changed = True
            for task in ready_tasks(self.state):
                changed |= self.dispatch(task)
        if is_complete(self.state):
            self.effects.append(Report(report_of(self.state, self.now)))

    def dispatch(self, task: Task, previous: TaskStarted | None = None) -> bool:
        """Sends the task to the best model's replicas; `previous` is the attempt it retries.

        Returns whether the task left the ready set (dispatched or failed); a task that waits
        for a replica stays ready.
        """
        waiting = self.state.waiting.get(task.id)
        attempt = previous.attempt + 1 if previous else waiting.attempt if waiting else 0
        avoid = previous.model if previous else waiting.avoid if waiting else ""
        try:
            args = resolve_args(task, self.state)
            candidates = self.replicas.candidates(task.task)
            choice = decide(task.task, candidates, self.state.choices.get(task.id), avoid)
        except UnresolvedInput as e:
            self._count("failure", "unresolved_input", task.id)
            self.finish(self._failed(task.id, previous, str(e)))
            return True
        except NoCandidate as e:
            return self._wait_for_capacity(task, attempt, avoid, previous, str(e))
        self.state.waiting.pop(task.id, None)
        started = TaskStarted(
            task_id=task.id,
            task=task.task,
            model=choice.model,
            selection_reason=choice.reason,
            deadline_unix=self.now + self.rules.task_deadline_s,
            attempt=attempt,
            route=choice.route,
        )
        self.state.dispatched[task.id].CopyFrom(started)
        self._send(task, started, args)
        return True

    def resend_recent(self) -> None:
        """Sends again the invocations of tasks dispatched within the dedup window.

        A selector that stopped between writing a dispatch and publishing it leaves the task
        recorded but never sent; the message that caused the dispatch is redelivered and finds
        nothing new to do. Sending again with the same message ids costs nothing where the
        first send went out (NATS drops the duplicate) and saves the task's deadline where not.
        """
        for task_id, started in self.state.dispatched.items():
            sent_at = started.deadline_unix - self.rules.task_deadline_s
            if task_id in self.state.results or self.now - sent_at > RESEND_WITHIN_S:
                continue
            task = self._tasks[task_id]
            try:
                args = resolve_args(task, self.state)
            except UnresolvedInput:
                continue  # it was sent, so its inputs existed: nothing to repair here
            self._send(task, started, args)

    def _send(self, task: Task, started: TaskStarted, args: list[TaskArgument]) -> None:
        request_id = self.state.plan.request_id
        invocation = TaskInvocation(
            request_id=request_id,
            task_id=task.id,
            task=task.task,
            model=started.model,
            args=args,
            attempt=started.attempt,
            selection_reason=started.selection_reason,
        )
        invocation.deadline.FromNanoseconds(int(started.deadline_unix * 1e9))
        msg_id = f"{request_id}.{task.id}.{started.attempt}"
        self.effects.append(Invoke(task.task, started.route, invocation, f"{msg_id}.invoke"))
        event = self._event()
        event.task_started.CopyFrom(started)
        self.effects.append(Emit(event, f"{msg_id}.started"))

    def _wait_for_capacity(
        self, task: Task, attempt: int, avoid: str, previous: TaskStarted | None, error: str
    ) -> bool:
        """No live replica serves the task: it waits (a bounded time) for one to come."""
        if not self.replicas.synced:
            return False  # the registry is not read yet: no verdict, no event
        waiting = self.state.waiting.get(task.id)
        if waiting is None:
            waiting = self.state.waiting[task.id]
            waiting.MergeFrom(
                TaskWaiting(
                    task_id=task.id,
                    task=task.task,
                    since_unix=self.now,
                    until_unix=self.now + self.rules.capacity_wait_s,
                    reason=f"waiting for a replica of {task.task}",
                    attempt=attempt,
                    avoid=avoid,
                )
            )
            self.state.dispatched.pop(task.id, None)  # a retry waits like a first attempt
            self._count("waiting", "no_replica", task.id)
            event = self._event()
            event.task_waiting.CopyFrom(waiting)
            self.effects.append(Emit(event, f"{self.state.plan.request_id}.{task.id}.waiting"))
            return False
        if self.now < waiting.until_unix:
            return False
        self.state.waiting.pop(task.id)
        self._count("failure", "no_candidate", task.id)
        waited = f"{error} (waited {self.rules.capacity_wait_s:g} s for a replica)"
        self.finish(self._failed(task.id, previous, waited, attempt))
        return True

    def _model_gone(self, started: TaskStarted) -> bool:
        """No live replica serves the task's route any more, and another candidate exists."""
        if self.replicas.serves(started.task, started.route):
            return False
        return bool(self.replicas.candidates(started.task))

    def finish(self, result: TaskResult) -> None:
        """Records a task's final result and announces it."""
        started = self.state.dispatched.get(result.task_id)
        if started is not None and not result.selection_reason:  # a verdict of the selector's
            result.selection_reason = started.selection_reason
        self.state.results[result.task_id].CopyFrom(result)
        self.state.waiting.pop(result.task_id, None)
        event = self._event()
        event.task_finished.CopyFrom(result)
        drop_inline(event.task_finished)
        self.effects.append(Emit(event, f"{result.request_id}.{result.task_id}.finished"))

    def _failed(
        self, task_id: int, started: TaskStarted | None, error: str, attempt: int | None = None
    ) -> TaskResult:
        """The selector's own verdict on a task; `started` is its last attempt, if it had one."""
        return TaskResult(
            request_id=self.state.plan.request_id,
            task_id=task_id,
            task=self._tasks[task_id].task,
            model=started.model if started else "",
            status=TaskStatus.TASK_STATUS_FAILED,
            error=error,
            attempt=attempt if attempt is not None else started.attempt if started else 0,
        )

    def _event(self) -> ProgressEvent:
        event = ProgressEvent(request_id=self.state.plan.request_id)
        event.time.FromNanoseconds(int(self.now * 1e9))
        return event

    def _count(self, counter: Metric, reason: str, task_id: int) -> None:
        self.effects.append(Count(counter, reason, task_id))
