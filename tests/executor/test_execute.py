from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from chorus.v1.messages_pb2 import (
    ArtifactRef,
    Kind,
    TaskArgument,
    TaskInvocation,
    TaskResult,
    TaskStatus,
)
from PIL import Image
from prometheus_client import REGISTRY

from services.common.settings import INLINE_MAX_BYTES_LIMIT
from services.executor.execute import execute
from services.executor.handler import Produced
from services.executor.handlers import HANDLERS
from services.executor.media import Audio, decode_wav, encode_wav
from services.executor.models import LoadOptions, ModelSpec, ModelUnavailable, load
from tests.support import MemoryArtifacts, local_run, marks_the_square, square_png


def _invocation(task: str, model: str, **args: str | ArtifactRef) -> TaskInvocation:
    inv = TaskInvocation(request_id="r", task_id=0, task=task, model=model)
    for name, value in args.items():
        arg = TaskArgument(name=name)
        if isinstance(value, ArtifactRef):
            arg.artifact.CopyFrom(value)
        else:
            arg.text = value
        inv.args.append(arg)
    return inv


async def test_text_classification_through_the_real_pipeline(tiny_classifier: Path) -> None:
    loaded = local_run("text-classification", str(tiny_classifier))
    inv = _invocation("text-classification", str(tiny_classifier), text="good movie")
    inv.selection_reason = "the only model a live replica serves for this task"
    result = await execute(inv, loaded, MemoryArtifacts(), "w")
    assert result.status == TaskStatus.TASK_STATUS_SUCCEEDED, result.error
    assert result.selection_reason == inv.selection_reason  # the reason travels with the work
    labels = json.loads(next(o.json for o in result.outputs if o.name == "labels"))
    assert labels[0]["label"] in ("POSITIVE", "NEGATIVE") and 0 <= labels[0]["score"] <= 1


async def test_text_longer_than_the_model_takes_is_truncated(tiny_classifier: Path) -> None:
    loaded = local_run("text-classification", str(tiny_classifier))
    inv = _invocation("text-classification", str(tiny_classifier), text="good " * 500)
    result = await execute(inv, loaded, MemoryArtifacts(), "w")
    assert result.status == TaskStatus.TASK_STATUS_SUCCEEDED, result.error


async def test_an_expired_input_is_a_bad_input_not_a_model_error() -> None:
    gone = ArtifactRef(id="gone-photo.png", name="photo.png", kind=Kind.KIND_IMAGE)
    loaded = local_run("canny-control", "builtin:canny")
    inv = _invocation("canny-control", "builtin:canny", image=gone)
    result = await execute(inv, loaded, MemoryArtifacts(), "w")
    assert result.status == TaskStatus.TASK_STATUS_FAILED
    assert result.error.startswith("bad input: artifact 'gone-photo.png' does not exist")


async def test_canny_writes_an_edge_image_artifact() -> None:
    store = MemoryArtifacts()
    square = await store.put(square_png(40), "square.png")
    loaded = local_run("canny-control", "builtin:canny")
    result = await execute(
        _invocation("canny-control", "builtin:canny", image=square), loaded, store, "w"
    )
    assert result.status == TaskStatus.TASK_STATUS_SUCCEEDED, result.error
    ref, data = store.items[result.outputs[0].artifact.id]
    assert ref.media_type == "image/png" and marks_the_square(Image.open(io.BytesIO(data)))


@pytest.mark.parametrize(
    ("data", "name", "reason"),
    [
        (b"\x89PNG not really", "broken.png", "not a readable image"),
        (b"RIFF....WAVE", "voice.wav", "needs image, but voice.wav is audio"),
    ],
)
async def test_bad_inputs_fail_with_a_reason(data: bytes, name: str, reason: str) -> None:
    store = MemoryArtifacts()
    ref = await store.put(data, name)
    loaded = local_run("canny-control", "builtin:canny")
    result = await execute(
        _invocation("canny-control", "builtin:canny", image=ref), loaded, store, "w"
    )
    assert result.status == TaskStatus.TASK_STATUS_FAILED and reason in result.error


async def test_a_model_that_raises_gives_a_failed_result() -> None:
    async def explode(inputs: object) -> list[Produced]:
        raise RuntimeError("CUDA out of memory")

    loaded = explode
    result = await execute(
        _invocation("text-classification", "x", text="hi"), loaded, MemoryArtifacts(), "w"
    )
    assert result.status == TaskStatus.TASK_STATUS_FAILED
    assert "RuntimeError: CUDA out of memory" in result.error


def test_every_handler_is_for_a_known_task_and_specs_are_checked() -> None:
    assert "text-classification" in HANDLERS and "canny-control" in HANDLERS
    with pytest.raises(ValueError, match="TASK=MODEL"):
        ModelSpec.parse("text-classification")
    with pytest.raises(ValueError, match="no handler"):
        ModelSpec.parse("teleportation=x")
    with pytest.raises(ModelUnavailable, match="not in the local Hugging Face cache"):
        load(ModelSpec("text-classification", "nobody/no-such-model"), LoadOptions())


