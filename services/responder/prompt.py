"""The response prompt in HuggingGPT's structure, cut to the LLM's context budget.

The request comes first, then the workflow as data: each task, the model chosen and why, and
its result. Results share what is left of the budget: a short one is kept whole, a long text
is cut (head kept, with a note of how much was left out), and a file is never inlined: the
prompt names it (file name, type, artifact id) and the reply can refer to it by name.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
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
    # The request itself may be longer than everything else: it gets at most half.
    request = cut_text(request_text(report.plan.request), budget // 2)
    skeleton = [_entry(r, "") for r in report.results]
    # Each part is counted once and the prompt's tokens are their sum (`count_tokens` adds up
    # over a space or a mark): the request sits between spaces in the user turn, and each
    # result's text between the quotes its empty string has in the skeleton.
    fixed = count_tokens(system) + count_tokens(_user("", skeleton)) + 2 * TURN_OVERHEAD
    fixed += request.tokens
    history, history_tokens, history_cut = _history(report, max(0, (budget - fixed) // 4))
    texts = [_result_text(r) for r in report.results]
    sizes = [_string_tokens(t) for t in texts]
    shares = fair_shares(sizes, budget - fixed - history_tokens)
    workflow, tokens, results_cut = [], fixed + history_tokens, 0
    for result, text, size, share in zip(report.results, texts, sizes, shares, strict=True):
        kept = cut_text(text, share, _string_tokens, size)
        tokens += kept.tokens
        results_cut += kept.cut
        workflow.append(_entry(result, kept.text))
    user = ChatTurn("user", _user(request.text, workflow))
    turns = [ChatTurn("system", system), *history, user]
    return ResponsePrompt(turns, tokens, budget, request.cut + history_cut + results_cut)


def _string_tokens(text: str) -> int:
    """The tokens `text` adds to the workflow as a JSON string, escapes included; its quotes
    are the skeleton's."""
    return count_tokens(json.dumps(text, ensure_ascii=False)) - 2


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


def _history(report: ExecutionReport, budget: int) -> tuple[list[ChatTurn], int, int]:
    """Earlier turns, newest kept first, with the tokens they use and how many were left out;
    a turn's files are named so "it" can be resolved."""
    earlier = list(report.plan.request.messages)[:-1]
    turns = [ChatTurn(m.role, m.content + _files_note(m.artifacts)) for m in earlier]
    kept, tokens = newest_within([t.content for t in turns], budget)
    return turns[len(turns) - kept :], tokens, len(turns) - kept


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


@dataclass(frozen=True)
class Kept:
    """What `cut_text` kept of a text."""

    text: str
    tokens: int  # as the `count` it was cut with counts them
    cut: int  # 1 when it had to be cut


def cut_text(
    text: str, tokens: int, count: Callable[[str], int] = count_tokens, total: int | None = None
) -> Kept:
    """`text` within `tokens` (head kept, the cut said); `total` is `count(text)`, if known."""
    total = count(text) if total is None else total
    if total <= tokens:
        return Kept(text, total, 0)
    left_out = f"[{len(text)} characters, left out to fit the context]"
    if tokens >= MIN_RESULT_TOKENS:
        keep = int(len(text) * (tokens - 12) / total)
        while keep > 0:
            head = text[:keep] + f" [... cut: {keep} of {len(text)} characters shown]"
            if (used := count(head)) <= tokens:
                return Kept(head, used, 1)
            keep = int(keep * 0.9)
    return Kept(left_out, count(left_out), 1)
