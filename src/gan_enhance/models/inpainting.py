"""A small U-Net of gated convolutions for free-form inpainting (DeepFill v2's gating, Yu et al. 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gan_enhance.models.registry import register

DILATIONS = (2, 4, 8)  # the bottleneck's context: holes wider than a few pixels need it
SMOOTHING = 5  # Jacobi sweeps per pyramid level


def pyramid_fill(image: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Fill the holes (valid == 0) smoothly from the known pixels: a multigrid harmonic fill. Coarser and coarser
    averages of the known pixels ("push-pull") fill each level's holes, then SMOOTHING Jacobi sweeps relax them
    toward the harmonic (Laplace) solution. O(pixels); the network refines what it leaves."""
    height, width = image.shape[-2:]
    if bool(valid.min() > 0) or min(height, width) < 2:
        mean = (image * valid).sum((2, 3), keepdim=True) / valid.sum((2, 3), keepdim=True).clamp_min(1e-6)
        return image * valid + mean * (1 - valid)
    weight = F.avg_pool2d(valid, 2, ceil_mode=True)
    coarse = F.avg_pool2d(image * valid, 2, ceil_mode=True) / weight.clamp_min(1e-6)
    filled = pyramid_fill(coarse, (weight > 0).to(image.dtype))
    x = F.interpolate(filled, size=(height, width), mode="bilinear", align_corners=False)
    known = image * valid
    for _ in range(SMOOTHING):
        x = known + F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1) * (1 - valid)
    return x


class GatedConv(nn.Module):
    """ELU(features) x sigmoid(gate): the network learns per pixel and channel which inputs are valid."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, dilation: int = 1):
        super().__init__()
        padding = dilation * (kernel - 1) // 2
        self.conv = nn.Conv2d(in_channels, 2 * out_channels, kernel, stride, padding, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, gate = self.conv(x).chunk(2, dim=1)
        return F.elu(features) * torch.sigmoid(gate)


@register("generator", "gated_unet", tasks=("inpaint",))
class GatedUNet(nn.Module):
    """Input: RGB with holes + mask channel (1 = hole); output: RGB predicted everywhere (the Enhancer keeps
    the known pixels). Values under the mask are ignored, so callers need not blank them."""

    def __init__(self, num_feat: int = 32, depth: int = 2, in_channels: int = 4) -> None:
        super().__init__()
        if in_channels != 4:
            raise ValueError(f"gated_unet takes RGB + mask (4 channels), not {in_channels}")
        self.multiple = 2**depth
        self.stem = GatedConv(in_channels, num_feat, kernel=5)
        channels = [num_feat * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            nn.Sequential(
                GatedConv(channels[i], channels[i + 1], stride=2), GatedConv(channels[i + 1], channels[i + 1])
            )
            for i in range(depth)
        )
        self.middle = nn.Sequential(*(GatedConv(channels[-1], channels[-1], dilation=d) for d in DILATIONS))
        self.up = nn.ModuleList(GatedConv(channels[i + 1] + channels[i], channels[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(num_feat, 3, 3, padding=1)
        with torch.no_grad():  # start close to the classical fill, but not at it: the body needs gradients at once
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        mask = x[:, 3:4]
        image = pyramid_fill(x[:, :3] * (1 - mask), 1 - mask)
        pad_h, pad_w = -height % self.multiple, -width % self.multiple
        h = F.pad(torch.cat([image, mask], dim=1), (0, pad_w, 0, pad_h), mode="replicate")
        skips = [self.stem(h)]
        for block in self.down:
            skips.append(block(skips[-1]))
        h = self.middle(skips.pop())
        for block in self.up:
            h = block(torch.cat([F.interpolate(h, scale_factor=2, mode="nearest"), skips.pop()], dim=1))
        return image + self.head(h)[..., :height, :width]
