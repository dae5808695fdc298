"""DCGAN (Radford et al. 2016), as in the PyTorch DCGAN example: transposed convolutions with batch norm up from
a latent vector, strided convolutions down to one logit. Images are in [0, 1] outside the networks."""

from __future__ import annotations

import math

import torch
from torch import nn

from gan_enhance.models.registry import register


def _steps(image_size: int) -> int:
    steps = int(math.log2(image_size)) - 2
    if steps < 1 or 2 ** (steps + 2) != image_size:
        raise ValueError(f"DCGAN image_size must be a power of two >= 8, not {image_size}")
    return steps


def _dcgan_init(module: nn.Module) -> None:
    """N(0, 0.02) convolutions, N(1, 0.02) batch-norm scales (the paper's initialisation)."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


@register("generator", "dcgan", tasks=("generate",))
class DCGANGenerator(nn.Module):
    def __init__(self, latent_dim: int = 100, num_feat: int = 64, image_size: int = 32) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        steps = _steps(image_size)
        channels = num_feat * 2 ** (steps - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, channels, 4, 1, 0, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(True),
        ]
        for _ in range(steps - 1):
            layers += [
                nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(channels // 2),
                nn.ReLU(True),
            ]
            channels //= 2
        layers += [nn.ConvTranspose2d(channels, 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.body = nn.Sequential(*layers)
        self.apply(_dcgan_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """N x latent_dim (or N x latent_dim x 1 x 1) -> N x 3 x S x S in [0, 1]."""
        return (self.body(z.reshape(z.shape[0], self.latent_dim, 1, 1)) + 1) / 2


@register("discriminator", "dcgan")
class DCGANDiscriminator(nn.Module):
    """Returns (N x 1 logits, intermediate features) like the other discriminators."""

    def __init__(self, num_feat: int = 64, image_size: int = 32, in_channels: int = 3) -> None:
        super().__init__()
        steps = _steps(image_size)
        blocks: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(in_channels, num_feat, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True))
        ]
        channels = num_feat
        for _ in range(steps - 1):
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(channels, channels * 2, 4, 2, 1, bias=False),
                    nn.BatchNorm2d(channels * 2),
                    nn.LeakyReLU(0.2, True),
                )
            )
            channels *= 2
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(channels, 1, 4, 1, 0, bias=False)
        self.apply(_dcgan_init)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = x * 2 - 1
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return self.head(x).flatten(1), features
