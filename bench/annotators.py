"""`make bench`: the ControlNet annotators on a 1024x768 image, before and after OpenCV.

"Before" is the NumPy code of the annotators as they were before issue 14 (read from git);
"after" is `services/executor/imageops.py`. Both run side by side in one process, calls
interleaved, so machine noise falls on both alike. For canny it also measures how much of
`cv2.Canny`'s edge map (what ControlNet-canny was trained on) each one reproduces, and times
the HED, M-LSD and OpenPose networks (random weights: the same computation as the published
ones) on the CPU.
Figures go to bench/results/annotators.json.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from bench.before import BEFORE_ISSUE_14, module_at
from bench.stats import write_results
from services.executor import annotators, imageops

RUNS = 15
NETWORK_RUNS = 3
RESULTS = Path("bench/results/annotators.json")
ANNOTATORS = {
    "canny": "canny",
    "hed": "soft_edges",
    "mlsd": "straight_lines",
    "scribble": "scribble",
    "normal": "normal_map",
}


def scene(width: int = 1024, height: int = 768, seed: int = 7, noise: float = 6.0) -> Image.Image:
    """A photo-like test image: a lit gradient, shapes of many sizes, soft shadows, sensor noise."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    sky = np.dstack([90 + 80 * ys / height, 120 + 60 * xs / width, 200 - 60 * ys / height])
    image = Image.fromarray(sky.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(60):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(10, 250)), int(rng.integers(10, 200))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = [draw.rectangle, draw.ellipse, draw.polygon][int(rng.integers(0, 3))]
        if shape is draw.polygon:
            draw.polygon([(x, y), (x + w, y + h // 3), (x + w // 2, y + h)], fill=colour)
        else:
            shape([x, y, x + w, y + h], fill=colour)
    for _ in range(20):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        draw.line([(x, y), (x + int(rng.integers(-300, 300)), y + int(rng.integers(-300, 300)))],
                  fill=(20, 20, 20), width=int(rng.integers(1, 5)))  # fmt: skip
    soft = np.asarray(image.filter(ImageFilter.GaussianBlur(1.2)), dtype=np.float64)
    noisy = np.clip(soft + rng.normal(0, noise, soft.shape), 0, 255)
    return Image.fromarray(noisy.astype(np.uint8), "RGB")


def _median_ms(runs: list[float]) -> float:
    return round(statistics.median(runs) * 1000, 2)


def _time(op: Callable[[Image.Image], Image.Image], image: Image.Image) -> float:
    started = time.perf_counter()
    op(image)
    return time.perf_counter() - started


def _overlap(edges: np.ndarray[Any, Any], reference: np.ndarray[Any, Any]) -> dict[str, float]:
    """Pixel agreement with the reference edge map: IoU, the share of its pixels found, and
    that share counting a pixel found when the map has one within a pixel of it."""
    both = np.logical_and(edges, reference).sum()
    either = np.logical_or(edges, reference).sum()
    near = cv2.dilate(edges.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    return {
        "iou": round(float(both / either), 3),
        "reference_pixels_found": round(float(both / reference.sum()), 3),
        "found_within_1px": round(
            float(np.logical_and(near, reference).sum() / reference.sum()), 3
        ),
    }


def main() -> None:
    image = scene()
    old = module_at(BEFORE_ISSUE_14, "services/executor/imageops.py")
    results: dict[str, Any] = {"image": f"{image.width}x{image.height}", "runs": RUNS}
    latency: dict[str, Any] = {}
    for name, function in ANNOTATORS.items():
        before_op, after_op = getattr(old, function), getattr(imageops, function)
        before_runs, after_runs = [], []
        for _ in range(RUNS):  # interleaved: noise falls on both alike
            before_runs.append(_time(before_op, image))
            after_runs.append(_time(after_op, image))
        b, a = _median_ms(before_runs), _median_ms(after_runs)
        latency[name] = {"before_ms": b, "after_ms": a, "speedup": round(b / a, 1)}
        print(f"{name:9s} before {b:8.2f} ms   after {a:7.2f} ms   x{b / a:.1f}")
    results["median_latency"] = latency
    overlap = {}
    for name, picture in [("with sensor noise", image), ("noise-free", scene(noise=0.0))]:
        reference = cv2.Canny(np.asarray(picture), 100, 200) > 0
        overlap[name] = {
            "before": _overlap(np.asarray(old.canny(picture).convert("L")) > 0, reference),
            "after": _overlap(np.asarray(imageops.canny(picture).convert("L")) > 0, reference),
        }
    results["canny_overlap_with_cv2"] = overlap
    print("canny overlap with cv2.Canny:", results["canny_overlap_with_cv2"])
    networks = {}
    for task in ("hed-control", "mlsd-control", "openpose-control"):
        annotator = annotators.build(task, None)
        annotator(image)  # warm-up
        ms = _median_ms([_time(annotator, image) for _ in range(NETWORK_RUNS)])
        networks[task] = {"cpu_ms": ms}
        print(f"{task:17s} network {ms:8.1f} ms")
    results["networks_median_cpu"] = networks
    write_results(RESULTS, results)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
