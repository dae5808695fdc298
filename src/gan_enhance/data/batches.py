"""Training batches: random target patches (area-weighted image choice, flips and 90° rotations).

Each sample of a step's global batch draws from its own generator, seeded with (seed, step, stream, index): a
resumed run draws exactly the batches an uninterrupted run would, and N processes that each make their share of
the indices train on exactly the batch one process would make.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from gan_enhance.data.prepare import read_manifest


def load_split(prepared_dir: Path, split: str) -> list[np.ndarray]:
    """All images of a split as uint8 HxWx3 arrays (in memory)."""
    rows = [r for r in read_manifest(prepared_dir) if r.split == split]
    return [np.asarray(Image.open(Path(prepared_dir) / r.file).convert("RGB")) for r in rows]


class PatchSampler:
    def __init__(self, images: list[np.ndarray], patch: int) -> None:
        if not images:
            raise ValueError("no training images; run the prepare stage on a source with images")
        small = [i for i, im in enumerate(images) if min(im.shape[:2]) < patch]
        if small:
            raise ValueError(f"{len(small)} training images are smaller than train.patch_size={patch}; lower it")
        self.images = images
        self.patch = patch
        areas = np.array([im.shape[0] * im.shape[1] for im in images], dtype=np.float64)
        self.weights = areas / areas.sum()

    def sample(self, rngs: list[np.random.Generator]) -> np.ndarray:
        """B x P x P x 3 uint8 patches, one from each generator."""
        out = np.empty((len(rngs), self.patch, self.patch, 3), dtype=np.uint8)
        for i, rng in enumerate(rngs):
            image = self.images[rng.choice(len(self.images), p=self.weights)]
            top = rng.integers(0, image.shape[0] - self.patch + 1)
            left = rng.integers(0, image.shape[1] - self.patch + 1)
            patch = image[top : top + self.patch, left : left + self.patch]
            if rng.random() < 0.5:
                patch = patch[:, ::-1]
            out[i] = np.rot90(patch, k=int(rng.integers(0, 4)))
        return out


def step_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    """The generator of one step's shared draws (the same on every process)."""
    return np.random.default_rng([seed, step, stream])


def sample_rngs(seed: int, step: int, indices: Iterable[int], stream: int = 0) -> list[np.random.Generator]:
    """One generator per sample index of a step's global batch."""
    return [np.random.default_rng([seed, step, stream, i]) for i in indices]
