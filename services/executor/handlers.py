"""One handler per task type, declared once: how to load its model and how to run it.

A handler's `run` gets the loaded model and the decoded inputs (text as `str`, images as PIL,
audio as `Audio`) and returns outputs; `execute` turns those into artifacts and messages.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from services.common.tasks import TASK_TYPES
from services.executor.imageops import canny
from services.executor.media import Audio

Inputs = Mapping[str, Any]


@dataclass(frozen=True)
class Produced:
    """One output of a task: text, structured data, or a generated file."""

    name: str
    text: str | None = None
    data: Any = None  # JSON-able structure
    image: Image.Image | None = None
    audio: Audio | None = None


@dataclass(frozen=True)
class Handler:
    task: str
    backend: str  # "pipeline" | "seq2seq" | "sentence-transformers" | "builtin"
    run: Callable[[Any, Inputs], list[Produced]]
    pipeline_task: str = ""  # the transformers pipeline name, for backend "pipeline"


def _max_length(pipe: Any) -> int:
    """Longest input the model takes; a tokenizer may not know it, the model's config does."""
    limits = [
        getattr(pipe.tokenizer, "model_max_length", None),
        getattr(pipe.model.config, "max_position_embeddings", None),
    ]
    return min([n for n in limits if isinstance(n, int) and n > 0] or [512])


def _labels(result: Any) -> list[Produced]:
    top = result[0] if isinstance(result, list) and result else result
    if isinstance(top, list):  # some pipelines nest one list per input
        top = top[0]
    summary = f"{top['label']} ({top['score']:.2f})"
    return [Produced("text", text=summary), Produced("labels", data=_jsonable(result))]


def _entities(result: Any) -> list[Produced]:
    words = ", ".join(f"{e.get('word')} ({e.get('entity_group', e.get('entity'))})" for e in result)
    return [
        Produced("text", text=words or "no entities"),
        Produced("entities", data=_jsonable(result)),
    ]


def _generated(result: Any) -> list[Produced]:
    return [Produced("text", text=str(result[0]["generated_text"]))]


def _seq2seq(model: Any, inputs: Inputs) -> list[Produced]:
    tokenizer, network = model
    encoded = tokenizer(inputs["text"], return_tensors="pt", truncation=True)
    encoded = {k: v.to(network.device) for k, v in encoded.items()}
    output = network.generate(**encoded, max_new_tokens=64)
    return [Produced("text", text=tokenizer.decode(output[0], skip_special_tokens=True))]


def _similarity(model: Any, inputs: Inputs) -> list[Produced]:
    vectors = model.encode([inputs["text1"], inputs["text2"]], normalize_embeddings=True)
    score = float(np.dot(vectors[0], vectors[1]))
    return [Produced("text", text=f"similarity {score:.3f}"), Produced("score", data=score)]


def _speech(result: Any) -> list[Produced]:
    samples = np.asarray(result["audio"], dtype=np.float32).reshape(-1)
    return [Produced("audio", audio=Audio(samples, int(result["sampling_rate"])))]


def _audio_input(inputs: Inputs) -> dict[str, Any]:
    audio: Audio = inputs["audio"]
    return {"raw": audio.samples, "sampling_rate": audio.sampling_rate}


def _jsonable(value: Any) -> Any:
    return json.loads(
        json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v))
    )


_HANDLERS = [
    Handler(
        "text-classification",
        "pipeline",
        lambda p, i: _labels(p(i["text"], truncation=True, max_length=_max_length(p))),
        "text-classification",
    ),
    Handler(
        "token-classification",
        "pipeline",
        lambda p, i: _entities(p(i["text"])),
        "token-classification",
    ),
    Handler(
        "text-generation",
        "pipeline",
        lambda p, i: _generated(p(i["text"], max_new_tokens=48)),
        "text-generation",
    ),
    Handler("summarization", "seq2seq", _seq2seq),
    Handler("translation", "seq2seq", _seq2seq),
    Handler("text2text-generation", "seq2seq", _seq2seq),
    Handler("sentence-similarity", "sentence-transformers", _similarity),
    Handler(
        "image-classification",
        "pipeline",
        lambda p, i: _labels(p(i["image"])),
        "image-classification",
    ),
    Handler(
        "automatic-speech-recognition",
        "pipeline",
        lambda p, i: [Produced("text", text=str(p(_audio_input(i))["text"]))],
        "automatic-speech-recognition",
    ),
    Handler(
        "audio-classification",
        "pipeline",
        lambda p, i: _labels(p(_audio_input(i))),
        "audio-classification",
    ),
    Handler("text-to-speech", "pipeline", lambda p, i: _speech(p(i["text"])), "text-to-audio"),
    Handler("canny-control", "builtin", lambda op, i: [Produced("image", image=op(i["image"]))]),
]

BUILTIN_OPS: dict[str, Callable[[Image.Image], Image.Image]] = {"builtin:canny": canny}


def _build_registry() -> dict[str, Handler]:
    registry: dict[str, Handler] = {}
    for handler in _HANDLERS:
        if handler.task not in TASK_TYPES:
            raise ValueError(f"handler for unknown task type {handler.task!r}")
        if handler.task in registry:
            raise ValueError(f"two handlers for {handler.task!r}")
        if handler.backend == "pipeline" and not handler.pipeline_task:
            raise ValueError(f"pipeline handler {handler.task!r} names no pipeline task")
        registry[handler.task] = handler
    return registry


HANDLERS = _build_registry()
