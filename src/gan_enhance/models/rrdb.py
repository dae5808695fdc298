"""ESRGAN's RRDBNet (Wang et al. 2018), the generator behind ESRGAN and Real-ESRGAN's RealESRGAN_x4plus.

The layout and parameter names are BasicSR's (`conv_first`, `body.N.rdbK.convJ`, `conv_body`, `conv_up1/2`,
`conv_hr`, `conv_last`), so BasicSR/Real-ESRGAN weights load without renaming (`gan-enhance import` also renames
the original ESRGAN repository's keys). x4 upsamples twice by nearest x2 + conv; x2 and x1 first fold the input's
pixels into channels (pixel-unshuffle by 2 or 4), as Real-ESRGAN does, and pad the input to a multiple of that
factor (cropped off again), so any image size works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gan_enhance.models.registry import register

UNSHUFFLE = {4: 1, 2: 2, 1: 4}  # scale -> pixel-unshuffle factor of the input


class ResidualDenseBlock(nn.Module):
    """Five densely connected convs; the block's output is scaled by 0.2 and added to its input."""

    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5):  # BasicSR: Kaiming x 0.1
            nn.init.kaiming_normal_(conv.weight)
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    """Residual in residual dense block: three dense blocks, their output scaled by 0.2 and added to the input."""

    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


@register("generator", "rrdb", tasks=("sr", "denoise"))
class RRDBNet(nn.Module):
    """RRDBNet with BasicSR's names. Defaults are RealESRGAN_x4plus's (23 blocks, 64 features, 32 growth: 16.7M
    parameters); small settings (e.g. num_block=2, num_feat=32) train on a CPU."""

    def __init__(
        self, scale: int = 4, num_feat: int = 64, num_block: int = 23, num_grow_ch: int = 32, in_channels: int = 3
    ) -> None:
        super().__init__()
        if scale not in UNSHUFFLE:
            raise ValueError(f"rrdb supports scale 1, 2 or 4 (x3 has no RRDBNet layout); got {scale}")
        self.scale = scale
        self.unshuffle = UNSHUFFLE[scale]
        self.conv_first = nn.Conv2d(in_channels * self.unshuffle**2, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, in_channels, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        factor = self.unshuffle
        if factor > 1:
            pad_h, pad_w = -height % factor, -width % factor
            if pad_h or pad_w:
                x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
            x = F.pixel_unshuffle(x, factor)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        out = self.conv_last(self.lrelu(self.conv_hr(feat)))
        return out[..., : height * self.scale, : width * self.scale]
