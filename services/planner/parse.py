"""Turns an LLM's planning reply (HuggingGPT's JSON task list) into validated `Task`s."""

from __future__ import annotations

import json
import re
from typing import Any

from chorus.v1.messages_pb2 import ArtifactRef, GeneratedRef, Task, TaskArgument

from services.common.resources import find_resource
from services.common.tasks import task_type

_GENERATED = re.compile(r"<\s*GENERATED\s*>\s*-\s*(\d+)|<\s*GENERATED\s*-\s*(\d+)\s*>", re.I)


_MAX_ID = 10_000  # far above any real plan; keeps ids inside protobuf's int32


class PlanError(ValueError):
    """The reply is not a valid plan; the message says exactly why."""


def parse_plan(reply: str, resources: dict[str, ArtifactRef]) -> list[Task]:
    items = _load_task_list(reply)
    tasks = [_task(i, item, resources) for i, item in enumerate(items)]
    _check_graph(tasks)
    return tasks


def _load_task_list(reply: str) -> list[Any]:
    start = min((i for i in (reply.find("["), reply.find("{")) if i >= 0), default=-1)
    if start < 0:
        raise PlanError("the reply holds no JSON")
    end = max(reply.rfind("]"), reply.rfind("}")) + 1
    try:
        data = json.loads(reply[start:end])
    except json.JSONDecodeError as e:
        raise PlanError(f"the reply is not valid JSON: {e}") from e
    if isinstance(data, dict):
        data = data.get("tasks", [data] if "task" in data else None)
    if not isinstance(data, list):
        raise PlanError("the reply is not a list of tasks")
    return data


def normalize_task_name(name: str) -> str:
    return re.sub(r"[\s_]+", "-", name.strip().lower())


def _task(index: int, item: Any, resources: dict[str, ArtifactRef]) -> Task:
    if not isinstance(item, dict):
        raise PlanError(f"task #{index} is not an object")
    name = normalize_task_name(str(item.get("task", "")))
    kind = task_type(name)
    if kind is None:
        raise PlanError(f"task #{index}: unknown task type {item.get('task')!r}")
    try:
        task_id = int(item.get("id", index))
        deps = [int(d) for d in item.get("dep", []) if int(d) >= 0]
    except (TypeError, ValueError) as e:
        raise PlanError(f"task #{index}: id and dep must be integers") from e
    if not all(0 <= i <= _MAX_ID for i in [task_id, *deps]):
        raise PlanError(f"task #{index}: ids must be between 0 and {_MAX_ID}")
    args = item.get("args", {})
    if not isinstance(args, dict):
        raise PlanError(f"task {task_id}: args must be an object")
    task = Task(id=task_id, task=name)
    for slot_name, value in args.items():
        slot = kind.slot(slot_name)
        if slot is None:
            raise PlanError(f"task {task_id} ({name}): no argument named {slot_name!r}")
        arg = TaskArgument(name=slot_name)
        text = str(value)
        generated = _GENERATED.search(text)
        if generated:
            source = int(generated.group(1) or generated.group(2))
            if source > _MAX_ID:
                raise PlanError(f"task {task_id}: <GENERATED>-{source} is out of range")
            arg.generated.CopyFrom(GeneratedRef(task_id=source, kind=slot.kind))
            deps.append(source)
        elif (artifact := find_resource(text, resources)) is not None:
            arg.artifact.CopyFrom(artifact)
        else:
            arg.text = text
        task.args.append(arg)
    task.deps.extend(sorted(set(deps)))
    return task


def _check_graph(tasks: list[Task]) -> None:
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        raise PlanError(f"task ids repeat: {ids}")
    known = set(ids)
    for task in tasks:
        for dep in task.deps:
            if dep == task.id:
                raise PlanError(f"task {task.id} depends on itself")
            if dep not in known:
                raise PlanError(f"task {task.id} depends on task {dep}, which does not exist")
    order = topological_order(tasks)
    if order is None:
        raise PlanError("the dependencies form a cycle")


def topological_order(tasks: list[Task]) -> list[int] | None:
    """Task ids in an order that respects dependencies, or None when there is a cycle."""
    remaining = {t.id: set(t.deps) for t in tasks}
    order: list[int] = []
    while remaining:
        ready = sorted(i for i, deps in remaining.items() if not deps - set(order))
        if not ready:
            return None
        order.extend(ready)
        for i in ready:
            del remaining[i]
    return order
