from __future__ import annotations

import json
from pathlib import Path

import pytest
from chorus.v1.messages_pb2 import ArtifactRef, Kind, Task

from services.planner.parse import PlanError, UnfinishedPlan, parse_plan

PHOTO = ArtifactRef(id="a1-photo.jpg", name="photo.jpg", kind=Kind.KIND_IMAGE)
FILES = {"photo.jpg": PHOTO}


def _shape(tasks: list[Task]) -> list[tuple[int, str, list[int], dict[str, str]]]:
    def value(arg: object) -> str:
        which = arg.WhichOneof("value")  # type: ignore[attr-defined]
        if which == "generated":
            return f"<{arg.generated.task_id}>"  # type: ignore[attr-defined]
        return str(arg.artifact.name if which == "artifact" else arg.text)  # type: ignore[attr-defined]

    return [(t.id, t.task, list(t.deps), {a.name: value(a) for a in t.args}) for t in tasks]


def test_a_well_formed_plan_is_read_exactly() -> None:
    reply = json.dumps(
        {
            "tasks": [
                {"task": "image-to-text", "id": 0, "dep": [], "args": {"image": "photo.jpg"}},
                {"task": "text-to-speech", "id": 1, "dep": [0], "args": {"text": "<GENERATED>-0"}},
            ]
        }
    )
    parsed = parse_plan(reply, FILES)
    assert parsed.normalizations == []
    assert _shape(parsed.tasks) == [
        (0, "image-to-text", [], {"image": "photo.jpg"}),
        (1, "text-to-speech", [0], {"text": "<0>"}),
    ]


@pytest.mark.parametrize(
    ("reply", "expected", "normalized"),
    [
        (  # prose, a code fence, Python quoting with an apostrophe, other spellings, ids from 1
            "Here you go:\n```json\n[{'task': 'Image_To_Text', 'id': 1, 'dep': [-1], "
            "'args': {'image': '/examples/photo.jpg'}}, {'task': 'Text-to-Speech', 'id': 2, "
            "'dep': [1], 'args': {'text': 'don't forget <GENERATED-1>'}},]\n```",
            [
                (0, "image-to-text", [], {"image": "photo.jpg"}),
                (1, "text-to-speech", [0], {"text": "<0>"}),
            ],
            ["code fence", "Python-style", "'Image_To_Text'", "renumbered", "<GENERATED>-1"],
        ),
        (  # the original demo's defect: a missing opening bracket
            '{"task": "image-to-text", "id": 0, "dep": [-1], "args": {"image": "photo.jpg"}}, '
            '{"task": "tts", "id": 1, "dep": [0], "args": {"text": "<GENERATED>-0"}}]',
            [
                (0, "image-to-text", [], {"image": "photo.jpg"}),
                (1, "text-to-speech", [0], {"text": "<0>"}),
            ],
            ["brackets", "'tts'"],
        ),
        (  # two generated inputs in one argument unfold into two tasks with distinct ids
            '[{"task": "text-to-image", "id": 0, "args": {"text": "a cat"}},'
            ' {"task": "text-to-image", "id": 1, "args": {"text": "a dog"}},'
            ' {"task": "image-to-text", "id": 2, "dep": [0, 1],'
            ' "args": {"image": "<GENERATED>-0, <GENERATED>-1"}}]',
            [
                (0, "text-to-image", [], {"text": "a cat"}),
                (1, "text-to-image", [], {"text": "a dog"}),
                (2, "image-to-text", [0, 1], {"image": "<0>"}),
                (3, "image-to-text", [0, 1], {"image": "<1>"}),
            ],
            ["split task #2 into 2"],
        ),
        (  # forward reference, a self dependency, a dependency on a missing task, a bare string
            '[{"task": "text-to-speech", "id": 0, "dep": [0, 1, 9], "args": {"text": "<GENERATED>-1"}},'
            ' {"task": "image-to-text", "id": 1, "args": "photo.jpg"}]',
            [
                (0, "image-to-text", [], {"image": "photo.jpg"}),
                (1, "text-to-speech", [0], {"text": "<0>"}),
            ],
            ["itself", "task 9", "reordered", "unnamed arguments"],
        ),
        (  # ids and deps as strings, "parameters" and "arguments" for "args"
            '[{"task": "image-to-text", "id": "1", "dep": "-1", "parameters": {"image": "photo.jpg"}},'
            ' {"task": "text-to-speech", "id": "task-2", "dep": "1", "arguments": {"text": "<GENERATED>-1"}}]',
            [
                (0, "image-to-text", [], {"image": "photo.jpg"}),
                (1, "text-to-speech", [0], {"text": "<0>"}),
            ],
            ["ids or dependencies written as strings", "'parameters' as 'args'", "'arguments'"],
        ),
        (  # a reasoning model's thinking, JSON5 comments and bare keys, prose with brackets after
            "<think>First [caption], then {speak}.</think>\n[{task: 'image-to-text', id: 0, "
            "args: {image: 'photo.jpg'}}, // then speak it\n {task: 'text-to-speech', id: 1, "
            "dep: [0], args: {text: '<GENERATED>-0'}}]\nTask [1] reads {the caption}.",
            [
                (0, "image-to-text", [], {"image": "photo.jpg"}),
                (1, "text-to-speech", [0], {"text": "<0>"}),
            ],
            ["reasoning", "comments", "bare keys", "text around it"],
        ),
        (  # an audio file given as "image" to a speech task moves to the audio slot
            '[{"task": "automatic-speech-recognition", "args": {"image": "talk.wav"}}]',
            [(0, "automatic-speech-recognition", [], {"audio": "talk.wav"})],
            ["moved argument 'image' to slot 'audio'"],
        ),
    ],
)
def test_real_defects_are_normalized_and_named(
    reply: str, expected: list[tuple[int, str, list[int], dict[str, str]]], normalized: list[str]
) -> None:
    parsed = parse_plan(reply, FILES)
    assert _shape(parsed.tasks) == expected
    said = " | ".join(parsed.normalizations)
    for fragment in normalized:
        assert fragment in said, said


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("I cannot help with that.", "no JSON"),
        ('[{"task": "fly-to-moon", "id": 0, "args": {}}]', "unknown task type 'fly-to-moon'"),
        (
            '[{"task": "summarization", "id": 0, "args": {"text": "<GENERATED>-0"}}]',
            "its own output",
        ),
        (
            '[{"task": "summarization", "id": 0, "args": {"text": "<GENERATED>-4"}}]',
            "task 4, which is not",
        ),
        (
            '[{"task": "summarization", "id": 0, "args": {"text": "<GENERATED>-1"}},'
            ' {"task": "translation", "id": 1, "args": {"text": "<GENERATED>-0"}}]',
            "cycle",
        ),
        ('[{"task": "image-to-text", "id": 0, "args": {"text": "hi"}}]', "no free argument slot"),
        ('[{"task": "image-to-text", "args": {}}]', "missing argument 'image'"),
        (
            '[{"task": "text-classification", "args": {"text": "x"}},'
            ' {"task": "image-to-text", "args": {"image": "<GENERATED>-0"}}]',
            "which makes text",
        ),
        ('[{"task": "summarization", "id": 99999999999, "args": {"text": "x"}}]', "out of range"),
        ('[{"task": "summarization", "id": "first", "args": {"text": "x"}}]', "id is not a number"),
        ("<think>I should [caption] the {image}", "only reasoning"),
        ('[{"task": "summarization", "args": {"text": "a long te', "before its first task"),
    ],
)
def test_what_cannot_be_normalized_is_rejected_with_a_reason(reply: str, reason: str) -> None:
    with pytest.raises(PlanError, match=reason):
        parse_plan(reply, {})


