"""Stage 4, response generation: `ExecutionReport` in, `ChatResponse` out. No NATS here."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable

from chorus.v1.messages_pb2 import (
    ArtifactRef,
    ChatResponse,
    ExecutionReport,
    StopAfter,
    TaskResult,
    TaskStatus,
    Timings,
)

from services.common.events import seconds_since
from services.common.llm import LLM, ChatTurn, LLMError
from services.common.prompts import load_prompt
from services.common.resources import request_text
from services.common.tasks import status_name

OnToken = Callable[[str], Awaitable[None]]
TEMPLATE_NOTE = "answer written from a template (no LLM)"
MAX_RESULT_CHARS = 2000  # per task in the prompt; whole files travel as references


async def respond(report: ExecutionReport, llm: LLM | None, on_token: OnToken) -> ChatResponse:
    started = time.perf_counter()
    request = report.plan.request
    response = ChatResponse(request_id=report.request_id, plan=report.plan)
    response.results.extend(report.results)
    response.artifacts.extend(_artifacts(report.results))
    response.notes.extend([*report.plan.notes, *report.notes])
    if request.stop_after == StopAfter.STOP_AFTER_UNSPECIFIED:
        response.answer, note = await _answer(report, llm, on_token)
        if note:
            response.notes.append(note)
    response.timings.CopyFrom(
        Timings(
            planning_seconds=report.plan.planning_seconds,
            execution_seconds=report.execution_seconds,
            response_seconds=time.perf_counter() - started,
            total_seconds=seconds_since(request.created_at)
            if request.HasField("created_at")
            else 0,
        )
    )
    return response


async def _answer(
    report: ExecutionReport, llm: LLM | None, on_token: OnToken
) -> tuple[str, str | None]:
    """The answer, streamed through `on_token`, and a note when a fallback wrote it."""
    note, streamed = TEMPLATE_NOTE, ""
    if llm is not None:
        pieces: list[str] = []
        try:
            async for piece in llm.stream(_prompt(report)):
                pieces.append(piece)
                await on_token(piece)
            return "".join(pieces), None
        except LLMError as e:
            note = f"the LLM failed while answering ({e}); {TEMPLATE_NOTE}"
            if pieces:  # the template follows what was already streamed
                streamed = "".join(pieces) + "\n\n"
                await on_token("\n\n")
    answer = templated_answer(report)
    await on_token(answer)
    return streamed + answer, note


def _prompt(report: ExecutionReport) -> list[ChatTurn]:
    workflow = [
        {
            "task": r.task,
            "id": r.task_id,
            "model": r.model,
            "reason": r.selection_reason,
            "status": status_name(r.status),
            "result": _describe_outputs(r)[:MAX_RESULT_CHARS],
            "error": r.error,
        }
        for r in report.results
    ]
    history = [ChatTurn(m.role, m.content) for m in report.plan.request.messages[:-1]]
    user = (
        f"Request: {request_text(report.plan.request)}\n"
        f"Workflow: {json.dumps(workflow, ensure_ascii=False)}"
    )
    return [
        ChatTurn("system", load_prompt("services.responder", "response.txt")),
        *history,
        ChatTurn("user", user),
    ]


def templated_answer(report: ExecutionReport) -> str:
    if not report.results:
        return (
            "No model was needed for this request, and no LLM is configured to answer it "
            "directly. Set CHORUS_LLM_BASE_URL or CHORUS_LLM_API_KEY for free-form answers."
        )
    lines = [f"I ran {len(report.results)} task(s) for your request:"]
    for r in report.results:
        head = f"{r.task_id + 1}. {r.task}" + (f" with {r.model}" if r.model else "")
        if r.status == TaskStatus.TASK_STATUS_SUCCEEDED:
            lines.append(f"{head}: {_describe_outputs(r)}")
        else:
            lines.append(f"{head}: {status_name(r.status)} — {r.error}")
    return "\n".join(lines)


def _describe_outputs(result: TaskResult) -> str:
    parts = []
    for output in result.outputs:
        which = output.WhichOneof("value")
        if which == "text":
            parts.append(output.text)
        elif which == "artifact":
            parts.append(f"generated file {output.artifact.name}")
    return "; ".join(parts) or "(no output)"


def _artifacts(results: Iterable[TaskResult]) -> list[ArtifactRef]:
    return [o.artifact for r in results for o in r.outputs if o.WhichOneof("value") == "artifact"]
