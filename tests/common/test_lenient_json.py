"""Each named repair of the LLM-JSON reader, and each rejection with its reason."""

from __future__ import annotations

from typing import Any

import pytest

from services.common.lenient_json import (
    MAX_REASONING_CHARS,
    MAX_REPLY_CHARS,
    CutBeforeAnyItem,
    JSONRepairError,
    ReasoningOnly,
    answer_text,
    load_lenient,
)

PLAN = '[{"task": "a", "id": 0}, {"task": "b", "id": 1}]'
VALUE = [{"task": "a", "id": 0}, {"task": "b", "id": 1}]


def test_json_as_written_needs_no_repair() -> None:
    assert load_lenient(PLAN).value == VALUE
    assert load_lenient(PLAN).repairs == ()


@pytest.mark.parametrize(
    ("reply", "repair"),
    [
        ("<think>a plan [first {a}] then b</think>\n" + PLAN, "reasoning"),
        ("<THINKING>[x</THINKING>" + PLAN, "reasoning"),
        ("The user wants {a, b}. So: [a, b]\n</think>\n\n" + PLAN, "reasoning"),  # no opening tag
        (PLAN + "\n<think>now let me check [this", "unfinished <think>"),
        ("```json\n" + PLAN + "\n```", "code fence"),
        ("Sure:\n" + PLAN + "\nTask [1] uses {the output} of task [0].", "text around it"),
        (
            '[{"task": "a", "id": 0}, // the first\n/* then [b] */ {"task": "b", "id": 1}]',
            "comments",
        ),
        ('[{task: "a", id: 0}, {task: "b", id: 1, _2nd_key: 1}]', "bare keys"),
        (
            "[{\u201ctask\u201d: \u201ca\u201d, \u201cid\u201d: 0}, {'task': 'b', 'id': 1}]",
            "typographic",
        ),
        ("[{'task': \"a\", 'id': 0}, {'task': \"b\", 'id': 1}]", "Python-style"),
        ('[{"task": "a", "id": 0, "x": None}, {"task": "b", "id": 1, "y": True}]', "Python-style"),
        ('[{"task": "a", "id": 0,}, {"task": "b", "id": 1},]', "trailing commas"),
        ('{"task": "a", "id": 0}, {"task": "b", "id": 1}]', "brackets"),
        ("[{'task': 'a', 'id': 0, 'x': {1, 2}}, {'task': 'b', 'id': 1}]", "Python literal"),
        ('[{"task": "a", "id": 0, "x": one two}, {"task": "b", "id": 1}]', "json_repair"),
    ],
)
def test_each_defect_is_read_by_a_named_repair(reply: str, repair: str) -> None:
    loaded = load_lenient(reply)
    got: list[dict[str, Any]] = loaded.value
    assert [(t["task"], t["id"]) for t in got] == [("a", 0), ("b", 1)]
    assert any(repair in r for r in loaded.repairs), loaded.repairs


def test_a_typographic_quote_inside_a_string_is_text() -> None:
    loaded = load_lenient('[{"text": "he said \u201chi\u201d", "id": 0}]')
    assert loaded.value == [{"text": "he said \u201chi\u201d", "id": 0}]
    assert loaded.repairs == ()


def test_a_comment_marker_inside_a_string_is_text() -> None:
    loaded = load_lenient("[{'url': 'http://x.org/a.png', 'id': 0}]")
    assert loaded.value == [{"url": "http://x.org/a.png", "id": 0}]


@pytest.mark.parametrize(
    "reply",
    [
        PLAN[:-1] + ', {"task": "c", "args": {"text": "<GENER',  # mid-string
        PLAN[:-1] + ', {"task": "c", "dep": ',  # after a key
        '{"tasks": ' + PLAN[:-1] + ', {"task": "c"',  # wrapped, after a value
    ],
)
def test_a_reply_that_stops_inside_its_json_keeps_only_its_complete_items(reply: str) -> None:
    loaded = load_lenient(reply)
    value = loaded.value["tasks"] if isinstance(loaded.value, dict) else loaded.value
    assert [t["task"] for t in value] == ["a", "b"]
    assert any("cut off" in r for r in loaded.repairs), loaded.repairs


def test_a_reply_cut_off_by_the_token_limit_keeps_only_items_that_closed() -> None:
    # `{"task": "c", "id": 2}` closed its values but not itself: it might have had more.
    loaded = load_lenient(PLAN[:-1] + ', {"task": "c", "id": 2', cut_off=True)
    assert [t["task"] for t in loaded.value] == ["a", "b"]
    assert "kept the list items completed before the reply was cut off (2)" in loaded.repairs
    # A reply that was complete when the limit struck is read whole.
    assert load_lenient(PLAN, cut_off=True).value == VALUE


@pytest.mark.parametrize(
    ("reply", "error", "reason"),
    [
        ("<think>so the plan is [{", ReasoningOnly, "only reasoning"),
        ("  <think>" + "x" * 1_000_000, ReasoningOnly, "never closes"),
        ("<think>[{}]</think>\n", ReasoningOnly, "nothing follows"),
        ('[{"task": "a", "args": {"text": "<GENER', CutBeforeAnyItem, "first item"),
        ('{"task": "a", "args": {"text": "<GENER', CutBeforeAnyItem, "first item"),
        ("no JSON here", JSONRepairError, "holds no JSON"),
        ("<think>[1]</think> and nothing after", JSONRepairError, "holds no JSON"),
        ("[" * 30 + "]" * 30, JSONRepairError, "levels deep"),
        ("[" + "1," * MAX_REPLY_CHARS + "1]", JSONRepairError, "the answer is"),
        ("x" * (MAX_REPLY_CHARS + MAX_REASONING_CHARS + 1), JSONRepairError, "the reply is"),
        ("Here: [:::] {:}", JSONRepairError, "not JSON"),
    ],
)
@pytest.mark.timeout(10)  # a hang fails the test; speed is measured by the benchmark
def test_what_cannot_be_read_is_rejected_with_a_reason(
    reply: str, error: type[Exception], reason: str
) -> None:
    with pytest.raises(error, match=reason):
        load_lenient(reply, cut_off=reply.endswith("GENER"))


@pytest.mark.timeout(10)
def test_a_megabyte_of_reasoning_before_the_answer_is_dropped_unread() -> None:
    reply = "<think>" + "[{" * 500_000 + "</think>" + PLAN
    assert load_lenient(reply).value == VALUE


def test_the_answer_of_a_reply_is_what_follows_its_reasoning() -> None:
    assert answer_text("<think>hmm</think>[1]") == "[1]"
    assert answer_text("<think>hmm") == ""
    assert answer_text("[1]") == "[1]"
