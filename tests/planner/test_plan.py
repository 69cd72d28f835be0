"""The planning stage with the real `openai` client against a scripted LLM server."""

from __future__ import annotations

import json

from chorus.v1.messages_pb2 import ChatMessage, ChatRequest, PlanSource

from services.common.llm import OpenAILLM
from services.common.settings import LLMSettings
from services.planner.plan import plan
from tests.support import ScriptedLLM

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
