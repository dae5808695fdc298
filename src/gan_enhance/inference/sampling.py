"""Unconditional generation: seeds in, images out."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from gan_enhance.inference.base import Enhancer
from gan_enhance.kinds import InputsName


class Sampler(Enhancer):
    """Images from latent noise; sample i depends only on (seed, i)."""

    inputs: ClassVar[InputsName] = "latent"
    apis: ClassVar[tuple[str, ...]] = ("/generate",)
    batch: ClassVar[tuple[np.dtype, tuple[int, ...]]] = (np.dtype(np.int64), (-1,))

    @torch.inference_mode()
    def sample(self, n: int, seed: int = 0, batch: int = 64) -> np.ndarray:
        """n images: uint8 n x S x S x 3. Image i comes from the latent that (seed, i) draws on the CPU, so it is
        the same for any n and on any device."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        dim = self.card.latent_dim
        latent = torch.from_numpy(
            np.stack([np.random.default_rng([seed, i]).standard_normal(dim, dtype=np.float32) for i in range(n)])
        )
        chunks = [self.forward(latent[i : i + batch].to(self.device)).cpu() for i in range(0, n, batch)]
        images = torch.cat(chunks).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        return np.round(images * 255.0).astype(np.uint8)

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """N int64 seeds -> N x S x S x 3 uint8, sample i drawn from seed i."""
        return np.stack([self.sample(1, seed=int(seed))[0] for seed in np.asarray(batch).ravel()])

    def warm_up(self) -> None:
        self.sample(1)

    @classmethod
    def input_example(cls, side: int = 16) -> np.ndarray:
        return np.array([0], dtype=np.int64)
