"""Inpainting holes: free-form brush strokes and boxes (DeepFill v2 style), drawn until a hole ratio is reached.

Sizes are in pixels, not fractions of the image, so a 64-pixel training patch and a 512-pixel test image get holes
of the same scale (a large image simply gets more of them). A shape that would push the ratio more than SLACK past
its target is left out (on small images a single large shape could otherwise cover most of the image).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

STROKE_WIDTH = (4, 14)  # brush width, pixels
STROKE_STEP = (8, 28)  # length of one stroke segment, pixels
STROKE_VERTICES = (3, 8)
BOX_SIDE = (10, 36)
MAX_SHAPES = 1000
SLACK = 0.05


def _stroke(draw: ImageDraw.ImageDraw, height: int, width: int, rng: np.random.Generator) -> None:
    brush = int(rng.integers(*STROKE_WIDTH, endpoint=True))
    points = [(float(rng.uniform(0, width)), float(rng.uniform(0, height)))]
    angle = rng.uniform(0, 2 * np.pi)
    for _ in range(int(rng.integers(*STROKE_VERTICES, endpoint=True))):
        angle += rng.uniform(-np.pi / 3, np.pi / 3)
        step = rng.uniform(*STROKE_STEP)
        x, y = points[-1]
        x = float(np.clip(x + step * np.cos(angle), 0, width - 1))
        y = float(np.clip(y + step * np.sin(angle), 0, height - 1))
        points.append((x, y))
    draw.line(points, fill=255, width=brush, joint="curve")
    for x, y in points:  # round caps
        draw.ellipse((x - brush / 2, y - brush / 2, x + brush / 2, y + brush / 2), fill=255)


def _box(draw: ImageDraw.ImageDraw, height: int, width: int, rng: np.random.Generator) -> None:
    box_h, box_w = (min(int(rng.integers(*BOX_SIDE, endpoint=True)), side - 1) for side in (height, width))
    top, left = int(rng.integers(0, height - box_h)), int(rng.integers(0, width - box_w))
    draw.rectangle((left, top, left + box_w - 1, top + box_h - 1), fill=255)


def random_mask(height: int, width: int, rng: np.random.Generator, hole_ratio: tuple[float, float]) -> np.ndarray:
    """bool H x W mask (True = hole) covering a fraction drawn uniformly from `hole_ratio` (reached to within
    SLACK; strokes three times as often as boxes)."""
    target = rng.uniform(*hole_ratio) * height * width
    limit = target + SLACK * height * width
    mask = np.zeros((height, width), dtype=bool)
    covered = 0
    for _ in range(MAX_SHAPES):
        layer = Image.new("1", (width, height), 0)
        (_stroke if rng.random() < 0.75 else _box)(ImageDraw.Draw(layer), height, width, rng)
        box = layer.getbbox()
        if box is None:
            continue
        left, top, right, bottom = box
        shape = np.asarray(layer.crop(box))
        region = mask[top:bottom, left:right]
        added = int(np.count_nonzero(shape & ~region))
        if covered + added > limit:
            continue
        region |= shape
        covered += added
        if covered >= target:
            break
    return mask
