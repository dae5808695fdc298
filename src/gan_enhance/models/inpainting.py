"""Free-form inpainting: two classical fills (harmonic and biharmonic, solved on an image pyramid) and a small
U-Net of gated convolutions (DeepFill v2's gating, Yu et al. 2019) that blends them per pixel and refines the blend.
Its bottleneck's context is dilated convolutions or LaMa's Fourier units (Suvorov et al. 2022), whose receptive field
is the whole image."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gan_enhance.models.registry import register

DILATIONS = (2, 4, 8)  # the bottleneck's context: holes wider than a few pixels need it
JACOBI_SWEEPS = 5  # harmonic fill: Jacobi sweeps per pyramid level
CG_ITERATIONS = 20  # biharmonic fill: conjugate-gradient iterations per pyramid level
CG_DAMPING = 1e-4  # keeps the biharmonic system positive definite where a hole leaves it underdetermined

Relaxation = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (initial fill, hole) -> relaxed fill


def pyramid_fill(image: torch.Tensor, valid: torch.Tensor, relax: Relaxation) -> torch.Tensor:
    """Fill the holes (valid == 0) from the known pixels, coarse to fine: coarser and coarser averages of the known
    pixels ("push-pull") fill each level's holes, and `relax` moves the upsampled coarse fill toward the level's
    solution. O(pixels) per relaxation step."""
    height, width = image.shape[-2:]
    if bool(valid.min() > 0) or min(height, width) < 2:
        mean = (image * valid).sum((2, 3), keepdim=True) / valid.sum((2, 3), keepdim=True).clamp_min(1e-6)
        return image * valid + mean * (1 - valid)
    weight = F.avg_pool2d(valid, 2, ceil_mode=True)
    coarse = F.avg_pool2d(image * valid, 2, ceil_mode=True) / weight.clamp_min(1e-6)
    filled = pyramid_fill(coarse, (weight > 0).to(image.dtype), relax)
    x = F.interpolate(filled, size=(height, width), mode="bilinear", align_corners=False)
    return relax(image * valid + x * (1 - valid), 1 - valid)


def _jacobi(x: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    """Sweeps toward the harmonic (Laplace) solution: each hole pixel becomes the mean of its neighbourhood."""
    known = x * (1 - hole)
    for _ in range(JACOBI_SWEEPS):
        x = known + F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1) * hole
    return x


def _laplacian(u: torch.Tensor) -> torch.Tensor:
    """The 5-point Laplacian with replicate (Neumann) borders: the pixel grid's graph Laplacian, so symmetric."""
    dx = u[..., :, 1:] - u[..., :, :-1]
    dy = u[..., 1:, :] - u[..., :-1, :]
    return F.pad(dx, (0, 1)) - F.pad(dx, (1, 0)) + F.pad(dy, (0, 0, 0, 1)) - F.pad(dy, (0, 0, 1, 0))


