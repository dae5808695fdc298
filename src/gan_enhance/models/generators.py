"""Small generators that learn usefully on a few CPU cores."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gan_enhance.models.registry import register


@register("generator", "srvgg", tasks=("sr", "denoise"))
class SRVGGCompact(nn.Module):
    """Real-ESRGAN's compact VGG-style net: plain convs at low resolution, pixel-shuffle up,
    plus a bilinear-upsampled copy of the input so the body only learns the residual detail."""

    def __init__(self, scale: int = 4, num_feat: int = 48, num_conv: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(in_channels, num_feat, 3, padding=1), nn.PReLU(num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, padding=1), nn.PReLU(num_feat)]
        layers.append(nn.Conv2d(num_feat, in_channels * scale * scale, 3, padding=1))
        self.body = nn.Sequential(*layers)
        self.upsample = nn.PixelShuffle(scale)
        nn.init.zeros_(self.body[-1].weight)  # start as the interpolated input: a sane baseline from step 0
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.upsample(self.body(x))
        base = x if self.scale == 1 else F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return out + base


@register("generator", "dncnn", tasks=("denoise",))
class DnCNN(nn.Module):
    """DnCNN-style residual denoiser without batch norm: predicts the noise and subtracts it."""

    def __init__(self, num_feat: int = 48, depth: int = 12, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, num_feat, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(num_feat, num_feat, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(num_feat, in_channels, 3, padding=1))
        self.body = nn.Sequential(*layers)
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.body(x)
