"""Discriminators that also return their intermediate features (for feature matching)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import spectral_norm

from gan_enhance.models.registry import register


@register("discriminator", "patchgan")
class PatchGAN(nn.Module):
    """pix2pix PatchGAN with spectral norm: a map of real/fake logits, one per receptive field."""

    def __init__(self, num_feat: int = 32, num_layers: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = [
            nn.Sequential(spectral_norm(nn.Conv2d(in_channels, num_feat, 4, 2, 1)), nn.LeakyReLU(0.2, True))
        ]
        channels = num_feat
        for i in range(1, num_layers + 1):
            out = num_feat * min(2**i, 8)
            stride = 2 if i < num_layers else 1
            blocks.append(nn.Sequential(spectral_norm(nn.Conv2d(channels, out, 4, stride, 1)), nn.LeakyReLU(0.2, True)))
            channels = out
        self.blocks = nn.ModuleList(blocks)
        self.head = spectral_norm(nn.Conv2d(channels, 1, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return self.head(x), features
