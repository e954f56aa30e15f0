"""A procedural image set for runs with no network: 10 classes of shape x layout.

Each image holds two copies of one shape (disk, square, triangle, cross, ring) placed side by
side or one above the other; the class is (shape, layout). Colours, sizes, positions and noise
are random and independent of the class, so no single pixel or colour gives the label away.
"""

from __future__ import annotations

import numpy as np

SHAPES = ("disk", "square", "triangle", "cross", "ring")
LAYOUTS = ("side_by_side", "stacked")
CLASS_NAMES = tuple(f"{shape}_{layout}" for shape in SHAPES for layout in LAYOUTS)


def _shape_mask(shape: str, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    dist = np.hypot(dy, dx)
    if shape == "disk":
        return dist <= r
    if shape == "square":
        return np.maximum(np.abs(dy), np.abs(dx)) <= 0.8 * r
    if shape == "triangle":
        h = 0.85 * r
        return (dy <= h) & (np.abs(dx) <= (dy + h) * 0.6)
    if shape == "cross":
        t = 0.3 * r
        return ((np.abs(dx) <= t) & (np.abs(dy) <= r)) | ((np.abs(dy) <= t) & (np.abs(dx) <= r))
    if shape == "ring":
        return (dist <= r) & (dist >= 0.55 * r)
    raise ValueError(shape)


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    while True:
        fg, bg = rng.uniform(0, 255, size=(2, 3))
        if np.abs(fg - bg).sum() > 180:
            return fg, bg


def make_shapes(num_images: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`num_images` uint8 images `(N, size, size, 3)` and int32 labels in [0, 10), balanced."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(num_images) % len(CLASS_NAMES)).astype(np.int32)
    rng.shuffle(labels)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((num_images, size, size, 3), np.uint8)
    for i, label in enumerate(labels):
        shape, layout = SHAPES[label // 2], LAYOUTS[label % 2]
        r = rng.uniform(0.12, 0.17) * size
        gap = rng.uniform(2.2, 2.6) * r
        along = np.array([0.0, gap]) if layout == "side_by_side" else np.array([gap, 0.0])
        # centre the pair, then jitter it while keeping it inside the image
        centre = size / 2 + rng.uniform(-0.12, 0.12, size=2) * size
        mask = np.zeros((size, size), bool)
        for sign in (-0.5, 0.5):
            c = centre + sign * along
            mask |= _shape_mask(shape, yy - c[0], xx - c[1], r)
        fg, bg = _contrasting_colours(rng)
        img = np.where(mask[..., None], fg, bg) + rng.normal(0, 12, size=(size, size, 3))
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    return images, labels
