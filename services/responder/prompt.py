"""The response prompt in HuggingGPT's structure, cut to the LLM's context budget.

The request comes first, then the workflow as data: each task, the model chosen and why, and
its result. Results share what is left of the budget: a short one is kept whole, a long text
is cut (head kept, with a note of how much was left out), and a file is never inlined: the
prompt names it (file name, type, artifact id) and the reply can refer to it by name.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chorus.v1.messages_pb2 import ArtifactRef, ExecutionReport, TaskOutput, TaskResult

from services.common.llm import ChatTurn
from services.common.prompts import load_prompt
from services.common.resources import request_text
from services.common.tasks import status_name
from services.common.tokens import TURN_OVERHEAD, count_tokens, newest_within

REPLY_TOKENS = 1024  # kept free for the answer (at most a quarter of the context)
MIN_RESULT_TOKENS = 16  # below this a result says only that it was cut


@dataclass(frozen=True)
class ResponsePrompt:
    turns: list[ChatTurn]
    tokens: int  # the estimate the budget was kept with (services.common.tokens)
    budget: int
    cut: int  # how many results or turns were shortened or left out to fit


def budget_for(context_tokens: int) -> int:
    """Tokens the prompt may use: the context less room for the reply."""
    return context_tokens - min(REPLY_TOKENS, context_tokens // 4)


def response_prompt(report: ExecutionReport, context_tokens: int) -> ResponsePrompt:
    budget = budget_for(context_tokens)
    system = load_prompt("services.responder", "response.txt")
    request = request_text(report.plan.request)
    skeleton = [_entry(r, "") for r in report.results]
    # The request itself may be longer than everything else: it gets at most half.
    request, request_cut = cut_text(request, budget // 2)
    fixed = count_tokens(system) + count_tokens(_user(request, skeleton)) + 2 * TURN_OVERHEAD
    history, history_cut = _history(report, max(0, (budget - fixed) // 4))
    used_by_history = sum(count_tokens(t.content) + TURN_OVERHEAD for t in history)
    texts = [_result_text(r) for r in report.results]
    shares = fair_shares([count_tokens(t) for t in texts], budget - fixed - used_by_history)
    workflow, results_cut = [], 0
    for result, text, share in zip(report.results, texts, shares, strict=True):
        kept, was_cut = cut_text(text, share)
        results_cut += was_cut
        workflow.append(_entry(result, kept))
    turns = [ChatTurn("system", system), *history, ChatTurn("user", _user(request, workflow))]
    tokens = sum(count_tokens(t.content) + TURN_OVERHEAD for t in turns)
    return ResponsePrompt(turns, tokens, budget, request_cut + history_cut + results_cut)


def _user(request: str, workflow: list[dict[str, Any]]) -> str:
    return f"Request: {request}\nWorkflow: {json.dumps(workflow, ensure_ascii=False)}"


def _entry(result: TaskResult, text: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "task": result.task,
        "id": result.task_id,
        "model": result.model,
        "reason": result.selection_reason,
        "status": status_name(result.status),
        "result": text,
        "files": [_file(o) for o in result.outputs if o.WhichOneof("value") == "artifact"],
    }
    if result.error:
        entry["error"] = result.error
    return entry


def _file(output: TaskOutput) -> dict[str, str]:
    a = output.artifact
    return {"name": a.name, "type": a.media_type, "artifact_id": a.id}


def _result_text(result: TaskResult) -> str:
    """The text and structured outputs of a task; files are listed apart, by reference."""
    parts = []
    for output in result.outputs:
        which = output.WhichOneof("value")
        if which == "text":
            parts.append(output.text)
        elif which == "json":
            parts.append(f"{output.name}: {output.json}")
    return "\n".join(parts)


def _history(report: ExecutionReport, budget: int) -> tuple[list[ChatTurn], int]:
    """Earlier turns, newest kept first; a turn's files are named so "it" can be resolved."""
    earlier = list(report.plan.request.messages)[:-1]
    turns = [ChatTurn(m.role, m.content + _files_note(m.artifacts)) for m in earlier]
    kept = newest_within([t.content for t in turns], budget)
    return turns[len(turns) - kept :], len(turns) - kept


def _files_note(artifacts: Sequence[ArtifactRef]) -> str:
    files = ", ".join(a.name for a in artifacts)
    return f"\n[files: {files}]" if files else ""


def fair_shares(sizes: list[int], budget: int) -> list[int]:
    """Splits `budget` so that what fits stays whole and the rest share equally (water-filling)."""
    shares = [0] * len(sizes)
    pending = sorted(range(len(sizes)), key=lambda i: sizes[i])
    left = max(0, budget)
    while pending:
        equal = left // len(pending)
        i = pending[0]
        if sizes[i] <= equal:
            shares[i] = sizes[i]
            left -= sizes[i]
            pending.pop(0)
            continue
        for i in pending:
            shares[i] = equal
        break
    return shares


def cut_text(text: str, tokens: int) -> tuple[str, int]:
    """`text` within `tokens` (head kept, the cut said), and 1 when it had to be cut."""
    total = count_tokens(text)
    if total <= tokens:
        return text, 0
    if tokens < MIN_RESULT_TOKENS:
        return f"[{len(text)} characters, left out to fit the context]", 1
    keep = int(len(text) * (tokens - 12) / total)
    while keep > 0:
        head = text[:keep] + f" [... cut: {keep} of {len(text)} characters shown]"
        if count_tokens(head) <= tokens:
            return head, 1
        keep = int(keep * 0.9)
    return f"[{len(text)} characters, left out to fit the context]", 1
