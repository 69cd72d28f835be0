from __future__ import annotations

import pytest
from chorus.v1.messages_pb2 import ArtifactRef, Kind

from services.planner.parse import PlanError, parse_plan

PHOTO = ArtifactRef(id="a1-photo.jpg", name="photo.jpg", kind=Kind.KIND_IMAGE)


def test_hugginggpt_reply_with_prose_and_generated_refs() -> None:
    reply = (
        'Here is the plan: [{"task": "image-to-text", "id": 0, "dep": [-1], '
        '"args": {"image": "/examples/photo.jpg"}}, {"task": "Text_To_Speech", "id": 1, '
        '"dep": [], "args": {"text": "<GENERATED>-0"}}] Hope it helps.'
    )
    first, second = parse_plan(reply, {"photo.jpg": PHOTO})
    assert first.args[0].artifact.id == PHOTO.id and list(first.deps) == []
    assert second.task == "text-to-speech" and list(second.deps) == [0]
    assert second.args[0].generated.task_id == 0


def test_wrapped_object_is_accepted() -> None:
    (task,) = parse_plan('{"tasks": [{"task": "summarization", "args": {"text": "x"}}]}', {})
    assert task.task == "summarization" and task.id == 0


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("I cannot help with that.", "no JSON"),
        ('[{"task": "fly-to-moon", "id": 0, "args": {}}]', "unknown task type"),
        ('[{"task": "summarization", "id": 0, "dep": [0], "args": {"text": "x"}}]', "itself"),
        (
            '[{"task": "summarization", "id": 0, "dep": [4], "args": {"text": "x"}}]',
            "does not exist",
        ),
        (
            '[{"task": "summarization", "id": 0, "dep": [1], "args": {"text": "x"}},'
            ' {"task": "translation", "id": 1, "dep": [0], "args": {"text": "y"}}]',
            "cycle",
        ),
        ('[{"task": "summarization", "id": 0, "args": {"image": "x"}}]', "no argument named"),
    ],
)
def test_invalid_plans_are_rejected_with_a_reason(reply: str, reason: str) -> None:
    with pytest.raises(PlanError, match=reason):
        parse_plan(reply, {})
