"""Post-processing: a raw result (local or remote, same shapes) into `Produced` outputs."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from PIL import Image

from services.executor import render
from services.executor.handler import Inputs, Produced
from services.executor.media import Audio


def _jsonable(value: Any) -> Any:
    def default(v: Any) -> Any:
        if hasattr(v, "item"):
            return v.item()
        if isinstance(v, Image.Image):
            return f"<image {v.width}x{v.height}>"
        return str(v)

    return json.loads(json.dumps(value, default=default))


def _first(result: Any) -> Any:
    return result[0] if isinstance(result, list) else result


def labels(result: Any, inputs: Inputs) -> list[Produced]:
    items = result if isinstance(result, list) else [result]
    if items and isinstance(items[0], list):  # some pipelines nest one list per input
        items = items[0]
    top = max(items, key=lambda r: r["score"])
    summary = f"{top['label']} ({top['score']:.2f})"
    return [Produced("text", text=summary), Produced("labels", data=_jsonable(items))]


def entities(result: Any, inputs: Inputs) -> list[Produced]:
    words = ", ".join(f"{e['word']} ({e.get('entity_group', e.get('entity'))})" for e in result)
    return [
        Produced("text", text=words or "no entities"),
        Produced("entities", data=_jsonable(result)),
    ]


def generated(result: Any, inputs: Inputs) -> list[Produced]:
    return [Produced("text", text=str(_first(result)["generated_text"]))]


def answer(result: Any, inputs: Inputs) -> list[Produced]:
    first = _first(result)
    if isinstance(first, list):  # the document pipeline nests one list per input
        first = first[0]
    found = first["answer"]  # None: a generative reader wrote no answer
    text = "no answer found" if found is None else str(found)
    return [Produced("text", text=text), Produced("answer", data=_jsonable(first))]


def score(result: Any, inputs: Inputs) -> list[Produced]:
    value = float(_first(result))
    return [Produced("text", text=f"similarity {value:.3f}"), Produced("score", data=value)]


def detections(result: Any, inputs: Inputs) -> list[Produced]:
    found = ", ".join(f"{d['label']} ({d['score']:.2f})" for d in result) or "no objects found"
    boxes = [{k: d[k] for k in ("label", "score", "box")} for d in result]
    return [
        Produced("image", image=render.draw_boxes(inputs["image"], result)),
        Produced("text", text=found),
        Produced("boxes", data=_jsonable(boxes)),
    ]


def segments(result: Any, inputs: Inputs) -> list[Produced]:
    names = [str(s.get("label")) for s in result]
    return [
        Produced("image", image=render.overlay_masks(inputs["image"], result)),
        Produced("text", text=", ".join(names) or "no segments"),
        Produced(
            "segments", data=[{"label": s.get("label"), "score": s.get("score")} for s in result]
        ),
    ]


def segment_map(result: Any, inputs: Inputs) -> list[Produced]:
    return [Produced("image", image=render.segment_map(inputs["image"].size, result))]


def depth(result: Any, inputs: Inputs) -> list[Produced]:
    field = result.get("predicted_depth", result.get("depth"))
    return [Produced("image", image=render.depth_image(field, inputs["image"].size))]


def image(result: Any, inputs: Inputs) -> list[Produced]:
    if isinstance(result, bytes | bytearray):
        result = Image.open(io.BytesIO(result))
    return [Produced("image", image=result.convert("RGB"))]


def speech(result: Any, inputs: Inputs) -> list[Produced]:
    if isinstance(result, bytes | bytearray):  # remote: an encoded file (WAV or FLAC)
        return [Produced("audio", file=bytes(result), media_type=_audio_type(bytes(result)))]
    samples = np.asarray(result["audio"], dtype=np.float32).reshape(-1)
    return [Produced("audio", audio=Audio(samples, int(result["sampling_rate"])))]


def _audio_type(data: bytes) -> str:
    return "audio/flac" if data[:4] == b"fLaC" else "audio/wav"


def audios(result: Any, inputs: Inputs) -> list[Produced]:
    first = result[0]
    return [Produced("audio", file=bytes(first["blob"]), media_type=str(first["content_type"]))]


def transcript(result: Any, inputs: Inputs) -> list[Produced]:
    return [Produced("text", text=str(_first(result)["text"]))]


def video_file(result: Any, inputs: Inputs) -> list[Produced]:
    return [Produced("video", file=bytes(result), media_type="video/mp4")]


def control(result: Any, inputs: Inputs) -> list[Produced]:
    return [Produced("image", image=result)]
