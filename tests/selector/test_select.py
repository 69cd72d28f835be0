from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

import pytest
from chorus.v1.messages_pb2 import Task
from chorus.v1.workers_pb2 import ServedModel, WorkerInfo

from services.common.llm import ChatTurn
from services.selector.select import NoCandidate, candidates_for, select_model


class FakeLLM:
    """A scripted stand-in for the `LLM` protocol (unit level; integration uses HTTP)."""

    name = "fake"

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.calls = 0

    async def complete(self, messages: Sequence[ChatTurn], *, json_mode: bool = False) -> str:
        self.calls += 1
        return self.reply

    async def stream(self, messages: Sequence[ChatTurn]) -> AsyncIterator[str]:
        yield self.reply


def _worker(name: str, in_flight: int, *models: str) -> WorkerInfo:
    served = [ServedModel(task="text-classification", model=m) for m in models]
    return WorkerInfo(worker_id=name, capacity=2, in_flight=in_flight, models=served)


def test_candidates_are_ranked_least_loaded_first() -> None:
    workers = [_worker("w1", 2, "busy/model"), _worker("w2", 0, "idle/model")]
    ranked = candidates_for("text-classification", workers)
    assert [c.model for c in ranked] == ["idle/model", "busy/model"]
    assert candidates_for("image-to-text", workers) == []


async def test_single_candidate_needs_no_llm() -> None:
    llm = FakeLLM("{}")
    choice = await select_model(
        Task(task="text-classification"),
        "r",
        candidates_for("text-classification", [_worker("w", 0, "m")]),
        llm,
    )
    assert choice.model == "m" and llm.calls == 0


async def test_llm_choice_must_name_a_candidate() -> None:
    candidates = candidates_for("text-classification", [_worker("w", 0, "a/one", "b/two")])
    good = FakeLLM(json.dumps({"id": "b/two", "reason": "fits the language"}))
    choice = await select_model(Task(task="text-classification"), "r", candidates, good)
    assert choice.model == "b/two" and "fits the language" in choice.reason
    made_up = FakeLLM('{"id": "c/three"}')
    choice = await select_model(Task(task="text-classification"), "r", candidates, made_up)
    assert choice.model == candidates[0].model and "named no candidate" in choice.reason


async def test_no_candidate_is_an_error() -> None:
    with pytest.raises(NoCandidate, match="no live executor"):
        await select_model(Task(task="text-classification"), "r", [], None)
