"""Task types through the real `transformers` pipelines on tiny random-weight models."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from chorus.v1.messages_pb2 import TaskArgument, TaskInvocation, TaskStatus
from PIL import Image

from services.executor.execute import execute
from services.executor.media import Audio, decode_wav, encode_wav
from tests.executor import tiny_models as tiny
from tests.support import MemoryArtifacts, local_run

IMAGE = "image"
AUDIO = "audio"


def _png() -> bytes:
    image = Image.new("RGB", (64, 48), "white")
    image.paste((200, 30, 30), (10, 10, 40, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _wav() -> bytes:
    return encode_wav(Audio(np.sin(np.linspace(0, 600, 16000)).astype(np.float32), 16000))


CASES: list[tuple[str, Callable[[Path], Path], dict[str, str], dict[str, str]]] = [
    # task, builder, arguments, {output name: what it is}
    ("token-classification", tiny.token_classifier, {"text": "the cat sat on a mat"},
     {"text": "text", "entities": "json"}),
    ("question-answering", tiny.question_answerer,
     {"text": "where is the cat", "context": "the cat sat on a mat"},
     {"text": "text", "answer": "json"}),
    ("text-generation", tiny.text_generator, {"text": "the cat"}, {"text": "text"}),
    ("conversational", tiny.text_generator, {"text": "the cat"}, {"text": "text"}),
    ("summarization", tiny.seq2seq, {"text": "the cat sat on a mat"}, {"text": "text"}),
    ("translation", tiny.seq2seq, {"text": "the cat sat on a mat"}, {"text": "text"}),
    ("text2text-generation", tiny.seq2seq, {"text": "the cat sat on a mat"}, {"text": "text"}),
    ("image-to-text", tiny.captioner, {"image": IMAGE}, {"text": "text"}),
    ("visual-question-answering", tiny.captioner, {"image": IMAGE, "text": "where is the cat"},
     {"text": "text"}),
    ("image-to-text", tiny.chat_vision_model, {"image": IMAGE}, {"text": "text"}),
    ("visual-question-answering", tiny.chat_vision_model,
     {"image": IMAGE, "text": "where is the cat"}, {"text": "text"}),
    ("document-question-answering", tiny.document_reader,
     {"image": IMAGE, "text": "where is the cat"}, {"text": "text", "answer": "json"}),
    ("image-classification", tiny.image_classifier, {"image": IMAGE},
     {"text": "text", "labels": "json"}),
    ("object-detection", tiny.object_detector, {"image": IMAGE},
     {"image": "image/png", "text": "text", "boxes": "json"}),
    ("depth-estimation", tiny.depth_estimator, {"image": IMAGE}, {"image": "image/png"}),
    ("depth-control", tiny.depth_estimator, {"image": IMAGE}, {"image": "image/png"}),
    ("image-segmentation", tiny.segmenter, {"image": IMAGE},
     {"image": "image/png", "text": "text", "segments": "json"}),
    ("seg-control", tiny.segmenter, {"image": IMAGE}, {"image": "image/png"}),
    ("audio-classification", tiny.audio_classifier, {"audio": AUDIO},
     {"text": "text", "labels": "json"}),
    ("automatic-speech-recognition", tiny.speech_recognizer, {"audio": AUDIO}, {"text": "text"}),
    ("text-to-speech", tiny.speech_synthesizer, {"text": "hello cat"}, {"audio": "audio/wav"}),
]  # fmt: skip


async def _invocation(task: str, args: dict[str, str], store: MemoryArtifacts) -> TaskInvocation:
    inv = TaskInvocation(request_id="r", task_id=3, task=task, model="m", attempt=1)
    for name, value in args.items():
        arg = TaskArgument(name=name)
        if value == IMAGE:
            arg.artifact.CopyFrom(await store.put(_png(), "photo.png"))
        elif value == AUDIO:
            arg.artifact.CopyFrom(await store.put(_wav(), "voice.wav"))
        else:
            arg.text = value
        inv.args.append(arg)
    return inv


@pytest.mark.parametrize(
    ("task", "build", "args", "expected"), CASES, ids=[f"{c[0]}-{c[1].__name__}" for c in CASES]
)
async def test_task_through_the_real_pipeline(
    task: str,
    build: Callable[[Path], Path],
    args: dict[str, str],
    expected: dict[str, str],
    tmp_path: Path,
) -> None:
    model = build(tmp_path / "model")
    store = MemoryArtifacts()
    result = await execute(
        await _invocation(task, args, store), local_run(task, str(model)), store, "w"
    )
    assert result.status == TaskStatus.TASK_STATUS_SUCCEEDED, result.error
    outputs = {o.name: o for o in result.outputs}
    assert set(outputs) == set(expected)
    for name, what in expected.items():
        output = outputs[name]
        if what == "text":
            assert output.WhichOneof("value") == "text"
        elif what == "json":
            json.loads(output.json)
        else:
            ref, data = store.items[output.artifact.id]
            assert ref.media_type == what and ref.name.startswith(f"{task}-3")
            if what == "audio/wav":
                speech = decode_wav(data, ref.name)
                assert speech.sampling_rate == 16000 and len(speech.samples) > 0
            else:
                picture = Image.open(io.BytesIO(data))
                assert picture.size == (64, 48)  # drawn over / mapped onto the input image


async def test_question_answering_answers_with_a_span_of_the_context(tmp_path: Path) -> None:
    model = tiny.question_answerer(tmp_path / "qa")
    context = "the cat sat on a mat"
    store = MemoryArtifacts()
    inv = await _invocation("question-answering", {"text": "where", "context": context}, store)
    result = await execute(inv, local_run("question-answering", str(model)), store, "w")
    answer: dict[str, Any] = json.loads(result.outputs[1].json)
    assert answer["answer"] and context[answer["start"] : answer["end"]] == answer["answer"]


async def test_batched_and_single_classification_agree(tiny_classifier: Path) -> None:
    texts = ["good movie", "bad movie", "i awful great movie movie", "great"]
    single = local_run("text-classification", str(tiny_classifier))
    from services.executor.backends import LocalBackend
    from services.executor.handlers import HANDLERS
    from services.executor.models import LoadOptions, ModelSpec
    from services.executor.pool import ModelPool

    spec = ModelSpec("text-classification", str(tiny_classifier))
    backend = LocalBackend(HANDLERS[spec.task], spec, ModelPool(LoadOptions()), 8)
    together = await backend.infer(spec.model, [{"text": t} for t in texts])
    for text, outputs in zip(texts, together, strict=True):
        alone = await single({"text": text})
        assert outputs[1].data[0]["label"] == alone[1].data[0]["label"]
        assert outputs[1].data[0]["score"] == pytest.approx(alone[1].data[0]["score"], abs=1e-5)
