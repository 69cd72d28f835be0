"""The TaskBench benchmark's scoring and name mapping, on inline requests: no shared data."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from chorus.v1.messages_pb2 import ArtifactRef, Kind, Task

from bench.taskbench_rules import (
    Counts,
    Request,
    chorus_task,
    evaluate,
    evident_tools,
    map_tools,
    node_counts,
    normalize,
    resources_in,
)
from services.common.tasks import TASK_TYPES

TOOLS = [
    "Image-to-Text",
    "Automatic Speech Recognition",
    "Text-to-Speech",
    "Summarization",
    "Object Detection",
    "Image Classification",
    "Question Answering",
    "Visual Question Answering",
    "Image Editing",
    "Translation",
]

# Predictions fixed per request, so the expected counts can be worked out by hand.
PLANS: dict[str, list[str]] = {
    "a": ["automatic-speech-recognition"],  # TP
    "b": ["image-classification"],  # TP, and text-to-speech missed (FN)
    "c": ["summarization", "translation", "summarization"],  # TP, FP; the duplicate counts once
    "d": ["canny-control"],  # object-detection missed (FN); canny-control out of vocabulary
    "e": [],  # gold is an unknown tool: dropped, nothing counts
}
REQUESTS = [
    Request("a", "transcribe a.wav", ("Automatic Speech Recognition",)),
    Request("b", "say what is in b.png aloud", ("Image Classification", "Text-to-Speech")),
    Request("c", "summarize this", ("Summarization",)),
    Request("d", "find the objects in d.jpg", ("Object Detection",)),
    Request("e", "clean up e.wav", ("Audio Quality Enhancer",)),
]


def _stub(text: str, resources: dict[str, ArtifactRef]) -> Sequence[Task]:
    request = next(r for r in REQUESTS if r.text == text)
    return [Task(id=i, task=name) for i, name in enumerate(PLANS[request.id])]


def test_names_normalize_to_chorus_task_types() -> None:
    assert normalize("Automatic Speech_Recognition") == "automatic-speech-recognition"
    assert chorus_task("Image-to-Text") == "image-to-text"
    assert chorus_task("Visual Question Answering") == "visual-question-answering"
    assert chorus_task("Image Editing") == "image-to-image"  # the explicit table
    assert chorus_task("Audio Quality Enhancer") is None


def test_map_tools_lists_the_unmapped() -> None:
    mapping, unmapped = map_tools([*TOOLS, "Audio Quality Enhancer"])
    assert unmapped == ["Audio Quality Enhancer"]
    assert set(mapping) == set(TOOLS)
    assert all(task in TASK_TYPES for task in mapping.values())


def test_node_counts_drop_names_outside_the_vocabulary() -> None:
    vocab = {"summarization", "translation"}
    counts = node_counts(["summarization", "unknown-tool"], ["translation", "canny-control"], vocab)
    assert (counts.tp, counts.fp, counts.fn) == (0, 1, 1)
    assert (counts.oov_predicted, counts.oov_gold) == (1, 1)


def test_node_f1_is_micro_averaged_over_requests() -> None:
    mapping, _ = map_tools(TOOLS)
    outcome = evaluate(REQUESTS, _stub, resources_in, mapping)
    c = outcome.counts
    assert (c.tp, c.fp, c.fn, c.oov_predicted, c.oov_gold) == (3, 1, 2, 1, 1)
    assert c.precision == pytest.approx(3 / 4)
    assert c.recall == pytest.approx(3 / 5)
    assert c.f1 == pytest.approx(2 / 3)
    assert c.strict_precision == pytest.approx(3 / 5)
    assert c.strict_f1 == pytest.approx(3 / 5)
    assert outcome.misses == {
        ("Text-to-Speech", "(nothing)"): 1,
        ("Object Detection", "canny-control"): 1,
    }
    assert outcome.top_misses(1) == [("Object Detection", "canny-control", 1, "d")]
    assert outcome.false_positives == {"translation": 1, "canny-control": 1}


def test_empty_scores_are_zero_not_an_error() -> None:
    assert (Counts().precision, Counts().recall, Counts().f1) == (0.0, 0.0, 0.0)


def test_a_raising_planner_counts_as_an_empty_plan() -> None:
    def broken(text: str, resources: dict[str, ArtifactRef]) -> Sequence[Task]:
        raise ValueError("boom")

    outcome = evaluate(REQUESTS[:1], broken, resources_in, map_tools(TOOLS)[0])
    assert (outcome.counts.tp, outcome.counts.fn) == (0, 1)
    assert outcome.errors == ["a: ValueError('boom')"]


def test_evident_tools_prefers_the_longest_name() -> None:
    assert evident_tools("Please use Visual Question Answering here", TOOLS) == {
        "Visual Question Answering"
    }
    assert evident_tools("convert this text to speech", TOOLS) == {"Text-to-Speech"}
    assert evident_tools("summarization, then translation", TOOLS) == {
        "Summarization",
        "Translation",
    }
    assert evident_tools("describe example.jpg", TOOLS) == set()


def test_resources_in_finds_files_and_urls_by_extension() -> None:
    text = "Use 'example.jpg', https://x.org/a/clip.WAV, movie.mp4 and notes.txt."
    found = resources_in(text)
    assert {name: ref.kind for name, ref in found.items()} == {
        "example.jpg": Kind.KIND_IMAGE,
        "https://x.org/a/clip.WAV": Kind.KIND_AUDIO,
        "movie.mp4": Kind.KIND_VIDEO,
    }
    assert found["example.jpg"].id == found["example.jpg"].name == "example.jpg"
