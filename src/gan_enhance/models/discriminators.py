"""Discriminators that also return their intermediate features (for feature matching)."""

from __future__ import annotations

from functools import partial
from itertools import pairwise

import torch
import torch.nn.functional as F
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


@register("discriminator", "unet")
class UNetDiscriminator(nn.Module):
    """Real-ESRGAN's U-Net discriminator with spectral norm: an encoder of strided convs and a decoder with skip
    connections give a map of real/fake logits at full detail, so the generator is told where an image looks fake
    (an edge, a patch of texture) rather than one verdict per large patch. Unlike Real-ESRGAN's, the stem has
    stride 2 and the decoder upsamples by nearest neighbour: one logit per 2 x 2 pixels, which keeps its cost on
    CPU near the PatchGAN's (full-resolution 16-channel convs and bilinear backward passes cost 4x as much)."""

    def __init__(self, num_feat: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        widths = (num_feat, num_feat * 2, num_feat * 4, num_feat * 8)
        self.stem = nn.Conv2d(in_channels, num_feat, 4, 2, 1)
        self.down = nn.ModuleList(spectral_norm(nn.Conv2d(a, b, 4, 2, 1, bias=False)) for a, b in pairwise(widths))
        self.up = nn.ModuleList(
            spectral_norm(nn.Conv2d(b, a, 3, 1, 1, bias=False)) for a, b in reversed(list(pairwise(widths)))
        )
        self.refine = nn.ModuleList(spectral_norm(nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=False)) for _ in range(2))
        self.head = nn.Conv2d(num_feat, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        act = partial(F.leaky_relu, negative_slope=0.2)
        skips = [act(self.stem(x))]
        for conv in self.down:
            skips.append(act(conv(skips[-1])))
        features = list(skips)
        y = skips.pop()
        for conv in self.up:
            skip = skips.pop()
            y = act(conv(F.interpolate(y, size=skip.shape[-2:], mode="nearest"))) + skip
            features.append(y)
        for conv in self.refine:
            y = act(conv(y))
        return self.head(y), features