def _conjugate_gradient(x: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    """CG_ITERATIONS of conjugate gradient toward min ||L x||^2 over the hole pixels, each image and channel its
    own system: the biharmonic equation inside the holes with the known pixels as boundary (the problem
    scikit-image's inpaint_biharmonic solves exactly; here the coarse levels give the start, a few iterations
    per level refine it)."""
    residual = -hole * _laplacian(_laplacian(x))
    direction = residual
    norm = (residual * residual).sum((2, 3), keepdim=True)
    for _ in range(CG_ITERATIONS):
        product = hole * _laplacian(_laplacian(direction)) + CG_DAMPING * direction
        step = norm / (direction * product).sum((2, 3), keepdim=True).clamp_min(1e-20)
        x = x + step * direction
        residual = residual - step * product
        new_norm = (residual * residual).sum((2, 3), keepdim=True)
        direction = residual + new_norm / norm.clamp_min(1e-20) * direction
        norm = new_norm
    return x


def harmonic_fill(image: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Membrane fill: smooth, never overshoots the known values."""
    return pyramid_fill(image, valid, _jacobi)


def biharmonic_fill(image: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Thin-plate fill: carries the known gradients into the hole (sharper ramps, but it can overshoot)."""
    return pyramid_fill(image, valid, _conjugate_gradient)


def fills_mean(image: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The even blend of the two fills: what an untrained gated_unet returns."""
    return (harmonic_fill(image, valid) + biharmonic_fill(image, valid)) / 2


class GatedConv(nn.Module):
    """ELU(features) x sigmoid(gate): the network learns per pixel and channel which inputs are valid."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, dilation: int = 1):
        super().__init__()
        padding = dilation * (kernel - 1) // 2
        self.conv = nn.Conv2d(in_channels, 2 * out_channels, kernel, stride, padding, dilation=dilation)
        # He initialisation, features doubled for the gate's ~0.5: PyTorch's default shrank the signal about
        # threefold per layer, and the bottleneck of a fresh network saw almost nothing of its input
        nn.init.kaiming_normal_(self.conv.weight, nonlinearity="relu")
        nn.init.zeros_(self.conv.bias)
        with torch.no_grad():
            self.conv.weight[:out_channels].mul_(2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, gate = self.conv(x).chunk(2, dim=1)
        return F.elu(features) * torch.sigmoid(gate)


class FourierUnit(nn.Module):
    """LaMa's spectral transform: a 1x1 convolution (+ ReLU) on the real and imaginary parts of the features' 2-D
    Fourier transform, so every output pixel depends on every input pixel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, 2 * channels, 1)
        nn.init.kaiming_normal_(self.conv.weight, nonlinearity="relu")
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        with torch.autocast(x.device.type, enabled=False):  # FFTs of bf16 are not supported on every device
            spectrum = torch.fft.rfft2(x.float(), norm="ortho")
            mixed = F.relu(self.conv(torch.cat([spectrum.real, spectrum.imag], dim=1)))
            real, imag = mixed.chunk(2, dim=1)
            out = torch.fft.irfft2(torch.complex(real, imag), s=(height, width), norm="ortho")
        return out.to(x.dtype)


class FourierBlock(nn.Module):
    """Residual block of LaMa's fast Fourier convolution, simplified: a local gated 3x3 path and a global Fourier
    path, merged by a 1x1 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.local = GatedConv(channels, channels)
        self.spectral = FourierUnit(channels)
        self.merge = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.merge(torch.cat([self.local(x), self.spectral(x)], dim=1))


@register("generator", "gated_unet", tasks=("inpaint",))
class GatedUNet(nn.Module):
    """Input: RGB with holes + mask channel (1 = hole); output: RGB predicted everywhere (the Enhancer keeps the
    known pixels). Values under the mask are ignored, so callers need not blank them.

    The network sees both classical fills and the mask and returns blend + residual: a per-pixel weight between
    the harmonic and the biharmonic fill, and a correction on top. Its head starts at zero, so an untrained model
    is the even blend of the two fills and training starts from a classical answer.

    `context`: the bottleneck's blocks, `dilated` (gated convolutions at dilations 2, 4, 8) or `fourier` (three
    FourierBlocks: a receptive field of the whole image, for holes wider than the dilations reach)."""

    def __init__(
        self,
        num_feat: int = 32,
        depth: int = 2,
        in_channels: int = 4,
        context: Literal["dilated", "fourier"] = "dilated",
    ) -> None:
        super().__init__()
        if in_channels != 4:
            raise ValueError(f"gated_unet takes RGB + mask (4 channels), not {in_channels}")
        self.multiple = 2**depth
        self.stem = GatedConv(7, num_feat, kernel=5)  # harmonic RGB, biharmonic RGB, mask
        channels = [num_feat * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            nn.Sequential(
                GatedConv(channels[i], channels[i + 1], stride=2), GatedConv(channels[i + 1], channels[i + 1])
            )
            for i in range(depth)
        )
        if context not in ("dilated", "fourier"):
            raise ValueError(f"gated_unet's context is 'dilated' or 'fourier', not {context!r}")
        if context == "fourier":
            self.middle = nn.Sequential(*(FourierBlock(channels[-1]) for _ in DILATIONS))
        else:
            self.middle = nn.Sequential(*(GatedConv(channels[-1], channels[-1], dilation=d) for d in DILATIONS))
        self.up = nn.ModuleList(GatedConv(channels[i + 1] + channels[i], channels[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(num_feat, 4, 3, padding=1)  # RGB correction, blend logit
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        mask = x[:, 3:4].float()
        known = x[:, :3].float() * (1 - mask)
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            harmonic = harmonic_fill(known, 1 - mask)
            biharmonic = biharmonic_fill(known, 1 - mask)
        pad_h, pad_w = -height % self.multiple, -width % self.multiple
        h = F.pad(torch.cat([harmonic, biharmonic, mask], dim=1).to(x.dtype), (0, pad_w, 0, pad_h), mode="replicate")
        skips = [self.stem(h)]
        for block in self.down:
            skips.append(block(skips[-1]))
        h = self.middle(skips.pop())
        for block in self.up:
            h = block(torch.cat([F.interpolate(h, scale_factor=2, mode="nearest"), skips.pop()], dim=1))
        correction, blend = self.head(h)[..., :height, :width].float().split((3, 1), dim=1)
        return harmonic + torch.sigmoid(blend) * (biharmonic - harmonic) + correction