@pytest.mark.parametrize(
    "reply",
    [
        "[" * 5000 + "]" * 5000,  # deeply nested
        json.dumps([{"task": "summarization", "args": {"text": "x"}}] * 500),  # 500 tasks
        '[{"task": "summarization", "args": {"text": "' + "x" * 1_000_000 + '"}}]',  # 1 MB
        "{" * 100_000,
    ],
)
@pytest.mark.timeout(10)  # a hang fails the test; speed itself is measured by the benchmark
def test_hostile_replies_are_rejected(reply: str) -> None:
    with pytest.raises(PlanError):
        parse_plan(reply, {})


def test_the_original_demos_all_parse(tmp_path: Path) -> None:
    """HuggingGPT's own few-shot plans, defects included (inlined: tests need no shared data)."""
    demos = [
        '[{"task": "image-to-text", "id": 0, "dep": [-1], "args": {"image": "e1.jpg" }}, '
        '{"task": "visual-question-answering", "id": 1, "dep": [0], "args": {"image": "e1.jpg", '
        '"text": "How many sheep in the picture"}} }}, {"task": "object-detection", "id": 2, '
        '"dep": [-1], "args": {"image": "e1.jpg" }}]',
        '[{"task": "image-to-text", "id": 0, "dep": [-1], "args": {"image": "/e.jpg" }}, '
        '{"task": "text-to-image", "id": 1, "dep": [0], "args": {"text": "<GENERATED-0>" }}]',
    ]
    for demo in demos:
        assert parse_plan(demo, {}).tasks


def test_a_reply_cut_off_by_the_token_limit_never_runs_an_unfinished_task() -> None:
    reply = (
        '[{"task": "image-to-text", "id": 0, "args": {"image": "photo.jpg"}}, '
        '{"task": "text-to-speech", "id": 1, "args": {"text": "<GENERATED>-0", "voice": "x"'
    )
    parsed = parse_plan(reply, FILES, cut_off=True)
    assert _shape(parsed.tasks) == [(0, "image-to-text", [], {"image": "photo.jpg"})]
    assert any("cut off (1)" in n for n in parsed.normalizations)
    with pytest.raises(UnfinishedPlan, match="before its first task"):
        parse_plan(reply[: reply.index("}")], FILES, cut_off=True)