def test_wav_round_trip() -> None:
    audio = Audio(np.sin(np.linspace(0, 20, 1600)).astype(np.float32), 16000)
    back = decode_wav(encode_wav(audio), "a.wav")
    assert back.sampling_rate == 16000 and np.allclose(back.samples, audio.samples, atol=1e-3)


async def test_a_small_output_is_stored_and_carried_inline_and_read_back_without_the_store() -> (
    None
):
    store = MemoryArtifacts()
    loaded = local_run("canny-control", "builtin:canny")
    photo = await store.put(square_png(), "photo.png")
    first = await execute(
        _invocation("canny-control", "builtin:canny", image=photo),
        loaded,
        store,
        "w",
        None,
        None,
        64 * 1024,
    )
    (output,) = first.outputs
    assert output.artifact.inline == store.items[output.artifact.id][1]  # in the store too
    store.items.clear()  # the next task reads the bytes from its invocation alone
    second = await execute(
        _invocation("canny-control", "builtin:canny", image=output.artifact), loaded, store, "w"
    )
    assert second.status == TaskStatus.TASK_STATUS_SUCCEEDED, second.error
    edges = Image.open(io.BytesIO(store.items[second.outputs[0].artifact.id][1]))
    assert not second.outputs[0].artifact.inline  # inline off (0): a reference only
    assert edges.size == (48, 48)


async def test_an_output_over_the_inline_limit_is_a_reference_only() -> None:
    store = MemoryArtifacts()
    photo = await store.put(square_png(512), "photo.png")
    result = await execute(
        _invocation("canny-control", "builtin:canny", image=photo),
        local_run("canny-control", "builtin:canny"),
        store,
        "w",
        None,
        None,
        500,
    )
    (output,) = result.outputs
    assert output.artifact.size > 500 and not output.artifact.inline
    assert output.artifact.id in store.items


def _refused(reason: str) -> float:
    labels = {"reason": reason}
    return REGISTRY.get_sample_value("chorus_executor_inline_refused_total", labels) or 0.0


@pytest.mark.parametrize(
    ("change", "reason", "says"),
    [
        ({"inline": bytes(INLINE_MAX_BYTES_LIMIT + 1)}, "too_large", "over the 262144-byte"),
        ({"size": 3}, "size_mismatch", "says 3 bytes but carries"),
        ({"media_type": "image/png\r\nX: y"}, "bad_media_type", "not a type/subtype"),
    ],
)
async def test_bad_inline_inputs_are_refused_clearly_and_counted(
    change: dict[str, object], reason: str, says: str
) -> None:
    png = square_png()
    ref = ArtifactRef(
        id="x-photo.png", name="photo.png", media_type="image/png", size=len(png), inline=png
    )
    for field, value in change.items():
        setattr(ref, field, value)
    if "inline" in change:
        ref.size = len(ref.inline)
    before = _refused(reason)
    result = await _canny_on(ref)
    assert result.status == TaskStatus.TASK_STATUS_FAILED and not result.retryable
    assert (
        result.error.startswith("bad input: argument 'image': inline file") and says in result.error
    )
    assert _refused(reason) == before + 1


async def test_an_inline_input_takes_its_kind_from_its_media_type_not_the_message() -> None:
    png = square_png()
    ref = ArtifactRef(
        id="x-a.wav",
        name="a.wav",
        media_type="audio/wav",
        kind=Kind.KIND_IMAGE,
        size=len(png),
        inline=png,
    )
    result = await _canny_on(ref)
    assert result.status == TaskStatus.TASK_STATUS_FAILED
    assert "needs image, but a.wav is audio" in result.error


async def _canny_on(image: ArtifactRef) -> TaskResult:
    """A built-in canny task run on `image`, as an executor runs one it pulled."""
    return await execute(
        _invocation("canny-control", "builtin:canny", image=image),
        local_run("canny-control", "builtin:canny"),
        MemoryArtifacts(),
        "w",
        None,
        None,
        500,
    )


def _noise_png(side: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("side", "hand_offs"), [(8, 0), (300, 2)])
async def test_only_large_files_are_decoded_and_encoded_off_the_loop(
    side: int, hand_offs: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread costs more than a small file's decoding or encoding; a large one (here 300 px
    of noise: a file over 4 KiB, 270 KB of pixels) must not hold up the loop."""
    threads = 0
    to_thread = asyncio.to_thread

    async def counted(work: Any, *args: Any) -> Any:
        nonlocal threads
        threads += 1
        return await to_thread(work, *args)

    monkeypatch.setattr(asyncio, "to_thread", counted)
    store = MemoryArtifacts()
    photo = await store.put(_noise_png(side), "noise.png")

    async def echo(inputs: Mapping[str, Any]) -> list[Produced]:
        return [Produced("image", image=inputs["image"])]

    inv = _invocation("canny-control", "builtin:canny", image=photo)
    result = await execute(inv, echo, store, "w")
    assert result.status == TaskStatus.TASK_STATUS_SUCCEEDED, result.error
    _, data = store.items[result.outputs[0].artifact.id]
    assert (
        Image.open(io.BytesIO(data)).tobytes() == Image.open(io.BytesIO(_noise_png(side))).tobytes()
    )
    assert threads == hand_offs
