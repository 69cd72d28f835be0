"""Response generation against the real `openai` client and a scripted OpenAI-compatible server."""

from __future__ import annotations

import json

import pytest
from chorus.v1.messages_pb2 import (
    ArtifactRef,
    ChatMessage,
    ChatRequest,
    ExecutionReport,
    Kind,
    Task,
    TaskOutput,
    TaskPlan,
    TaskResult,
    TaskStatus,
)

from services.common import tokens
from services.common.llm import OpenAILLM
from services.common.settings import LLMSettings
from services.common.tokens import TURN_OVERHEAD, count_tokens
from services.responder.prompt import budget_for, cut_text, fair_shares, response_prompt
from services.responder.respond import respond
from tests.support import ScriptedLLM

EDGES = ArtifactRef(
    id="abc-edges.png", name="edges.png", media_type="image/png", kind=Kind.KIND_IMAGE, size=9
)


def _report(
    *results: TaskResult, text: str = "Describe photo.png and find its edges"
) -> ExecutionReport:
    request = ChatRequest(request_id="r1", messages=[ChatMessage(role="user", content=text)])
    plan = TaskPlan(request_id="r1", request=request)
    plan.tasks.extend(Task(id=r.task_id, task=r.task) for r in results)
    report = ExecutionReport(request_id="r1", plan=plan)
    report.results.extend(results)
    return report


def _caption(text: str = "a black circle on white") -> TaskResult:
    return TaskResult(
        task_id=0,
        task="image-to-text",
        model="tiny/captioner",
        selection_reason="only candidate",
        status=TaskStatus.TASK_STATUS_SUCCEEDED,
        outputs=[TaskOutput(name="text", text=text)],
    )


def _edges() -> TaskResult:
    return TaskResult(
        task_id=1,
        task="canny-control",
        model="builtin:canny",
        selection_reason="least loaded",
        status=TaskStatus.TASK_STATUS_SUCCEEDED,
        outputs=[TaskOutput(name="image", artifact=EDGES)],
    )


def _llm(server: ScriptedLLM) -> OpenAILLM:
    return OpenAILLM(LLMSettings(server.base_url, "k", "scripted", 10.0, 0))


async def test_the_answer_streams_from_a_prompt_in_hugginggpts_structure(
    scripted_llm: ScriptedLLM,
) -> None:
    scripted_llm.replies = ["It is a black circle; the edges are in edges.png."]
    tokens: list[str] = []

    async def on_token(piece: str) -> None:
        tokens.append(piece)

    response = await respond(_report(_caption(), _edges()), _llm(scripted_llm), on_token)
    assert len(tokens) > 1 and "".join(tokens) == response.answer
    assert response.answer == "It is a black circle; the edges are in edges.png."
    assert not response.notes and list(response.artifacts) == [EDGES]
    system, user = scripted_llm.requests[0]["messages"]
    assert system["role"] == "system" and "#4 Response generation" in system["content"]
    request_line, workflow_line = user["content"].split("\n", 1)
    assert request_line == "Request: Describe photo.png and find its edges"
    workflow = json.loads(workflow_line.removeprefix("Workflow: "))
    assert [(w["task"], w["model"], w["reason"]) for w in workflow] == [
        ("image-to-text", "tiny/captioner", "only candidate"),
        ("canny-control", "builtin:canny", "least loaded"),
    ]
    assert workflow[0]["result"] == "a black circle on white"
    # A file is referenced, never inlined.
    assert workflow[1]["files"] == [
        {"name": "edges.png", "type": "image/png", "artifact_id": "abc-edges.png"}
    ]


