"""Small generators that learn usefully on a few CPU cores."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gan_enhance.models.registry import register


@register("generator", "srvgg", tasks=("sr", "denoise"))
class SRVGGCompact(nn.Module):
    """Real-ESRGAN's compact VGG-style net (SRVGGNetCompact: the same `body.N` layout and PReLU activations, so its
    published weights load): plain convs at low resolution, then up to the output size, plus an upsampled copy of
    the input so the body only learns the residual detail. `residual`: how that copy is upsampled, `bilinear`
    (this project's default) or `nearest` (SRVGGNetCompact's: set it for published weights).

    upsample: `pixelshuffle` (Real-ESRGAN's: one conv makes scale^2 sub-pixel planes; cheap, but the sub-pixels'
    filters drift apart under an adversarial loss and print a scale-periodic grid) or `resize` (nearest x2 then a
    conv, per factor of 2 or 3, halving the width each time: no sub-pixel grid, about 1.6x the cost at x4)."""

    def __init__(
        self,
        scale: int = 4,
        num_feat: int = 48,
        num_conv: int = 10,
        in_channels: int = 3,
        upsample: Literal["pixelshuffle", "resize"] = "pixelshuffle",
        residual: Literal["bilinear", "nearest"] = "bilinear",
    ) -> None:
        super().__init__()
        if upsample not in ("pixelshuffle", "resize"):
            raise ValueError(f"unknown upsample '{upsample}'; use pixelshuffle or resize")
        if residual not in ("bilinear", "nearest"):
            raise ValueError(f"unknown residual '{residual}'; use bilinear or nearest")
        self.scale, self.residual = scale, residual
        layers: list[nn.Module] = [nn.Conv2d(in_channels, num_feat, 3, padding=1), nn.PReLU(num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, padding=1), nn.PReLU(num_feat)]
        if upsample == "pixelshuffle" or scale == 1:
            layers += [nn.Conv2d(num_feat, in_channels * scale * scale, 3, padding=1), nn.PixelShuffle(scale)]
        else:
            width = num_feat
            for factor in {2: (2,), 3: (3,), 4: (2, 2)}[scale]:
                layers += [
                    nn.Upsample(scale_factor=factor, mode="nearest"),
                    nn.Conv2d(width, max(width // 2, 8), 3, padding=1),
                    nn.PReLU(max(width // 2, 8)),
                ]
                width = max(width // 2, 8)
            layers.append(nn.Conv2d(width, in_channels, 3, padding=1))
        self.body = nn.Sequential(*layers)
        last = [m for m in self.body if isinstance(m, nn.Conv2d)][-1]
        nn.init.zeros_(last.weight)  # start as the interpolated input: a sane baseline from step 0
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.scale == 1:
            return out + x
        if self.residual == "nearest":
            return out + F.interpolate(x, scale_factor=self.scale, mode="nearest")
        return out + F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)


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
        for conv in self.body[:-1:2]:  # He init: with PyTorch's default one a 17-layer plain body loses the input
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")  # signal and never starts learning
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.body(x)
