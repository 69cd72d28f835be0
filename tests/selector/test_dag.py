from __future__ import annotations

import pytest
from chorus.v1.messages_pb2 import (
    ArtifactRef,
    GeneratedRef,
    Kind,
    RunState,
    Task,
    TaskArgument,
    TaskOutput,
    TaskPlan,
    TaskResult,
    TaskStarted,
    TaskStatus,
)

from services.selector.dag import (
    UnresolvedInput,
    blocked_tasks,
    dependencies,
    drop_duplicate_ids,
    is_complete,
    ready_tasks,
    resolve_args,
    unrunnable_tasks,
)


def _state() -> RunState:
    """0 -> 2 <- 1, and 3 independent: a small diamond-ish graph."""
    state = RunState()
    state.plan.request_id = "r"
    image_of_0 = TaskArgument(name="image", generated=GeneratedRef(task_id=0, kind=Kind.KIND_IMAGE))
    text_of_1 = TaskArgument(name="text", generated=GeneratedRef(task_id=1, kind=Kind.KIND_TEXT))
    state.plan.tasks.extend(
        [
            Task(id=0, task="canny-control"),
            Task(id=1, task="summarization", args=[TaskArgument(name="text", text="long")]),
            Task(id=2, task="canny-text-to-image", deps=[0, 1], args=[text_of_1, image_of_0]),
            Task(id=3, task="translation"),
        ]
    )
    return state


def _done(
    state: RunState, task_id: int, status: TaskStatus.ValueType, *outputs: TaskOutput
) -> None:
    state.results[task_id].CopyFrom(TaskResult(task_id=task_id, status=status, outputs=outputs))


def test_independent_tasks_are_ready_at_once() -> None:
    assert [t.id for t in ready_tasks(_state())] == [0, 1, 3]


def test_a_task_starts_when_all_its_inputs_exist() -> None:
    state = _state()
    state.dispatched[1].CopyFrom(TaskStarted(task_id=1))
    state.dispatched[3].CopyFrom(TaskStarted(task_id=3))
    edges = ArtifactRef(id="e.png", name="e.png", kind=Kind.KIND_IMAGE)
    _done(state, 0, TaskStatus.TASK_STATUS_SUCCEEDED, TaskOutput(name="image", artifact=edges))
    assert ready_tasks(state) == []  # task 1 is still running
    _done(state, 1, TaskStatus.TASK_STATUS_SUCCEEDED, TaskOutput(name="text", text="short"))
    (task,) = ready_tasks(state)
    text, image = resolve_args(task, state)
    assert text.text == "short" and image.artifact.id == "e.png"


def test_a_failed_dependency_skips_its_dependents_at_once() -> None:
    state = _state()
    _done(state, 0, TaskStatus.TASK_STATUS_FAILED)
    (skipped,) = blocked_tasks(state)
    assert skipped.task_id == 2 and skipped.status == TaskStatus.TASK_STATUS_SKIPPED
    assert "task 0" in skipped.error
    assert not is_complete(state)


def test_an_output_of_the_wrong_kind_does_not_resolve() -> None:
    state = _state()
    _done(state, 0, TaskStatus.TASK_STATUS_SUCCEEDED, TaskOutput(name="text", text="no image"))
    _done(state, 1, TaskStatus.TASK_STATUS_SUCCEEDED, TaskOutput(name="text", text="t"))
    with pytest.raises(UnresolvedInput, match="task 0"):
        resolve_args(state.plan.tasks[2], state)


def _plan(*tasks: Task) -> TaskPlan:
    plan = TaskPlan(request_id="r")
    plan.tasks.extend(tasks)
    return plan


def test_generated_inputs_are_dependencies_even_when_unlisted() -> None:
    text_of_0 = TaskArgument(name="text", generated=GeneratedRef(task_id=0, kind=Kind.KIND_TEXT))
    task = Task(id=1, task="summarization", args=[text_of_0])
    assert dependencies(task) == {0}
    state = RunState()
    state.plan.CopyFrom(_plan(Task(id=0, task="image-to-text"), task))
    assert [t.id for t in ready_tasks(state)] == [0]


def test_plans_that_could_never_run_fail_their_tasks_with_the_reason() -> None:
    plan = _plan(
        Task(id=0, task="make-coffee"),
        Task(id=1, task="summarization", deps=[7]),
        Task(id=2, task="summarization", deps=[3]),
        Task(id=3, task="translation", deps=[2]),
        Task(id=4, task="translation", deps=[3]),  # behind the cycle: skipped later, not failed
        Task(id=5, task="translation", deps=[5]),
    )
    errors = {r.task_id: r.error for r in unrunnable_tasks(plan)}
    assert errors == {
        0: "unknown task type 'make-coffee'",
        1: "depends on task 7, which is not in the plan",
        2: "part of a dependency cycle",
        3: "part of a dependency cycle",
        5: "part of a dependency cycle",
    }


def test_a_repeated_task_id_keeps_the_first() -> None:
    plan = _plan(Task(id=0, task="summarization"), Task(id=0, task="translation"))
    (note,) = drop_duplicate_ids(plan)
    assert "task id 0 appears twice" in note
    assert [t.task for t in plan.tasks] == ["summarization"]


def test_cycles_are_found_in_one_pass_over_a_long_plan() -> None:
    """A chain of 3,000 tasks ending in a loop of three: only the loop is in a cycle (and the
    search walks the graph once, not once per task, so a long plan does not stall it)."""
    plan = TaskPlan(request_id="r")
    plan.tasks.extend(
        Task(id=i, task="summarization", deps=[i - 1] if i else []) for i in range(3000)
    )
    plan.tasks.extend(
        [
            Task(id=3000, task="summarization", deps=[2999, 3002]),
            Task(id=3001, task="summarization", deps=[3000]),
            Task(id=3002, task="summarization", deps=[3001]),
            Task(id=3003, task="summarization", deps=[3003]),
        ]
    )
    failed = unrunnable_tasks(plan)
    assert {(r.task_id, r.error) for r in failed} == {
        (i, "part of a dependency cycle") for i in (3000, 3001, 3002, 3003)
    }
