from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

import pytest
from chorus.v1.messages_pb2 import ModelChoice, Task

from services.common.llm import ChatTurn, LLMError
from services.selector.rank import Candidate, Where
from services.selector.select import NoCandidate, OpenTask, choose_models, decide


class FakeLLM:
    """A scripted stand-in for the `LLM` protocol (unit level; integration uses HTTP)."""

    name = "fake"

    def __init__(self, reply: str | Exception) -> None:
        self.reply = reply
        self.prompts: list[str] = []

    async def complete(self, messages: Sequence[ChatTurn], *, json_mode: bool = False) -> str:
        self.prompts.append(messages[-1].content)
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply

    async def stream(self, messages: Sequence[ChatTurn]) -> AsyncIterator[str]:
        yield str(self.reply)


def _local(*models: str) -> list[Candidate]:
    return [Candidate(m, m, Where.LOCAL, 1, 0.0, description=f"about {m}") for m in models]


CAPTION = OpenTask(Task(id=0, task="image-to-text"), _local("a/cap", "b/cap"))
LABEL = OpenTask(Task(id=1, task="text-classification"), _local("a/cls", "b/cls", "c/cls"))


def test_a_single_candidate_is_taken_without_asking() -> None:
    choice = decide("text-classification", _local("m"), None)
    assert choice.model == "m" and "only model" in choice.reason


def test_no_candidate_is_an_error() -> None:
    with pytest.raises(NoCandidate, match="no live executor"):
        decide("text-classification", [], None)


def test_the_llm_choice_is_used_while_its_model_is_served() -> None:
    choice = ModelChoice(model="b/cap", reason="captions in detail")
    assert decide("image-to-text", CAPTION.candidates, choice).model == "b/cap"
    gone = decide("image-to-text", _local("a/cap"), choice)
    assert gone.model == "a/cap" and "no longer served" in gone.reason


def test_a_retry_avoids_the_model_that_failed() -> None:
    retry = decide("image-to-text", CAPTION.candidates, None, avoid="a/cap")
    assert retry.model == "b/cap" and "retried away from a/cap" in retry.reason
    # With nothing else to go to, the same model is tried again.
    assert decide("image-to-text", _local("a/cap"), None, avoid="a/cap").model == "a/cap"


async def test_one_llm_call_chooses_for_every_open_task() -> None:
    reply = {
        "choices": [
            {"task": 0, "id": "b/cap", "reason": "detailed captions"},
            {"task": 1, "id": "c/cls", "reason": "sentiment"},
        ]
    }
    llm = FakeLLM(f"Here you go:\n```json\n{json.dumps(reply)}\n```")
    choices = await choose_models("describe and label", [CAPTION, LABEL], llm)
    assert len(llm.prompts) == 1
    assert "Task 0: image-to-text" in llm.prompts[0] and "about c/cls" in llm.prompts[0]
    assert (choices[0].model, choices[1].model) == ("b/cap", "c/cls")
    assert choices[1].reason == "sentiment"


async def test_a_reply_in_other_shapes_is_read() -> None:
    by_key = FakeLLM("{'0': {'id': 'b/cap'}, 'task 1': 'a/cls',}")  # Python-ish, trailing comma
    choices = await choose_models("r", [CAPTION, LABEL], by_key)
    assert (choices[0].model, choices[1].model) == ("b/cap", "a/cls")
    hugginggpt = FakeLLM('{"id": "b/cap", "reason": "fits"}')  # the original's one-task shape
    assert (await choose_models("r", [CAPTION], hugginggpt))[0].model == "b/cap"
    prose = FakeLLM("I would pick b/cap, it writes longer captions.")
    assert (await choose_models("r", [CAPTION], prose))[0].model == "b/cap"


async def test_an_invented_model_or_a_down_llm_falls_back_with_the_reason() -> None:
    made_up = FakeLLM('{"choices": [{"task": 0, "id": "x/not-offered"}]}')
    (choice,) = (await choose_models("r", [CAPTION], made_up)).values()
    assert choice.model == "" and "not a candidate" in choice.reason
    fallback = decide("image-to-text", CAPTION.candidates, choice)
    assert fallback.model == "a/cap" and "not a candidate" in fallback.reason
    down = FakeLLM(LLMError("LLM unavailable: connection refused"))
    (choice,) = (await choose_models("r", [CAPTION], down)).values()
    assert "could not choose" in choice.reason


async def test_no_open_task_costs_no_call() -> None:
    llm = FakeLLM("{}")
    assert await choose_models("r", [], llm) == {}
    assert llm.prompts == []
