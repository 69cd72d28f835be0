"""The task graph of one running request: what can start, what must be skipped, what is done."""

from __future__ import annotations

from chorus.v1.messages_pb2 import (
    RunState,
    Task,
    TaskArgument,
    TaskOutput,
    TaskPlan,
    TaskResult,
    TaskStatus,
)

from services.common.tasks import TEXT, task_type


class UnresolvedInput(ValueError):
    """A `<GENERATED>` argument points to an output that does not exist."""


def dependencies(task: Task) -> set[int]:
    """The tasks this one waits for: those it lists, and those whose outputs it takes."""
    generated = {a.generated.task_id for a in task.args if a.WhichOneof("value") == "generated"}
    return set(task.deps) | generated


def drop_duplicate_ids(plan: TaskPlan) -> list[str]:
    """Keeps the first task of each id (results are kept by id); says what was dropped."""
    seen: set[int] = set()
    kept, notes = [], []
    for task in plan.tasks:
        if task.id in seen:
            notes.append(f"task id {task.id} appears twice in the plan; the second was dropped")
            continue
        seen.add(task.id)
        kept.append(task)
    if notes:
        del plan.tasks[:]
        plan.tasks.extend(kept)
    return notes


def unrunnable_tasks(plan: TaskPlan) -> list[TaskResult]:
    """Failed results for tasks that could never start: an unknown task type, a dependency
    that is not in the plan, or a place in a dependency cycle. Their dependents are then
    skipped like those of any failed task, so a bad plan finishes instead of stalling."""
    ids = {t.id for t in plan.tasks}
    failed = []
    for task in plan.tasks:
        missing = sorted(dependencies(task) - ids)
        if task_type(task.task) is None:
            error = f"unknown task type {task.task!r}"
        elif missing:
            error = f"depends on task {missing[0]}, which is not in the plan"
        elif _in_cycle(plan, task.id):
            error = "part of a dependency cycle"
        else:
            continue
        failed.append(_result(plan.request_id, task, TaskStatus.TASK_STATUS_FAILED, error))
    return failed


def ready_tasks(state: RunState) -> list[Task]:
    """Tasks not yet started whose dependencies all succeeded."""
    return [
        t
        for t in state.plan.tasks
        if t.id not in state.results
        and t.id not in state.dispatched
        and all(_succeeded(state, d) for d in dependencies(t))
    ]


def blocked_tasks(state: RunState) -> list[TaskResult]:
    """Skipped results for tasks with a failed or skipped dependency: reported at once."""
    skipped = []
    for task in state.plan.tasks:
        if task.id in state.results or task.id in state.dispatched:
            continue
        failed = sorted(
            d for d in dependencies(task) if d in state.results and not _succeeded(state, d)
        )
        if failed:
            error = f"skipped: task {failed[0]} did not succeed"
            skipped.append(
                _result(state.plan.request_id, task, TaskStatus.TASK_STATUS_SKIPPED, error)
            )
    return skipped


def is_complete(state: RunState) -> bool:
    return all(t.id in state.results for t in state.plan.tasks)


def resolve_args(task: Task, state: RunState) -> list[TaskArgument]:
    """Replaces each generated reference with the matching output of the task it names."""
    resolved = []
    for arg in task.args:
        if arg.WhichOneof("value") != "generated":
            resolved.append(arg)
            continue
        source = state.results.get(arg.generated.task_id)
        output = _output_of_kind(source, arg.generated.kind) if source else None
        if output is None:
            raise UnresolvedInput(
                f"argument {arg.name!r} wants an output of task {arg.generated.task_id} "
                "of the right kind, and it produced none"
            )
        value = TaskArgument(name=arg.name)
        if output.WhichOneof("value") == "artifact":
            value.artifact.CopyFrom(output.artifact)
        else:
            value.text = output.text
        resolved.append(value)
    return resolved


def _output_of_kind(result: TaskResult, kind: int) -> TaskOutput | None:
    for output in result.outputs:
        which = output.WhichOneof("value")
        if which == "artifact" and output.artifact.kind == kind:
            return output
        if which == "text" and kind == TEXT:
            return output
    return None


def _result(request_id: str, task: Task, status: TaskStatus.ValueType, error: str) -> TaskResult:
    return TaskResult(
        request_id=request_id, task_id=task.id, task=task.task, status=status, error=error
    )


def _in_cycle(plan: TaskPlan, start: int) -> bool:
    """Whether `start` can reach itself by following dependencies."""
    by_id = {t.id: t for t in plan.tasks}
    stack = list(dependencies(by_id[start]))
    seen: set[int] = set()
    while stack:
        current = stack.pop()
        if current == start:
            return True
        if current in seen or current not in by_id:
            continue
        seen.add(current)
        stack.extend(dependencies(by_id[current]))
    return False


def _succeeded(state: RunState, task_id: int) -> bool:
    result = state.results.get(task_id)
    return result is not None and result.status == TaskStatus.TASK_STATUS_SUCCEEDED
