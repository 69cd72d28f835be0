"""Post-processing that turns a model's raw output into pictures people can look at.

Boxes drawn on the image for object detection, coloured masks for segmentation, a depth map
as an image, as HuggingGPT shows them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

# Distinct colours for labels (Tableau 10), cycled when there are more labels.
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip


def colour_for(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


def draw_boxes(image: Image.Image, detections: Sequence[Mapping[str, Any]]) -> Image.Image:
    """The image with each detection's box and `label score` drawn on it."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    labels = sorted({str(d["label"]) for d in detections})
    for d in detections:
        box = d["box"]
        colour = colour_for(labels.index(str(d["label"])))
        corners = [box["xmin"], box["ymin"], box["xmax"], box["ymax"]]
        draw.rectangle(corners, outline=colour, width=max(2, out.width // 200))
        draw.text((box["xmin"] + 3, box["ymin"] + 2), f"{d['label']} {d['score']:.2f}", fill=colour)
    return out


def overlay_masks(
    image: Image.Image, segments: Sequence[Mapping[str, Any]], alpha: float = 0.5
) -> Image.Image:
    """The image with each segment's mask painted in its own colour."""
    base = np.asarray(image.convert("RGB"), dtype=np.float64)
    out = base.copy()
    for i, segment in enumerate(segments):
        mask = segment["mask"].convert("L").resize(image.size)
        where = np.asarray(mask) > 127
        out[where] = (1 - alpha) * base[where] + alpha * np.array(colour_for(i))
    return Image.fromarray(out.astype(np.uint8), mode="RGB")


def segment_map(size: tuple[int, int], segments: Sequence[Mapping[str, Any]]) -> Image.Image:
    """A flat colour map of the segments (ControlNet's seg input): one colour per segment."""
    out = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    for i, segment in enumerate(segments):
        where = np.asarray(segment["mask"].convert("L").resize(size)) > 127
        out[where] = colour_for(i)
    return Image.fromarray(out, mode="RGB")


def depth_image(depth: Any, size: tuple[int, int]) -> Image.Image:
    """A depth prediction (tensor, array or image) as a grey image: near is bright."""
    if isinstance(depth, Image.Image):
        values = np.asarray(depth.convert("F"), dtype=np.float64)
    else:
        values = np.asarray(depth.detach().cpu() if hasattr(depth, "detach") else depth)
        values = values.astype(np.float64).squeeze()
    span = values.max() - values.min()
    scaled = (values - values.min()) / span if span > 0 else np.zeros_like(values)
    return Image.fromarray((scaled * 255).astype(np.uint8), mode="L").resize(size).convert("RGB")
