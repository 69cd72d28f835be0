"""Stage 2a, model selection: rank the models live replicas serve, let the LLM choose if open."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass

from chorus.v1.messages_pb2 import Task
from chorus.v1.workers_pb2 import WorkerInfo

from services.common.llm import LLM, ChatTurn, LLMError
from services.common.prompts import load_prompt
from services.selector.catalog import Catalog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    model: str
    replicas: int
    load: float  # in-flight work per unit of capacity over its replicas; 0 is idle
    downloads: int = 0  # from the catalog; 0 when it does not list the model
    likes: int = 0
    description: str = ""


@dataclass(frozen=True)
class Selection:
    model: str
    reason: str


class NoCandidate(LookupError):
    """No live replica serves the task."""


def candidates_for(
    task: str, workers: list[WorkerInfo], catalog: Catalog | None = None
) -> list[Candidate]:
    """Models a live replica serves for `task`: least loaded first, then the most downloaded
    and liked in the catalog."""
    capacity: dict[str, int] = {}
    in_flight: dict[str, int] = {}
    replicas: dict[str, int] = {}
    for worker in workers:
        for served in worker.models:
            if served.task == task:
                capacity[served.model] = capacity.get(served.model, 0) + max(worker.capacity, 1)
                in_flight[served.model] = in_flight.get(served.model, 0) + worker.in_flight
                replicas[served.model] = replicas.get(served.model, 0) + 1
    ranked = []
    for model in capacity:
        facts = catalog.get(model) if catalog else None
        ranked.append(
            Candidate(
                model,
                replicas[model],
                in_flight[model] / capacity[model],
                downloads=facts.downloads if facts else 0,
                likes=facts.likes if facts else 0,
                description=facts.description if facts else "",
            )
        )
    return sorted(ranked, key=lambda c: (c.load, -c.downloads, -c.likes, -c.replicas, c.model))


async def select_model(
    task: Task, request_text: str, candidates: list[Candidate], llm: LLM | None
) -> Selection:
    if not candidates:
        raise NoCandidate(f"no live executor serves {task.task!r}")
    top = candidates[0]
    if len(candidates) == 1:
        return Selection(top.model, "the only model a live replica serves for this task")
    if llm is None:
        return Selection(
            top.model, f"top-ranked of {len(candidates)} (load, then downloads and likes; no LLM)"
        )
    try:
        reply = await llm.complete(_prompt(task, request_text, candidates))
    except LLMError as e:
        return Selection(top.model, f"top-ranked; the LLM could not choose: {e}")
    chosen, reason = _parse_choice(reply, [c.model for c in candidates])
    if chosen is None:
        return Selection(top.model, "top-ranked; the LLM named no candidate")
    return Selection(chosen, f"chosen by the LLM: {reason}" if reason else "chosen by the LLM")


def _prompt(task: Task, request_text: str, candidates: list[Candidate]) -> list[ChatTurn]:
    listing = "\n".join(
        f"- {c.model}: {c.description or 'no description'} "
        f"(downloads: {c.downloads}, likes: {c.likes}, load: {c.load:.2f})"
        for c in candidates
    )
    user = f"Request: {request_text}\nTask: {task.task}\nCandidates:\n{listing}"
    return [
        ChatTurn("system", load_prompt("services.selector", "choose_model.txt")),
        ChatTurn("user", user),
    ]


def _parse_choice(reply: str, models: list[str]) -> tuple[str | None, str]:
    match = re.search(r"\{.*\}", reply, re.S)
    if match:
        try:
            data = json.loads(match.group(0))
            if isinstance(data, dict) and data.get("id") in models:
                return str(data["id"]), str(data.get("reason", ""))
        except json.JSONDecodeError:
            pass
    named = [m for m in models if m in reply]
    return (max(named, key=len), "") if named else (None, "")
