"""The task graph of one running request: what can start, what must be skipped, what is done."""

from __future__ import annotations

from chorus.v1.messages_pb2 import (
    RunState,
    Task,
    TaskArgument,
    TaskOutput,
    TaskResult,
    TaskStatus,
)

from services.common.tasks import TEXT


class UnresolvedInput(ValueError):
    """A `<GENERATED>` argument points to an output that does not exist."""


def ready_tasks(state: RunState) -> list[Task]:
    """Tasks not yet started whose dependencies all succeeded."""
    return [
        t
        for t in state.plan.tasks
        if t.id not in state.results
        and t.id not in state.dispatched
        and all(_succeeded(state, d) for d in t.deps)
    ]


def blocked_tasks(state: RunState) -> list[TaskResult]:
    """Skipped results for tasks with a failed or skipped dependency: reported at once."""
    skipped = []
    for task in state.plan.tasks:
        if task.id in state.results or task.id in state.dispatched:
            continue
        failed = [d for d in task.deps if d in state.results and not _succeeded(state, d)]
        if failed:
            skipped.append(
                TaskResult(
                    request_id=state.plan.request_id,
                    task_id=task.id,
                    task=task.task,
                    status=TaskStatus.TASK_STATUS_SKIPPED,
                    error=f"skipped: task {failed[0]} did not succeed",
                )
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


def _succeeded(state: RunState, task_id: int) -> bool:
    result = state.results.get(task_id)
    return result is not None and result.status == TaskStatus.TASK_STATUS_SUCCEEDED
