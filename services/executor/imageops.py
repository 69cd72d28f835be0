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


def soft_edges(image: Image.Image) -> Image.Image:
    """HED-style soft edges: gradient magnitude over three scales, normalised to 0..255.

    This is not the HED network ControlNet's annotator runs; it gives the same kind of map
    (soft, grey-level boundaries) from the image alone.
    """
    gray = image.convert("L")
    total = np.zeros((gray.height, gray.width))
    for radius in (1.0, 2.0, 4.0):
        gx, gy = _sobel(np.asarray(gray.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float64))
        total += np.hypot(gx, gy)
    peak = total.max() or 1.0
    soft = np.sqrt(total / peak)  # lifts faint boundaries, as HED's sigmoid output does
    return Image.fromarray((soft * 255).astype(np.uint8), mode="L").convert("RGB")


def scribble(image: Image.Image, threshold: float = 0.35) -> Image.Image:
    """A scribble map: soft edges made binary and thick, as ControlNet's scribble input is."""
    soft = np.asarray(soft_edges(image).convert("L"), dtype=np.float64) / 255.0
    lines = Image.fromarray(((soft >= threshold) * 255).astype(np.uint8), mode="L")
    return lines.filter(ImageFilter.MaxFilter(3)).convert("RGB")


def straight_lines(image: Image.Image, max_lines: int = 40, min_votes: int = 20) -> Image.Image:
    """M-LSD-style line map: the straight segments of the Canny edges, by a Hough transform.

    Each of the strongest Hough lines is drawn only where edge pixels lie along it, so what
    comes out are segments, white on black.
    """
    edges = np.asarray(canny(image).convert("L")) > 0
    ys, xs = np.nonzero(edges)
    out = np.zeros(edges.shape, dtype=bool)
    if len(xs) == 0:
        return Image.fromarray(out.astype(np.uint8) * 255, mode="L").convert("RGB")
    thetas = np.deg2rad(np.arange(0, 180, 1.0))
    diagonal = int(np.ceil(np.hypot(*edges.shape)))
    step = max(1, len(xs) // 20000)  # votes from a sample bound the memory on large images
    rhos = np.round(np.outer(xs[::step], np.cos(thetas)) + np.outer(ys[::step], np.sin(thetas)))
    votes = np.zeros((2 * diagonal + 1, len(thetas)), dtype=np.int64)
    np.add.at(votes, (rhos.astype(int) + diagonal, np.arange(len(thetas))), 1)
    for flat in np.argsort(votes, axis=None)[::-1][:max_lines]:
        rho_index, theta_index = np.unravel_index(flat, votes.shape)
        if votes[rho_index, theta_index] * step < min_votes:
            break
        theta = thetas[theta_index]
        rho = xs * np.cos(theta) + ys * np.sin(theta)
        on_line = np.abs(rho - (rho_index - diagonal)) <= 1
        out[ys[on_line], xs[on_line]] = True
    lines = Image.fromarray(out.astype(np.uint8) * 255, mode="L")
    return lines.filter(ImageFilter.MaxFilter(3)).convert("RGB")


def normal_map(height: Image.Image, strength: float = 4.0) -> Image.Image:
    """A normal map (RGB = x, y, z of the surface normal) from a height field.

    ControlNet's normal annotator takes the height from a depth model; here the image's own
    brightness stands in for height (bright is near), which suits depth maps and
    evenly lit objects. Pass a depth map for a faithful result.
    """
    z = np.asarray(height.convert("L").filter(ImageFilter.GaussianBlur(2)), dtype=np.float64)
    gx, gy = _sobel(z / 255.0)
    normal = np.dstack([-gx * strength, -gy * strength, np.ones_like(z)])
    normal /= np.linalg.norm(normal, axis=2, keepdims=True)
    return Image.fromarray(((normal + 1.0) * 127.5).astype(np.uint8), mode="RGB")
