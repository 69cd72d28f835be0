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
    TaskResult,
    TaskStarted,
    TaskStatus,
)

from services.selector.dag import (
    UnresolvedInput,
    blocked_tasks,
    is_complete,
    ready_tasks,
    resolve_args,
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
