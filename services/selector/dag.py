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

from services.common.artifact_refs import drop_inline
from services.common.tasks import TEXT, task_type

# The inline bytes one run's state keeps in all (it is one KV entry, under NATS's max_payload);
# past it a later task reads the file from the store, which always holds it.
RUN_INLINE_MAX_BYTES = 256 * 1024


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
    cyclic = _in_cycles(plan)
    failed = []
    for task in plan.tasks:
        missing = sorted(dependencies(task) - ids)
        if task_type(task.task) is None:
            error = f"unknown task type {task.task!r}"
        elif missing:
            error = f"depends on task {missing[0]}, which is not in the plan"
        elif task.id in cyclic:
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


def drop_spent_inline(state: RunState) -> None:
    """Drops the inline bytes of results that no task yet to start takes as input, and of any
    past `RUN_INLINE_MAX_BYTES` in all: the state stays small, and a retried task reads its
    input from the store."""
    wanted = {
        arg.generated.task_id
        for task in state.plan.tasks
        if task.id not in state.results and task.id not in state.dispatched
        for arg in task.args
        if arg.WhichOneof("value") == "generated"
    }
    kept = 0
    for task_id in sorted(state.results):
        result = state.results[task_id]
        size = sum(len(o.artifact.inline) for o in result.outputs if o.HasField("artifact"))
        if size and (task_id not in wanted or kept + size > RUN_INLINE_MAX_BYTES):
            drop_inline(result)
        else:
            kept += size


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


def _in_cycles(plan: TaskPlan) -> set[int]:
    """The tasks that can reach themselves by following dependencies, in one pass over the
    graph (Tarjan's strongly connected components, without recursion)."""
    by_id = {t.id: t for t in plan.tasks}
    edges = {i: sorted(d for d in dependencies(t) if d in by_id) for i, t in by_id.items()}
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    stack: list[int] = []
    on_stack: set[int] = set()
    cyclic: set[int] = set()
    for root in by_id:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, next_edge = work.pop()
            if next_edge == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if next_edge < len(edges[node]):
                work.append((node, next_edge + 1))
                dep = edges[node][next_edge]
                if dep not in index:
                    work.append((dep, 0))
                elif dep in on_stack:
                    low[node] = min(low[node], index[dep])
                continue
            if low[node] == index[node]:  # `node` roots a component: pop it
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges[node]:
                    cyclic.update(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return cyclic


def _succeeded(state: RunState, task_id: int) -> bool:
    result = state.results.get(task_id)
    return result is not None and result.status == TaskStatus.TASK_STATUS_SUCCEEDED
