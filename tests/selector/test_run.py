"""The selector's run rules, with an injected clock and a fake registry: no bus."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from chorus.v1.messages_pb2 import (
    ArtifactRef,
    Kind,
    RunState,
    Task,
    TaskArgument,
    TaskOutput,
    TaskResult,
    TaskStatus,
)

from services.selector.dag import RUN_INLINE_MAX_BYTES
from services.selector.rank import Candidate, Where
from services.selector.run import (
    Cancel,
    Count,
    Effect,
    Emit,
    Invoke,
    Report,
    ResultArrived,
    RunRules,
    Start,
    Tick,
    step,
)

RULES = RunRules(task_deadline_s=20.0, task_retries=1, capacity_wait_s=60.0, overdue_grace_s=5.0)
T0 = 1_000_000.0
E = TypeVar("E")


@dataclass
class FakeReplicas:
    """Which models serve which task types, as the rules see the registry."""

    models: dict[str, list[str]] = field(default_factory=dict)
    synced: bool = True

    def candidates(self, task: str) -> list[Candidate]:
        return [Candidate(m, m, Where.LOCAL, 1, 0.0) for m in self.models.get(task, [])]

    def serves(self, task: str, route: str) -> bool:
        return route in self.models.get(task, [])


def _state(*tasks: Task) -> RunState:
    state = RunState(started_unix=T0)
    state.plan.request_id = "r1"
    state.plan.tasks.extend(tasks)
    return state


def _task(task_id: int, deps: tuple[int, ...] = ()) -> Task:
    return Task(
        id=task_id, task="summarization", deps=deps, args=[TaskArgument(name="text", text="t")]
    )


def _result(
    task_id: int, status: TaskStatus.ValueType, attempt: int = 0, retryable: bool = False
) -> TaskResult:
    result = TaskResult(
        request_id="r1", task_id=task_id, status=status, attempt=attempt, retryable=retryable
    )
    if status == TaskStatus.TASK_STATUS_SUCCEEDED:
        result.outputs.append(TaskOutput(text="done"))
    return result


def _of(kind: type[E], effects: list[Effect]) -> list[E]:
    return [e for e in effects if isinstance(e, kind)]


def _counts(effects: list[Effect]) -> list[tuple[str, str]]:
    return [(c.counter, c.reason) for c in _of(Count, effects)]


SUCCEEDED, FAILED = TaskStatus.TASK_STATUS_SUCCEEDED, TaskStatus.TASK_STATUS_FAILED
LIVE = FakeReplicas({"summarization": ["m/a", "m/b"]})


def test_start_dispatches_ready_tasks_and_records_them_with_their_deadline() -> None:
    state = _state(_task(0), _task(1, deps=(0,)))
    effects = step(state, Start(), T0, RULES, LIVE)
    (invoke,) = _of(Invoke, effects)
    assert (invoke.invocation.task_id, invoke.route, invoke.msg_id) == (0, "m/a", "r1.0.0.invoke")
    assert state.dispatched[0].deadline_unix == T0 + 20.0
    assert 1 not in state.dispatched
    assert [e.event.WhichOneof("event") for e in _of(Emit, effects)] == ["task_started"]


def test_a_result_dispatches_the_next_task_and_the_last_one_reports() -> None:
    state = _state(_task(0), _task(1, deps=(0,)))
    step(state, Start(), T0, RULES, LIVE)
    effects = step(state, ResultArrived(_result(0, SUCCEEDED)), T0 + 1, RULES, LIVE)
    assert [i.invocation.task_id for i in _of(Invoke, effects)] == [1]
    effects = step(state, ResultArrived(_result(1, SUCCEEDED)), T0 + 2, RULES, LIVE)
    (report,) = _of(Report, effects)
    assert [r.task_id for r in report.report.results] == [0, 1]
    assert report.report.execution_seconds == 2.0


def test_a_result_for_a_task_not_dispatched_is_a_stray_and_changes_nothing() -> None:
    state = _state(_task(0))
    before = state.SerializeToString()
    unread = FakeReplicas(synced=False)
    effects = step(state, ResultArrived(_result(0, SUCCEEDED)), T0, RULES, unread)
    assert _counts(effects) == [("stray", "unknown_task")]
    # the registry has not been read: the task is not judged yet, nothing is written
    assert state.SerializeToString() == before


def test_a_late_failure_of_an_earlier_attempt_is_stale_but_a_late_success_counts() -> None:
    state = _state(_task(0))
    step(state, Start(), T0, RULES, LIVE)
    step(state, Tick(), T0 + 26, RULES, LIVE)  # overdue: attempt 1 goes out
    assert state.dispatched[0].attempt == 1
    stale = step(state, ResultArrived(_result(0, FAILED, attempt=0)), T0 + 27, RULES, LIVE)
    assert _counts(stale) == [("stray", "stale_attempt")]
    late = step(state, ResultArrived(_result(0, SUCCEEDED, attempt=0)), T0 + 28, RULES, LIVE)
    assert _of(Report, late) and state.results[0].status == SUCCEEDED


def test_an_overdue_task_is_retried_once_then_failed() -> None:
    state = _state(_task(0))
    step(state, Start(), T0, RULES, LIVE)
    assert not step(state, Tick(), T0 + 24, RULES, LIVE)  # within the grace period
    retry = step(state, Tick(), T0 + 26, RULES, LIVE)
    assert _counts(retry) == [("retry", "overdue")]
    assert _of(Invoke, retry)[0].invocation.model == "m/b"  # away from the one that hung
    verdict = step(state, Tick(), T0 + 26 + 26, RULES, LIVE)
    assert _counts(verdict) == [("failure", "overdue")]
    assert "no result by the task's deadline" in state.results[0].error


def test_a_retryable_failure_goes_to_another_model() -> None:
    state = _state(_task(0))
    step(state, Start(), T0, RULES, LIVE)
    failure = _result(0, FAILED, retryable=True)
    effects = step(state, ResultArrived(failure), T0 + 1, RULES, LIVE)
    assert _counts(effects) == [("retry", "executor_error")]
    (invoke,) = _of(Invoke, effects)
    assert (invoke.invocation.model, invoke.invocation.attempt) == ("m/b", 1)


def test_work_whose_model_left_the_registry_is_retried_on_another() -> None:
    state = _state(_task(0))
    step(state, Start(), T0, RULES, LIVE)
    effects = step(state, Tick(), T0 + 1, RULES, FakeReplicas({"summarization": ["m/b"]}))
    assert _counts(effects) == [("retry", "model_gone")]


def test_a_task_nobody_serves_waits_for_a_replica_and_goes_when_one_comes() -> None:
    state = _state(_task(0))
    nobody = FakeReplicas()
    effects = step(state, Start(), T0, RULES, nobody)
    (waiting,) = _of(Emit, effects)
    assert waiting.event.task_waiting.reason == "waiting for a replica of summarization"
    assert waiting.event.task_waiting.until_unix == T0 + 60.0
    assert _counts(effects) == [("waiting", "no_replica")]
    assert not step(state, Tick(), T0 + 30, RULES, nobody)  # still waiting: nothing to do
    effects = step(state, Tick(), T0 + 31, RULES, LIVE)
    assert [i.invocation.task_id for i in _of(Invoke, effects)] == [0]
    assert 0 not in state.waiting


def test_a_task_that_waited_too_long_fails_with_the_reason() -> None:
    state = _state(_task(0), _task(1, deps=(0,)))
    step(state, Start(), T0, RULES, FakeReplicas())
    effects = step(state, Tick(), T0 + 60, RULES, FakeReplicas())
    assert _counts(effects) == [("failure", "no_candidate")]
    assert state.results[0].error == (
        "no live executor serves 'summarization' (waited 60 s for a replica)"
    )
    assert state.results[1].status == TaskStatus.TASK_STATUS_SKIPPED
    assert _of(Report, effects)


def test_a_registry_not_read_yet_is_not_taken_for_no_replica() -> None:
    state = _state(_task(0))
    unread = FakeReplicas(synced=False)
    assert not step(state, Start(), T0, RULES, unread)
    assert not step(state, Tick(), T0 + 600, RULES, unread)
    assert not state.waiting and not state.results


def test_a_retry_with_no_replica_left_waits_too_and_keeps_its_attempt() -> None:
    state = _state(_task(0))
    step(state, Start(), T0, RULES, LIVE)
    effects = step(state, Tick(), T0 + 26, RULES, FakeReplicas())  # overdue, nobody left
    assert _of(Emit, effects)[0].event.task_waiting.attempt == 1
    effects = step(state, Tick(), T0 + 27, RULES, LIVE)
    (invoke,) = _of(Invoke, effects)
    assert (invoke.invocation.attempt, invoke.invocation.model) == (1, "m/b")


def test_cancel_marks_unfinished_tasks_cancelled_dispatches_nothing_and_reports() -> None:
    state = _state(_task(0), _task(1), _task(2, deps=(0,)))
    step(state, Start(), T0, RULES, LIVE)
    step(state, ResultArrived(_result(1, SUCCEEDED)), T0 + 1, RULES, LIVE)
    effects = step(state, Cancel("client disconnected"), T0 + 2, RULES, LIVE)
    assert not _of(Invoke, effects)
    statuses = {
        r.task_id: TaskStatus.Name(r.status) for r in _of(Report, effects)[0].report.results
    }
    assert statuses == {
        0: "TASK_STATUS_CANCELLED",
        1: "TASK_STATUS_SUCCEEDED",
        2: "TASK_STATUS_CANCELLED",
    }
    assert state.results[0].error == "cancelled: client disconnected"
    assert state.results[0].model == "m/a"  # it was running there


def test_a_bad_plan_finishes_with_a_verdict_for_every_task() -> None:
    state = _state(Task(id=0, task="make-coffee"), _task(1, deps=(0,)))
    effects = step(state, Start(), T0, RULES, LIVE)
    assert _counts(effects) == [("failure", "invalid_plan")]
    assert _of(Report, effects)


def test_a_redelivered_message_sends_recent_dispatches_again_with_their_ids() -> None:
    """A selector that died between recording a dispatch and publishing it: the redelivered
    result finds nothing new, and sends what may not have gone out (NATS drops duplicates)."""
    state = _state(_task(0), _task(1, deps=(0,)))
    step(state, Start(), T0, RULES, LIVE)
    first = step(state, ResultArrived(_result(0, SUCCEEDED)), T0 + 1, RULES, LIVE)
    again = step(state, ResultArrived(_result(0, SUCCEEDED)), T0 + 2, RULES, LIVE)
    assert _counts(again) == [("stray", "duplicate")]
    assert [(i.msg_id, i.invocation) for i in _of(Invoke, again)] == [
        (i.msg_id, i.invocation) for i in _of(Invoke, first)
    ]
    late = step(state, ResultArrived(_result(0, SUCCEEDED)), T0 + 200, RULES, LIVE)
    assert not _of(Invoke, late)  # past the duplicate window a resend would run it twice


def _image_task(task_id: int, source: int | None) -> Task:
    task = Task(id=task_id, task="canny-control")
    arg = task.args.add(name="image")
    if source is None:
        arg.artifact.id = "photo"
    else:
        arg.generated.task_id, arg.generated.kind = source, Kind.KIND_IMAGE
    if source is not None:
        task.deps.append(source)
    return task


def _image_result(task_id: int, inline: bytes) -> TaskResult:
    result = _result(task_id, SUCCEEDED)
    del result.outputs[:]
    ref = ArtifactRef(id=f"f{task_id}", media_type="image/png", kind=Kind.KIND_IMAGE)
    ref.size, ref.inline = len(inline), inline
    result.outputs.add(name="image", artifact=ref)
    return result


def test_inline_bytes_go_to_the_next_task_and_never_into_events_reports_or_the_kept_state() -> None:
    live = FakeReplicas({"canny-control": ["builtin:canny"]})
    state = _state(_image_task(0, None), _image_task(1, 0), _image_task(2, 0))
    step(state, Start(), T0, RULES, live)
    effects = step(state, ResultArrived(_image_result(0, b"png0")), T0 + 1, RULES, live)
    invoked = {i.invocation.task_id: i.invocation for i in _of(Invoke, effects)}
    assert [a.artifact.inline for i in (1, 2) for a in invoked[i].args] == [b"png0", b"png0"]
    (finished,) = [e.event for e in _of(Emit, effects) if e.event.HasField("task_finished")]
    assert finished.task_finished.outputs[0].artifact.id == "f0"
    assert not finished.task_finished.outputs[0].artifact.inline
    assert not state.results[0].outputs[0].artifact.inline  # both dependents have it: dropped
    step(state, ResultArrived(_image_result(1, b"png1")), T0 + 2, RULES, live)
    effects = step(state, ResultArrived(_image_result(2, b"png2")), T0 + 3, RULES, live)
    (report,) = _of(Report, effects)
    assert [o.artifact.id for r in report.report.results for o in r.outputs] == ["f0", "f1", "f2"]
    assert not any(o.artifact.inline for r in report.report.results for o in r.outputs)


def test_inline_bytes_wait_in_the_state_for_a_dependent_within_a_bound() -> None:
    live = FakeReplicas({"canny-control": ["builtin:canny"]})
    fan_in = _image_task(9, 0)
    fan_in.deps.extend([1, 2])
    state = _state(_image_task(0, None), _image_task(1, None), _image_task(2, None), fan_in)
    step(state, Start(), T0, RULES, live)
    step(state, ResultArrived(_image_result(0, b"png0")), T0 + 1, RULES, live)
    assert state.results[0].outputs[0].artifact.inline == b"png0"  # task 9 still waits
    fan_in.args.add(name="mask").generated.task_id = 1  # task 9 takes task 1's file too
    state.plan.tasks[-1].CopyFrom(fan_in)
    step(state, ResultArrived(_image_result(1, bytes(RUN_INLINE_MAX_BYTES))), T0 + 2, RULES, live)
    # Wanted too, but past the bound: task 9 will read that one from the store.
    assert state.results[0].outputs[0].artifact.inline == b"png0"
    assert not state.results[1].outputs[0].artifact.inline
