"""The diffusers tasks through the real pipelines on tiny random-weight Stable Diffusion parts.

The models are built once per session (a few seconds) and run two denoising steps, so each
drawing takes a fraction of a second; the answers are noise, so the tests check kinds and sizes.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from chorus.v1.messages_pb2 import TaskArgument, TaskInvocation, TaskResult, TaskStatus
from PIL import Image

from services.executor.execute import execute
from services.executor.media import encode_png
from services.executor.models import LoadOptions
from tests.executor import tiny_diffusion as tiny
from tests.support import MemoryArtifacts, local_run

pytest.importorskip("diffusers")

STEPS = 2
CONTROL_TASKS = [
    f"{name}-text-to-image"
    for name in ("canny", "hed", "mlsd", "normal", "openpose", "scribble", "seg", "depth")
]


@pytest.fixture(scope="session")
def stable_diffusion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.stable_diffusion(tmp_path_factory.mktemp("models") / "sd")


@pytest.fixture(scope="session")
def controlnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.controlnet(tmp_path_factory.mktemp("models") / "controlnet")


def _options(base: Path) -> LoadOptions:
    return LoadOptions(controlnet_base=str(base), diffusion_steps=STEPS)


async def _run(
    task: str, model: Path, options: LoadOptions, store: MemoryArtifacts, **args: Any
) -> TaskResult:
    inv = TaskInvocation(request_id="r", task_id=2, task=task, model="m", attempt=1)
    for name, value in args.items():
        arg = TaskArgument(name=name)
        if isinstance(value, Image.Image | bytes):
            data = encode_png(value) if isinstance(value, Image.Image) else value
            arg.artifact.CopyFrom(await store.put(data, "input.png"))
        else:
            arg.text = value
        inv.args.append(arg)
    return await execute(inv, local_run(task, str(model), options=options), store, "w")


def _photo() -> Image.Image:
    return Image.new("RGB", (64, 48), "orange")


def _image(result: TaskResult, store: MemoryArtifacts) -> Image.Image:
    assert result.status == TaskStatus.TASK_STATUS_SUCCEEDED, result.error
    (output,) = result.outputs
    ref, data = store.items[output.artifact.id]
    assert output.name == "image" and ref.media_type == "image/png"
    return Image.open(io.BytesIO(data))


async def test_text_to_image_draws_at_the_pipelines_size(stable_diffusion: Path) -> None:
    store = MemoryArtifacts()
    result = await _run(
        "text-to-image", stable_diffusion, _options(stable_diffusion), store, text="a cat"
    )
    picture = _image(result, store)
    assert picture.size == (64, 64) and picture.mode == "RGB"  # sample size 32 x VAE factor 2


async def test_image_to_image_keeps_the_input_size(stable_diffusion: Path) -> None:
    store = MemoryArtifacts()
    result = await _run(
        "image-to-image", stable_diffusion, _options(stable_diffusion), store,
        image=_photo(), text="a cat",
    )  # fmt: skip
    assert _image(result, store).size == (64, 48)


@pytest.mark.parametrize("task", CONTROL_TASKS)
async def test_controlnet_draws_at_the_control_maps_size(
    task: str, stable_diffusion: Path, controlnet: Path
) -> None:
    store = MemoryArtifacts()
    control = Image.new("RGB", (64, 48), "black")
    result = await _run(
        task, controlnet, _options(stable_diffusion), store, text="a cat", image=control
    )
    assert _image(result, store).size == (64, 48)


async def test_text_to_video_makes_an_mp4(tmp_path: Path) -> None:
    model = tiny.text_to_video(tmp_path / "video")
    store = MemoryArtifacts()
    result = await _run("text-to-video", model, _options(model), store, text="a cat")
    assert result.status == TaskStatus.TASK_STATUS_SUCCEEDED, result.error
    (output,) = result.outputs
    ref, data = store.items[output.artifact.id]
    assert ref.media_type == "video/mp4" and data[4:8] == b"ftyp"  # an MP4 container


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims a size (even one no encoder writes) and holds no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("picture", "reason"),
    [
        (_png_header(0, 0), "bad input: input.png is not a readable image"),
        (_png_header(100_000, 100_000), "bad input: input.png is too large an image"),
        (Image.new("RGB", (4, 4)), "an image of 4x4 pixels cannot be drawn from"),
        (Image.new("RGB", (4096, 8)), "an image of 4096x8 pixels cannot be drawn from"),
    ],
    ids=["0x0", "100000x100000", "4x4", "4096x8"],
)
async def test_an_image_too_small_or_too_large_to_draw_from_fails_the_task(
    picture: Image.Image | bytes, reason: str, stable_diffusion: Path
) -> None:
    store = MemoryArtifacts()
    options = _options(stable_diffusion)
    result = await _run("image-to-image", stable_diffusion, options, store, image=picture)
    assert result.status == TaskStatus.TASK_STATUS_FAILED and reason in result.error
    # the same replica's model draws on afterwards
    after = await _run("image-to-image", stable_diffusion, options, store, image=_photo())
    assert _image(after, store).size == (64, 48)


async def test_a_prompt_longer_than_the_text_encoder_takes_is_cut_not_fatal(
    stable_diffusion: Path,
) -> None:
    store = MemoryArtifacts()
    prompt = "a cat on a mat " * 200  # 3,000 byte tokens against 77 positions
    result = await _run(
        "text-to-image", stable_diffusion, _options(stable_diffusion), store, text=prompt
    )
    assert _image(result, store).size == (64, 64)
