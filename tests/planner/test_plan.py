"""The planning stage with the real `openai` client against a scripted LLM server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from chorus.v1.messages_pb2 import ChatMessage, ChatRequest, PlanSource
from prometheus_client import REGISTRY

from services.common.llm import OpenAILLM
from services.common.settings import LLMSettings
from services.planner.plan import MIN_ROOM_TOKENS, ON_LOOP_CHARS, plan
from tests.support import Answer, ScriptedLLM

CYCLE = json.dumps(
    [
        {"task": "summarization", "id": 0, "dep": [1], "args": {"text": "<GENERATED>-1"}},
        {"task": "translation", "id": 1, "dep": [0], "args": {"text": "<GENERATED>-0"}},
    ]
)
GOOD = json.dumps({"tasks": [{"task": "summarization", "id": 0, "dep": [], "args": {"text": "x"}}]})


def _llm(server: ScriptedLLM) -> OpenAILLM:
    return OpenAILLM(LLMSettings(server.base_url, "k", "scripted", 10.0, 0))


def _request(text: str) -> ChatRequest:
    return ChatRequest(request_id="r", messages=[ChatMessage(role="user", content=text)])


async def test_an_invalid_plan_gets_one_repair_round(scripted_llm: ScriptedLLM) -> None:
    scripted_llm.replies = [CYCLE, GOOD]
    result = await plan(_request("summarize x"), _llm(scripted_llm))
    assert [t.task for t in result.tasks] == ["summarization"]
    assert result.source == PlanSource.PLAN_SOURCE_LLM
    assert any("cycle" in n and "repaired" in n for n in result.notes)
    repair_turn = scripted_llm.requests[1]["messages"][-1]["content"]
    assert "cycle" in repair_turn  # the LLM is told why its plan was refused
    assert scripted_llm.requests[1]["messages"][-2]["content"] == CYCLE  # and sees its own reply


async def test_a_plan_that_stays_invalid_becomes_a_direct_answer(scripted_llm: ScriptedLLM) -> None:
    scripted_llm.replies = ["Sorry, I can't plan that.", "still no JSON"]
    result = await plan(_request("do something"), _llm(scripted_llm))
    assert list(result.tasks) == []
    assert any("answering directly" in n for n in result.notes)
    assert len(scripted_llm.requests) == 2  # one repair round, no more


async def test_json_mode_is_dropped_when_the_server_refuses_it(scripted_llm: ScriptedLLM) -> None:
    scripted_llm.replies = [GOOD]
    scripted_llm.json_mode_supported = False
    llm = _llm(scripted_llm)
    first = await plan(_request("summarize x"), llm)
    second = await plan(_request("summarize y"), llm)
    assert [t.task for t in first.tasks] == [t.task for t in second.tasks] == ["summarization"]
    sent = ["response_format" in r for r in scripted_llm.requests]
    assert sent == [True, False, False]  # refused once, then plain requests


async def test_normalizations_are_reported(scripted_llm: ScriptedLLM) -> None:
    scripted_llm.replies = ["```json\n[{'task': 'Summarization', 'args': {'text': 'x'}}]\n```"]
    result = await plan(_request("summarize x"), _llm(scripted_llm))
    (note,) = result.notes
    assert note.startswith("the plan was normalized:") and "code fence" in note


TWO = json.dumps(
    {
        "tasks": [
            {"task": "summarization", "id": 0, "dep": [-1], "args": {"text": "x"}},
            {"task": "translation", "id": 1, "dep": [0], "args": {"text": "<GENERATED>-0"}},
        ]
    }
)


async def test_a_reasoning_models_thinking_is_set_aside(scripted_llm: ScriptedLLM) -> None:
    scripted_llm.replies = [
        Answer(GOOD, reasoning="The user wants [a summary] of {x}."),
        Answer("<think>\nSo: [summarize] then {done}\n</think>\n\n" + GOOD),
    ]
    separate = await plan(_request("summarize x"), _llm(scripted_llm))
    inline = await plan(_request("summarize x"), _llm(scripted_llm))
    assert [t.task for t in separate.tasks] == [t.task for t in inline.tasks] == ["summarization"]
    assert list(separate.notes) == []  # the server kept the reasoning apart: nothing to repair
    (note,) = inline.notes
    assert "removed the reasoning" in note


async def test_a_plan_cut_off_after_a_task_keeps_only_its_complete_tasks(
    scripted_llm: ScriptedLLM,
) -> None:
    cut = TWO[: TWO.index("<GENERATED>") + 5]  # "...{"text": "<GENE"
    scripted_llm.replies = [Answer(cut, finish_reason="length")]
    result = await plan(_request("summarize x, then translate it"), _llm(scripted_llm))
    assert [t.task for t in result.tasks] == ["summarization"]  # never a task saying "<GENE"
    assert any("cut off by its token limit" in n and "1 tasks" in n for n in result.notes)
    assert len(scripted_llm.requests) == 1


async def test_a_plan_cut_off_before_any_task_is_asked_again_with_more_room(
    scripted_llm: ScriptedLLM,
) -> None:
    scripted_llm.replies = [
        Answer(
            '{"tasks": [{"task": "summarization", "args": {"te', "length", completion_tokens=3000
        ),
        GOOD,
    ]
    result = await plan(_request("summarize x"), _llm(scripted_llm))
    assert [t.task for t in result.tasks] == ["summarization"]
    first, second = scripted_llm.requests
    assert "max_tokens" not in first and second["max_tokens"] == 6000
    assert any("cut off" in n and "room for 6000 tokens" in n for n in result.notes)


async def test_a_reply_that_is_only_reasoning_is_asked_again(scripted_llm: ScriptedLLM) -> None:
    scripted_llm.replies = [
        Answer(None, "length", reasoning="Let me think about [this]", reasoning_field="reasoning"),
        Answer("<think>" + "[{" * 200_000),  # a <think> that never closes, 400 kB of it
    ]
    before = _count("unfinished") + _count("cut_off")
    result = await plan(_request("summarize x"), _llm(scripted_llm))
    assert list(result.tasks) == []
    (note,) = result.notes
    assert "only reasoning" in note and "never closes" in note and "answering directly" in note
    assert scripted_llm.requests[1]["max_tokens"] == MIN_ROOM_TOKENS
    assert _count("unfinished") + _count("cut_off") == before + 2


def _count(outcome: str) -> float:
    return REGISTRY.get_sample_value("chorus_planner_replies_total", {"outcome": outcome}) or 0.0


async def test_only_a_long_reply_is_read_in_a_thread(
    scripted_llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A short plan is read on the loop (a thread costs more than reading it); a long one in
    a thread, so that the gateway in this process keeps answering meanwhile."""
    threads = 0
    to_thread = asyncio.to_thread

    async def counted(work: Any, *args: Any) -> Any:
        nonlocal threads
        threads += work.__module__ == plan.__module__  # not the client's own (its platform)
        return await to_thread(work, *args)

    monkeypatch.setattr(asyncio, "to_thread", counted)
    task = {"task": "summarization", "id": 0, "dep": [], "args": {"text": "x"}}
    padded = {**task, "args": {"text": "x" * ON_LOOP_CHARS}}
    scripted_llm.replies = [GOOD, json.dumps({"tasks": [padded]})]
    llm = _llm(scripted_llm)
    short = await plan(_request("summarize x"), llm)
    assert ([t.task for t in short.tasks], threads) == (["summarization"], 0)
    long = await plan(_request("summarize x"), llm)
    assert ([t.task for t in long.tasks], threads) == (["summarization"], 1)
