"""Stage 4, response generation: `ExecutionReport` in, `ChatResponse` out. No NATS here."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable

from chorus.v1.messages_pb2 import (
    ArtifactRef,
    ChatResponse,
    ExecutionReport,
    StopAfter,
    TaskResult,
    Timings,
)

from services.common.llm import LLM, LLMError, LLMStreamCut
from services.common.settings import DEFAULT_CONTEXT_TOKENS
from services.common.timestamps import seconds_since
from services.responder.prompt import response_prompt
from services.responder.template import templated_answer

OnToken = Callable[[str], Awaitable[None]]
TEMPLATE_NOTE = "answer written from a template (no LLM)"


async def respond(
    report: ExecutionReport,
    llm: LLM | None,
    on_token: OnToken,
    *,
    context_tokens: int = DEFAULT_CONTEXT_TOKENS,
) -> ChatResponse:
    """The response to a report; the answer goes out through `on_token` as it is written."""
    started = time.perf_counter()
    request = report.plan.request
    response = ChatResponse(request_id=report.request_id, plan=report.plan)
    response.results.extend(report.results)
    response.artifacts.extend(_artifacts(report.results))
    response.notes.extend([*report.plan.notes, *report.notes])
    if request.stop_after == StopAfter.STOP_AFTER_UNSPECIFIED:
        response.answer, notes = await _answer(report, llm, on_token, context_tokens)
        response.notes.extend(notes)
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
    report: ExecutionReport, llm: LLM | None, on_token: OnToken, context_tokens: int
) -> tuple[str, list[str]]:
    """The answer, streamed through `on_token`, and notes on how it was written."""
    if llm is None:
        answer = templated_answer(report)
        await on_token(answer)
        return answer, [TEMPLATE_NOTE]
    prompt = response_prompt(report, context_tokens)
    notes = []
    if prompt.cut:
        notes.append(
            f"{prompt.cut} task result(s) or earlier turn(s) were shortened to fit the LLM's "
            f"context ({prompt.tokens} of {prompt.budget} prompt tokens)"
        )
    pieces: list[str] = []
    try:
        async for piece in llm.stream(prompt.turns):
            pieces.append(piece)
            await on_token(piece)
        return "".join(pieces), notes
    except LLMError as e:
        if isinstance(e, LLMStreamCut) and pieces:
            # Keep what the user has already read; the template adds the results in full.
            note = f"the answer was cut short ({e}); the task results follow from a template"
        else:
            note = f"the LLM failed while answering ({e}); {TEMPLATE_NOTE}"
    streamed = "".join(pieces)
    tail = ("\n\n[answer cut short]\n\n" if streamed else "") + templated_answer(report)
    await on_token(tail)
    return streamed + tail, [*notes, note]


def _artifacts(results: Iterable[TaskResult]) -> list[ArtifactRef]:
    return [o.artifact for r in results for o in r.outputs if o.WhichOneof("value") == "artifact"]
