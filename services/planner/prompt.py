"""Builds the planning prompt in HuggingGPT's structure from the package's prompt files."""

from __future__ import annotations

import json
from functools import cache

from chorus.v1.messages_pb2 import ChatRequest

from services.common.llm import ChatTurn
from services.common.prompts import load_prompt
from services.common.resources import request_text, resources_of
from services.common.tasks import KIND_NAMES, TASK_TYPES
from services.common.tokens import newest_within

# Earlier turns are cut to this many tokens, the newest kept: the request and its demos
# must fit in small contexts too.
HISTORY_TOKEN_BUDGET = 1500


def _task_list() -> str:
    lines = []
    for t in TASK_TYPES.values():
        slots = ", ".join(s.name + ("" if s.required else "?") for s in t.slots)
        outputs = ", ".join(KIND_NAMES[o] for o in t.outputs)
        lines.append(f'  "{t.name}" ({slots}) -> {outputs}: {t.summary}')
    return "\n".join(lines)


@cache
def _fixed_turns() -> tuple[ChatTurn, ...]:
    """The system prompt and the demonstrations: the same for every request, built once."""
    system = load_prompt("services.planner", "parse_task.txt").replace("{task_list}", _task_list())
    turns = [ChatTurn("system", system)]
    for demo in json.loads(load_prompt("services.planner", "parse_task_demos.json")):
        turns += [ChatTurn("user", demo["user"]), ChatTurn("assistant", demo["assistant"])]
    return tuple(turns)


def planning_prompt(request: ChatRequest) -> list[ChatTurn]:
    turns = list(_fixed_turns())
    *history, _ = request.messages
    turns += _within_budget([ChatTurn(m.role, m.content) for m in history])
    files = ", ".join(
        f"{a.name} ({KIND_NAMES.get(a.kind, 'file')})" for a in resources_of(request).values()
    )
    turns.append(ChatTurn("user", request_text(request) + (f" Files: {files}" if files else "")))
    return turns


def _within_budget(history: list[ChatTurn]) -> list[ChatTurn]:
    kept, _ = newest_within([t.content for t in history], HISTORY_TOKEN_BUDGET)
    return history[len(history) - kept :]
