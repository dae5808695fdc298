"""The one table of metric facts: each metric's name, direction, display format, what its samples are, and whether
the promotion policy may decide on it (primary) or guard with it. Evaluation, registration, promotion, the CLI and
the flows read it; nothing else lists metrics."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Direction = Literal["lower", "higher"]


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    direction: Direction
    fmt: str  # format spec of its value, e.g. ".2f"
    unit: str  # appended to values in sentences ("" for none)
    per: Literal["image", "crop"]  # its samples: a mean over test images, or a statistic of the Inception crops
    primary: bool  # the policy may decide on it
    guard: bool  # the policy may guard with it (a tolerance in its own units)

    def better(self, a: float, b: float) -> bool:
        """Whether value a is strictly better than value b."""
        return a < b if self.direction == "lower" else a > b

    def gain(self, model: float, baseline: float) -> float:
        """How much better `model` is than `baseline`, in the metric's units (positive = better)."""
        return model - baseline if self.direction == "higher" else baseline - model

    def show(self, value: float) -> str:
        return f"{value:{self.fmt}}"

    def show_interval(self, values: Mapping[str, Any], signed: bool = False) -> str:
        """'31.61 [31.02, 32.20]': this metric's value in `values` (a metrics.json block or version tags) with its
        interval (an unbounded end as inf); the value alone where `values` has no interval (versions evaluated
        before intervals), '-' where it has no value."""
        value = values.get(self.name)
        if not isinstance(value, int | float):
            return "-"
        spec = f"{'+' if signed else ''}{self.fmt}"
        if self.name + "_n" not in values:
            return f"{value:{spec}}"
        low, high = values.get(self.name + "_low"), values.get(self.name + "_high")
        low, high = (-math.inf if low is None else low), (math.inf if high is None else high)
        return f"{value:{spec}} [{low:{spec}}, {high:{spec}}]"


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("psnr", "PSNR", "higher", ".2f", " dB", "image", primary=True, guard=True),
        Metric("ssim", "SSIM", "higher", ".4f", "", "image", primary=True, guard=True),
        Metric("psnr_hole", "PSNR (holes)", "higher", ".2f", " dB", "image", primary=True, guard=True),
        Metric("ssim_hole", "SSIM (holes)", "higher", ".4f", "", "image", primary=True, guard=True),
        Metric("fid", "FID", "lower", ".2f", "", "crop", primary=True, guard=False),
        Metric("kid", "KID", "lower", ".4f", "", "crop", primary=True, guard=False),
    )
}
IMAGE_METRICS = tuple(m for m in METRICS if METRICS[m].per == "image")
CROP_METRICS = tuple(m for m in METRICS if METRICS[m].per == "crop")
INTERVAL_SUFFIXES = ("_low", "_high", "_n")  # metrics.json: <metric>_low/_high (the interval), <metric>_n (samples)


def metric(name: str) -> Metric:
    """The facts of metric `name`; an unknown name fails listing the known ones."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric '{name}'; known: {', '.join(METRICS)}") from None


def samples_note(values: Mapping[str, Any], shown: list[Metric], confidence: float | None) -> str:
    """'[low, high]: 95% intervals over 4 images (PSNR, SSIM), 64 crops (FID, KID)', from the sample counts in
    `values`; empty where it has none."""
    groups: dict[str, list[str]] = {}
    for m in shown:
        n = values.get(m.name + "_n")
        if isinstance(n, int | float):
            groups.setdefault(f"{int(n)} {'images' if m.per == 'image' else 'crops'}", []).append(m.label)
    if not groups:
        return ""
    level = f"{confidence:.0%} " if confidence else ""
    over = ", ".join(f"{count} ({', '.join(labels)})" for count, labels in groups.items())
    return f"[low, high]: {level}intervals over {over}"


def present(values: Mapping[str, object]) -> list[Metric]:
    """The table's metrics that `values` (a method's metrics.json block) carries, in table order."""
    return [m for name, m in METRICS.items() if name in values]