async def test_results_beyond_the_context_are_cut_to_the_budget(
    scripted_llm: ScriptedLLM,
) -> None:
    scripted_llm.replies = ["Done."]
    long_text = "The quick brown fox jumps over the lazy dog. " * 3000  # ~30k tokens
    report = _report(_caption(long_text), _edges())
    prompt = response_prompt(report, context_tokens=4096)
    assert count_tokens(long_text) > 4096 >= budget_for(4096) >= prompt.tokens
    assert prompt.cut == 1

    async def on_token(piece: str) -> None:
        pass

    response = await respond(report, _llm(scripted_llm), on_token, context_tokens=4096)
    sent = scripted_llm.requests[0]["messages"]
    assert sum(count_tokens(m["content"]) for m in sent) <= budget_for(4096)
    workflow = json.loads(sent[-1]["content"].split("Workflow: ", 1)[1])
    assert workflow[0]["result"].startswith("The quick brown fox")
    assert f"of {len(long_text)} characters shown]" in workflow[0]["result"]
    assert workflow[1]["files"][0]["name"] == "edges.png"  # the short result is whole
    assert any("shortened to fit the LLM's context" in n for n in response.notes)


def test_fair_shares_keep_short_results_whole() -> None:
    assert fair_shares([10, 500, 2000], 1000) == [10, 495, 495]
    assert fair_shares([10, 20], 1000) == [10, 20]
    assert fair_shares([100, 100], 0) == [0, 0]
    kept = cut_text("word " * 1000, 100)
    assert kept.cut == 1 and count_tokens(kept.text) == kept.tokens <= 100


def test_each_part_of_the_prompt_is_counted_once_and_the_sum_is_what_is_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The prompt's tokens are what the LLM is sent, counted in parts: the system prompt, the
    history, the request, the workflow's frame and each result once (a result's text with the
    two quotes of its JSON string)."""
    counted: list[int] = []

    class CountedPieces:
        def findall(self, text: str) -> list[str]:
            counted.append(len(text))
            return pieces.findall(text)

    pieces = tokens._PIECES
    monkeypatch.setattr(tokens, "_PIECES", CountedPieces())
    report = _report(_caption('a "black" circle\non white, 12 px'), _edges())
    request = report.plan.request
    asked = request.messages[-1].content
    del request.messages[:]
    for role, content in (("user", "Hi"), ("assistant", "Hello"), ("user", asked)):
        request.messages.add(role=role, content=content)
    prompt = response_prompt(report, context_tokens=4096)
    monkeypatch.undo()
    assert [t.role for t in prompt.turns] == ["system", "user", "assistant", "user"]
    assert prompt.tokens == sum(count_tokens(t.content) + TURN_OVERHEAD for t in prompt.turns)
    sent = sum(len(t.content) for t in prompt.turns)
    assert sum(counted) == sent + 2 * len(report.results)


async def test_a_stream_that_stops_halfway_keeps_what_came_and_says_so(
    scripted_llm: ScriptedLLM,
) -> None:
    scripted_llm.replies = ["one two three four five six seven eight"]
    scripted_llm.cut_after = 3
    tokens: list[str] = []

    async def on_token(piece: str) -> None:
        tokens.append(piece)

    response = await respond(_report(_caption(), _edges()), _llm(scripted_llm), on_token)
    assert "".join(tokens) == response.answer
    assert response.answer.startswith("one two three ")
    assert "[answer cut short]" in response.answer and "edges.png" in response.answer
    assert any("the answer was cut short" in n for n in response.notes)


async def test_without_an_llm_the_template_is_readable() -> None:
    labels = TaskResult(
        task_id=2,
        task="text-classification",
        model="tiny/bert",
        status=TaskStatus.TASK_STATUS_SUCCEEDED,
        outputs=[
            TaskOutput(name="labels", json='[{"label": "POSITIVE", "score": 0.9812}]'),
        ],
    )
    failed = TaskResult(
        task_id=3, task="text-to-speech", status=TaskStatus.TASK_STATUS_FAILED, error="no replica"
    )
    tokens: list[str] = []

    async def on_token(piece: str) -> None:
        tokens.append(piece)

    response = await respond(_report(_caption(), _edges(), labels, failed), None, on_token)
    assert "".join(tokens) == response.answer
    assert response.answer.splitlines() == [
        "I ran 4 task(s) for your request; 3 succeeded.",
        "1. image-to-text with tiny/captioner: a black circle on white",
        "2. canny-control with builtin:canny: generated file edges.png",
        "3. text-classification with tiny/bert: labels: POSITIVE (0.98)",
        "4. text-to-speech: failed — no replica",
        "Generated file(s): edges.png.",
    ]
    assert "answer written from a template (no LLM)" in response.notes
