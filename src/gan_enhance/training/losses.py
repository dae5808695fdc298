"""Pixel, adversarial and feature-matching losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_loss(kind: str, output: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    if kind == "l1":
        return F.l1_loss(output, target)
    if kind == "charbonnier":
        return torch.sqrt((output - target) ** 2 + eps**2).mean()
    raise ValueError(f"unknown pixel loss '{kind}'; use l1 or charbonnier")


def discriminator_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Loss for D given its logits on real and (detached) fake images."""
    if kind == "vanilla":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "lsgan":
        return 0.5 * ((real - 1) ** 2).mean() + 0.5 * (fake**2).mean()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    if kind == "ragan":
        return 0.5 * (F.softplus(-(real - fake.mean())).mean() + F.softplus(fake - real.mean()).mean())
    raise ValueError(f"unknown GAN loss '{kind}'; use vanilla, lsgan, hinge or ragan")


def generator_adv_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Adversarial loss for G given D's logits on real (detached) and fake images."""
    if kind == "vanilla":
        return F.softplus(-fake).mean()
    if kind == "lsgan":
        return 0.5 * ((fake - 1) ** 2).mean()
    if kind == "hinge":
        return -fake.mean()
    if kind == "ragan":
        return 0.5 * (F.softplus(real - fake.mean()).mean() + F.softplus(-(fake - real.mean())).mean())
    raise ValueError(f"unknown GAN loss '{kind}'; use vanilla, lsgan, hinge or ragan")


def feature_matching_loss(real_feats: list[torch.Tensor], fake_feats: list[torch.Tensor]) -> torch.Tensor:
    """Mean L1 between D's intermediate features on real and fake (pix2pixHD)."""
    losses = [F.l1_loss(f, r.detach()) for r, f in zip(real_feats, fake_feats, strict=True)]
    return torch.stack(losses).mean()


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """Squared gradient norm of D on real images (Mescheder et al. 2018); real_images must require grad."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()
