"""Built-in image operations that HuggingGPT runs as ControlNet annotators, on OpenCV.

Canny is OpenCV's, as ControlNet-canny was trained on and HuggingGPT's annotator produces.
The others make the same kind of map as their ControlNet annotator from the image alone,
for a replica with no annotator weights; `annotators.py` runs the real HED, M-LSD and
OpenPose networks.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image

Array = NDArray[Any]  # OpenCV's results are typed loosely


def _gray(image: Image.Image) -> Array:
    return np.asarray(image.convert("L"))


def _rgb(gray: Array) -> Image.Image:
    return Image.fromarray(gray, mode="L").convert("RGB")


def canny(image: Image.Image, low: float = 100.0, high: float = 200.0) -> Image.Image:
    """Canny edges, white on black, with ControlNet's thresholds (100, 200)."""
    return _rgb(cv2.Canny(np.asarray(image.convert("RGB")), low, high))


def _gradient(gray: Array) -> Array:
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    return np.asarray(cv2.magnitude(gx, gy), dtype=np.float32)


def soft_edges(image: Image.Image) -> Image.Image:
    """HED-style soft edges: gradient magnitude over three scales, normalised to 0..255.

    Not the HED network (`annotators.py` runs that); the same kind of map, soft grey-level
    boundaries, from the image alone.
    """
    gray = _gray(image).astype(np.float32)
    total = np.zeros_like(gray)
    for sigma in (1.0, 2.0, 4.0):
        total += _gradient(cv2.GaussianBlur(gray, (0, 0), sigma))
    peak = float(total.max()) or 1.0
    soft = np.sqrt(total / peak)  # lifts faint boundaries, as HED's sigmoid output does
    return _rgb((soft * 255).astype(np.uint8))


def scribble(image: Image.Image, threshold: float = 0.35) -> Image.Image:
    """A scribble map: soft edges made binary and thick, as ControlNet's scribble input is."""
    soft = _gray(soft_edges(image))
    lines = np.where(soft >= threshold * 255, 255, 0).astype(np.uint8)
    return _rgb(cv2.dilate(lines, np.ones((3, 3), np.uint8)))


def straight_lines(image: Image.Image, min_length: int = 20) -> Image.Image:
    """M-LSD-style line map: the straight segments of the Canny edges (probabilistic Hough)."""
    edges = cv2.Canny(np.asarray(image.convert("RGB")), 100, 200)
    out = np.zeros_like(edges)
    segments = cv2.HoughLinesP(
        edges, 1, np.pi / 180, threshold=min_length, minLineLength=min_length, maxLineGap=3
    )
    for x1, y1, x2, y2 in np.zeros((0, 4)) if segments is None else segments.reshape(-1, 4):
        cv2.line(out, (int(x1), int(y1)), (int(x2), int(y2)), 255, 2)
    return _rgb(out)


def normal_map(height: Image.Image, strength: float = 4.0) -> Image.Image:
    """A normal map (RGB = x, y, z of the surface normal) from a height field.

    ControlNet's normal annotator takes the height from a depth model; here the image's own
    brightness stands in for height (bright is near), which suits depth maps and
    evenly lit objects. Pass a depth map for a faithful result.
    """
    z = cv2.GaussianBlur(_gray(height).astype(np.float32) / 255.0, (0, 0), 2.0)
    gx = cv2.Sobel(z, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.Sobel(z, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE)
    normal = np.dstack([-gx * strength, -gy * strength, np.ones_like(z)])
    normal /= np.linalg.norm(normal, axis=2, keepdims=True)
    return Image.fromarray(((normal + 1.0) * 127.5).astype(np.uint8), mode="RGB")
