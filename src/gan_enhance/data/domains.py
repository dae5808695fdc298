"""Two image domains for unpaired translation: two folders, or a demonstration pair made from one source.

The demonstration pair ('warm_film'): the source's images, sorted by name, are dealt alternately to domain A
(kept as they are) and domain B (given a warm, faded film grade). No photo is in both domains, so the pairs a
paired method would need do not exist: the model must learn the grade from the two collections alone.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from gan_enhance.data.image_io import to_uint8
from gan_enhance.data.sources import SourceImage, list_source

WARM_FILM = "warm_film"


def warm_film(rgb: np.ndarray) -> np.ndarray:
    """uint8 H x W x 3 -> uint8: half the saturation, a warm cast, lifted blacks and dimmed whites."""
    x = rgb.astype(np.float32) / 255.0
    luma = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    x = luma[..., None] + 0.5 * (x - luma[..., None])
    x = x * np.array([1.08, 0.97, 0.78], dtype=np.float32) + np.array([0.03, 0.01, 0.0], dtype=np.float32)
    x = 0.08 + 0.84 * x
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def _graded(item: SourceImage) -> np.ndarray:
    return warm_film(to_uint8(item.read(max_pixels=50_000_000)))  # the graded copy is checked against the limit


def demonstration_domains(sources: list[SourceImage]) -> tuple[list[SourceImage], list[SourceImage]]:
    """Alternate the name-sorted images between A (unchanged) and B (graded with `warm_film`)."""
    ordered = sorted(sources, key=lambda item: item.name)
    domain_a = ordered[0::2]
    domain_b = [SourceImage(f"{WARM_FILM}/{item.name}", pixels=partial(_graded, item)) for item in ordered[1::2]]
    return domain_a, domain_b


def domain_sources(source: str, source_b: str, base: Path = Path(".")) -> tuple[list[SourceImage], list[SourceImage]]:
    """(domain A, domain B) images for data.source and task.translate.source_b."""
    if source_b == WARM_FILM:
        return demonstration_domains(list_source(source, base))
    return list_source(source, base), list_source(source_b, base)
