"""CycleGAN's ResNet generator (Zhu et al. 2017), small and without normalisation layers.

InstanceNorm, as in the paper, would make every tile of a large image use its own statistics (seams); without it
the Enhancer's tiled output equals the whole-image one wherever the receptive field fits in the tile padding.
A global skip (output = input + residual, last layer scaled down) starts training near the identity mapping.
Leaky ReLUs: with plain ReLUs and no normalisation, the last hidden layer died within a few hundred steps,
freezing the generator at the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gan_enhance.models.registry import register


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect"),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect"),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@register("generator", "cyclegan_resnet", tasks=("translate",))
class ResnetTranslator(nn.Module):
    """c7s1-F, two stride-2 convs, `num_blocks` residual blocks, two nearest-upsample convs, c7s1-3."""

    multiple = 4

    def __init__(self, num_feat: int = 32, num_blocks: int = 4, in_channels: int = 3) -> None:
        super().__init__()
        f = num_feat
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, f, 7, padding=3, padding_mode="reflect"),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(f, 2 * f, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * f, 4 * f, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            *(ResidualBlock(4 * f) for _ in range(num_blocks)),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(4 * f, 2 * f, 3, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(2 * f, f, 3, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(f, in_channels, 7, padding=3, padding_mode="reflect"),
        )
        with torch.no_grad():  # near the identity, but the body gets gradients from the first step
            self.body[-1].weight.mul_(0.1)
            self.body[-1].bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        padded = F.pad(x, (0, -width % self.multiple, 0, -height % self.multiple), mode="replicate")
        return x + self.body(padded)[..., :height, :width]
