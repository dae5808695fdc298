"""Image grids and curve plots, for people who would rather look than read."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

LINE_HEIGHT = 14  # one line of Pillow's default font, with its padding
MIN_CELL = 128  # cells smaller than this are enlarged (nearest neighbour: the pixels stay visible)
PANELS_PER_ROW = 4


def to_u8(x: np.ndarray) -> np.ndarray:
    """float [0,1] scale or uint8 HxWx3 -> uint8."""
    return x if x.dtype == np.uint8 else np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def _fit(text: str, width: int, draw: ImageDraw.ImageDraw) -> str:
    """`text`, shortened with an ellipsis until it fits in `width` pixels."""
    if draw.textlength(text) <= width:
        return text
    while text and draw.textlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def image_grid(
    rows: Sequence[Sequence[np.ndarray]],
    labels: Sequence[str] = (),
    captions: Sequence[Sequence[str]] | None = None,
    gap: int = 2,
    min_cell: int = MIN_CELL,
) -> Image.Image:
    """Rows of HxWx3 images -> one image. Every cell is shown at the size of the largest one, at least `min_cell`
    pixels wide (smaller ones, such as a super-resolution input, are enlarged with nearest neighbour so their
    pixels show); `labels` title the columns and `captions` (one string per cell) go under each cell."""
    cells = [[to_u8(c) for c in row] for row in rows]
    height = max(c.shape[0] for row in cells for c in row)
    width = max(c.shape[1] for row in cells for c in row)
    zoom = max(1, -(-min_cell // width))
    height, width = height * zoom, width * zoom
    columns = max(len(r) for r in cells)
    top = LINE_HEIGHT if labels else 0
    below = LINE_HEIGHT if captions else 0
    row_height = height + below + gap
    canvas = Image.new("RGB", (columns * (width + gap) - gap, top + len(cells) * row_height - gap), "white")
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(labels):
        draw.text((c * (width + gap) + 2, 1), _fit(label, width - 4, draw), fill="black")
    for r, row in enumerate(cells):
        y = top + r * row_height
        for c, cell in enumerate(row):
            if cell.shape[:2] != (height, width):
                cell = np.asarray(Image.fromarray(cell).resize((width, height), Image.NEAREST))
            canvas.paste(Image.fromarray(cell), (c * (width + gap), y))
            caption = captions[r][c] if captions and c < len(captions[r]) else ""
            if caption:
                draw.text((c * (width + gap) + 2, y + height + 1), _fit(caption, width - 4, draw), fill="black")
    return canvas


def textured_crop(image: np.ndarray, side: int, stride: int = 16, within: np.ndarray | None = None) -> tuple[int, int]:
    """(top, left) of the side x side window with the most detail (mean gradient magnitude of the luma), searched on
    a grid of `stride` pixels: a comparison should show edges and texture, not a flat patch of sky. With `within`
    (an H x W bool mask, e.g. inpainting's holes) only the detail under the mask counts: the window where the mask
    hides the most texture and structure."""
    height, width = image.shape[:2]
    side = min(side, height, width)
    luma = image[..., :3].astype(np.float32).mean(axis=2) if image.ndim == 3 else image.astype(np.float32)
    detail = np.zeros_like(luma)
    detail[:, 1:] += np.abs(np.diff(luma, axis=1))
    detail[1:, :] += np.abs(np.diff(luma, axis=0))
    if within is not None and within.any():
        detail *= within
    integral = np.pad(detail.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    best, best_at = -1.0, ((height - side) // 2, (width - side) // 2)
    for y in range(0, height - side + 1, stride):
        for x in range(0, width - side + 1, stride):
            total = integral[y + side, x + side] - integral[y, x + side] - integral[y + side, x] + integral[y, x]
            if total > best:
                best, best_at = float(total), (y, x)
    return best_at


def curves_figure(rows: list[dict[str, Any]], title: str, markers: Mapping[str, float] | None = None) -> Any:
    """A matplotlib figure with one panel per column of `rows` (every column any row has, not just the first's)
    against 'step', and a dashed vertical line at each of `markers` (label -> step), e.g. where the adversarial
    phase starts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for row in rows for k in row} - {"step"})
    if not keys:
        return None
    ncols = min(PANELS_PER_ROW, len(keys))
    nrows = -(-len(keys) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.8 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        points = [(r["step"], r[key]) for r in rows if r.get(key) not in (None, "")]
        if points:
            ax.plot(*zip(*points, strict=True), lw=1.2, marker="." if len(points) < 5 else None)
        for label, step in (markers or {}).items():
            ax.axvline(step, color="tab:red", ls="--", lw=1, label=label)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    if markers:
        axes.flat[0].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_curves(rows: list[dict[str, Any]], path: Path, title: str, markers: Mapping[str, float] | None = None) -> None:
    """curves_figure(rows, title, markers) into a PNG (nothing when there is nothing to plot)."""
    fig = curves_figure(rows, title, markers)
    if fig is None:
        return
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
