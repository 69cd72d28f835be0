"""The OpenAI body read into a Chorus request, and Chorus's answer cut and shaped for clients."""

from __future__ import annotations

import base64

import pytest
from chorus.v1.messages_pb2 import (
    ArtifactRef,
    ProgressEvent,
    Task,
    TaskPlan,
    TaskResult,
    TaskStarted,
    TaskStatus,
)

from services.gateway.errors import RequestError
from services.gateway.openai_request import read_body
from services.gateway.openai_response import AnswerCut, files_markdown, workflow_line

USER = {"role": "user", "content": "Hi"}


def test_developer_is_system_and_files_come_as_bytes() -> None:
    png = "data:image/png;base64," + base64.b64encode(b"\x89PNG").decode()
    wav = "data:audio/wav;base64," + base64.b64encode(b"RIFF").decode()
    call = read_body(
        {
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Describe"},
                        {"type": "image_url", "image_url": {"url": png}},
                        {"type": "file", "file": {"filename": "a b.wav", "file_data": wav}},
                    ],
                },
            ],
            "temperature": 0.2,
        }
    )
    assert [m.role for m in call.messages] == ["system", "user"]
    files = call.messages[1].files
    assert [(f.name, f.media_type, f.data) for f in files] == [
        ("image.png", "image/png", b"\x89PNG"),
        ("a_b.wav", "audio/wav", b"RIFF"),
    ]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"messages": [USER], "n": 3}, "n: Chorus gives one answer"),
        ({"messages": [USER], "tools": [{"type": "function"}]}, "tools: Chorus plans"),
        ({"messages": [USER], "stop": [1]}, "stop: a string or a list"),
        ({"messages": [USER], "max_tokens": 0}, "max_tokens: must be at least 1"),
        ({"messages": [USER], "bogus": 1}, "bogus: not a chat-completions parameter"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role: Chorus calls no"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role: system"),
        (
            {"messages": [{"role": "user", "content": [{"type": "video"}]}]},
            "messages[0].content[0].type",
        ),
    ],
)
def test_what_chorus_cannot_honour_is_refused_by_name(body: dict[str, object], says: str) -> None:
    with pytest.raises(RequestError, match=says.replace("[", r"\[").replace("]", r"\]")):
        read_body(body)


def test_stop_is_honoured_across_pieces() -> None:
    cut = AnswerCut(stop=("END",))
    sent = cut.feed("all is we") + cut.feed("ll E") + cut.feed("ND and more") + cut.flush()
    assert sent == "all is well " and cut.finish_reason == "stop"


def test_a_partial_stop_that_is_not_one_is_sent() -> None:
    cut = AnswerCut(stop=("END",))
    assert cut.feed("the EN") == "the " and cut.feed("gine") == "ENgine"
    assert cut.flush() == "" and cut.finish_reason is None


def test_max_tokens_cuts_and_says_length() -> None:
    cut = AnswerCut(max_tokens=3)
    assert cut.feed("one two ") + cut.feed("three four five") == "one two three"
    assert cut.finish_reason == "length" and cut.feed("more") == ""


def test_files_become_markdown_with_their_names_escaped() -> None:
    files = [
        ArtifactRef(id="a1", name="edges.png", media_type="image/png"),
        ArtifactRef(id="a2", name="](javascript:x)", media_type="audio/wav"),
    ]
    assert files_markdown(files, "http://h:1") == (
        "![edges.png](http://h:1/v1/files/a1/content)\n"
        "[\\]\\(javascript:x\\)](http://h:1/v1/files/a2/content)"
    )


def test_the_workflow_reads_as_lines() -> None:
    plan = ProgressEvent(plan_ready=TaskPlan(tasks=[Task(id=0, task="canny-control")]))
    started = ProgressEvent(
        task_started=TaskStarted(
            task_id=0, task="canny-control", model="m", selection_reason="only one"
        )
    )
    failed = ProgressEvent(
        task_finished=TaskResult(
            task_id=0,
            task="canny-control",
            model="m",
            status=TaskStatus.TASK_STATUS_FAILED,
            seconds=1.25,
            error="boom",
        )
    )
    assert [workflow_line(e) for e in (plan, started, failed, ProgressEvent(answer_token="x"))] == [
        "Plan: 1 task(s): #0 canny-control.\n",
        "Task #0 canny-control started on m: only one\n",
        "Task #0 canny-control failed on m in 1.2s: boom.\n",
        "",
    ]
