"""Image grids and curve plots, for people who would rather look than read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

LABEL_HEIGHT = 14


def to_u8(x: np.ndarray) -> np.ndarray:
    """float [0,1] scale or uint8 HxWx3 -> uint8."""
    return x if x.dtype == np.uint8 else np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def image_grid(rows: Sequence[Sequence[np.ndarray]], labels: Sequence[str] = (), gap: int = 2) -> Image.Image:
    """Rows of equally sized HxWx3 images -> one image; `labels` title the columns."""
    cells = [[to_u8(c) for c in row] for row in rows]
    height, width = cells[0][0].shape[:2]
    columns = max(len(r) for r in cells)
    top = LABEL_HEIGHT if labels else 0
    canvas = Image.new("RGB", (columns * (width + gap) - gap, top + len(cells) * (height + gap) - gap), "white")
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(labels):
        draw.text((c * (width + gap) + 2, 1), label, fill="black")
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            if cell.shape[:2] != (height, width):
                cell = np.asarray(Image.fromarray(cell).resize((width, height), Image.NEAREST))
            canvas.paste(Image.fromarray(cell), (c * (width + gap), top + r * (height + gap)))
    return canvas


def plot_curves(rows: list[dict[str, float]], path: Path, title: str) -> None:
    """Plot every numeric column against 'step' (one panel each) into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in rows[0] if k != "step"] if rows else []
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    steps = [r["step"] for r in rows]
    for ax, key in zip(axes[0], keys, strict=True):
        points = [(s, r[key]) for s, r in zip(steps, rows, strict=True) if r.get(key) not in (None, "")]
        if points:
            ax.plot(*zip(*points, strict=True), lw=1.2)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
