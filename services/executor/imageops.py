"""Built-in image operations that HuggingGPT runs as ControlNet annotators, in NumPy."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageFilter

Array = NDArray[np.float64]


def canny(image: Image.Image, low: float = 100.0, high: float = 200.0) -> Image.Image:
    """Canny edges (blur, Sobel, non-maximum suppression, hysteresis), white on black."""
    gray = np.asarray(image.convert("L").filter(ImageFilter.GaussianBlur(1.4)), dtype=np.float64)
    gx, gy = _sobel(gray)
    magnitude = np.hypot(gx, gy)
    thin = _non_maximum_suppression(magnitude, np.arctan2(gy, gx))
    edges = _hysteresis(thin >= high, thin >= low)
    return Image.fromarray((edges * 255).astype(np.uint8), mode="L").convert("RGB")


def _sobel(gray: Array) -> tuple[Array, Array]:
    p = np.pad(gray, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return gx, gy


def _non_maximum_suppression(magnitude: Array, angle: Array) -> Array:
    """Keeps a pixel only where it is the ridge of the gradient across the edge."""
    direction = (np.round(angle / (np.pi / 4)) % 4).astype(int)  # 0: -, 1: /, 2: |, 3: \
    p = np.pad(magnitude, 1)
    h, w = magnitude.shape
    neighbours = {
        0: (p[1:-1, 2:], p[1:-1, :-2]),
        1: (p[:-2, 2:], p[2:, :-2]),
        2: (p[:-2, 1:-1], p[2:, 1:-1]),
        3: (p[:-2, :-2], p[2:, 2:]),
    }
    keep = np.zeros((h, w), dtype=bool)
    for d, (a, b) in neighbours.items():
        keep |= (direction == d) & (magnitude >= a) & (magnitude >= b)
    return np.where(keep, magnitude, 0.0)


def _hysteresis(strong: NDArray[np.bool_], weak: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Grows strong edges through connected weak ones until nothing changes."""
    edges = strong.copy()
    while True:
        p = np.pad(edges, 1)
        grown = np.zeros_like(edges)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                grown |= p[dy : dy + edges.shape[0], dx : dx + edges.shape[1]]
        grown &= weak
        if (grown == edges).all():
            return edges
        edges = grown
