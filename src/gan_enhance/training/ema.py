"""Exponential moving average of generator weights, with the half-life counted in images (StyleGAN2-ADA)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, halflife_images: int, rampup: float | None = None) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.halflife_images = halflife_images
        self.rampup = rampup

    def beta(self, batch: int, images_seen: int) -> float:
        halflife = float(self.halflife_images)
        if self.rampup is not None:
            halflife = min(halflife, images_seen * self.rampup)
        return 0.5 ** (batch / max(halflife, 1e-8))

    @torch.no_grad()
    def update(self, model: nn.Module, batch: int, images_seen: int) -> float:
        """Blend `model` into the average; buffers are copied. Returns the beta used."""
        beta = self.beta(batch, images_seen)
        for avg, cur in zip(self.model.parameters(), model.parameters(), strict=True):
            avg.lerp_(cur.detach(), 1.0 - beta)
        for avg, cur in zip(self.model.buffers(), model.buffers(), strict=True):
            avg.copy_(cur)
        return beta
