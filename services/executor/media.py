"""Decoding task inputs and encoding task outputs: images as PIL, audio as WAV."""

from __future__ import annotations

import io
import wave
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

# 8K x 5K: any real photo; past it a task would spend minutes and gigabytes on one input.
MAX_IMAGE_PIXELS = 40_000_000
# A built-in operation (an OpenCV annotator) on an image up to this many pixels takes well under
# a millisecond (M-LSD, the slowest, about 0.8 ms on a 48x48 noise image here), less CPU than
# a thread hand-off costs beside it: such work runs on the event loop.
ON_LOOP_OPERATION_PIXELS = 48 * 48
# Sample width in bytes -> (dtype, zero level, full scale): 8-bit WAV is unsigned.
_PCM: dict[int, tuple[str, float, float]] = {
    1: ("u1", 128.0, 128.0),
    2: ("<i2", 0.0, 32768.0),
    4: ("<i4", 0.0, 2147483648.0),
}


class MediaError(ValueError):
    """An input file is corrupt or not of the kind its slot needs."""


@dataclass(frozen=True)
class Audio:
    samples: NDArray[np.float32]  # mono, in [-1, 1]
    sampling_rate: int


def decode_image(data: bytes, name: str) -> Image.Image:
    """The image, refused before decoding when it is over `MAX_IMAGE_PIXELS` (a small file
    can declare a huge picture: a decompression bomb)."""
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise MediaError(f"{name} is {width}x{height}, over the {MAX_IMAGE_PIXELS}-pixel limit")
        image.load()
    except (UnidentifiedImageError, OSError) as e:
        raise MediaError(f"{name} is not a readable image: {e}") from e
    except Image.DecompressionBombError as e:  # its header claims more pixels than PIL will take
        raise MediaError(f"{name} is too large an image: {e}") from e
    return image.convert("RGB")


def small_images(batch: Iterable[Mapping[str, Any]]) -> bool:
    """Whether every image in a batch of decoded inputs is at most `ON_LOOP_OPERATION_PIXELS`."""
    return all(
        value.width * value.height <= ON_LOOP_OPERATION_PIXELS
        for inputs in batch
        for value in inputs.values()
        if isinstance(value, Image.Image)
    )


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_wav(data: bytes, name: str) -> Audio:
    """PCM WAV without ffmpeg: 8/16/32-bit, any channel count (mixed down to mono)."""
    try:
        with wave.open(io.BytesIO(data)) as wav:
            width, channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as e:
        raise MediaError(f"{name} is not a readable WAV file: {e}") from e
    if width not in _PCM:
        raise MediaError(f"{name}: {8 * width}-bit WAV is not supported")
    dtype, offset, scale = _PCM[width]
    samples = (np.frombuffer(frames, dtype=dtype).astype(np.float32) - offset) / scale
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    if len(samples) == 0:
        raise MediaError(f"{name} holds no samples")
    return Audio(samples.astype(np.float32), rate)


def encode_wav(audio: Audio) -> bytes:
    pcm = (np.clip(audio.samples, -1.0, 1.0) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(audio.sampling_rate)
        wav.writeframes(pcm.tobytes())
    return buffer.getvalue()
