from __future__ import annotations

from chorus.v1.messages_pb2 import ArtifactRef, ChatMessage, ChatRequest, Kind

from services.common.tokens import count_tokens
from services.planner.prompt import HISTORY_TOKEN_BUDGET, planning_prompt


def test_prompt_lists_task_types_demos_and_the_request_with_its_files() -> None:
    photo = ArtifactRef(id="a", name="photo.jpg", kind=Kind.KIND_IMAGE)
    request = ChatRequest(
        messages=[ChatMessage(role="user", content="Describe it", artifacts=[photo])]
    )
    turns = planning_prompt(request)
    assert turns[0].role == "system"
    assert '"image-to-text" (image) -> text' in turns[0].content
    assert any(t.role == "assistant" and '"tasks"' in t.content for t in turns)  # demos
    assert turns[-1].content == "Describe it Files: photo.jpg (image)"


def test_history_is_cut_to_the_token_budget_keeping_the_newest_turns() -> None:
    history = [
        ChatMessage(
            role="user" if i % 2 == 0 else "assistant", content=f"turn {i} " + "word " * 200
        )
        for i in range(40)
    ]
    request = ChatRequest(messages=[*history, ChatMessage(role="user", content="and now?")])
    turns = planning_prompt(request)
    kept = [t for t in turns if t.content.startswith("turn ")]
    assert kept and kept[-1].content.startswith("turn 39 ")  # the newest survive
    assert not any(t.content.startswith("turn 0 ") for t in kept)  # the oldest go
    assert sum(count_tokens(t.content) for t in kept) <= HISTORY_TOKEN_BUDGET
