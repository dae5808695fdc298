"""The loss functions: pixel, adversarial, feature matching, R1, LDL's artifact loss (training/terms.py makes the
generator's terms of them)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Mean = Callable[[torch.Tensor], torch.Tensor]


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of N x C x H x W images (kernel radius 3 sigma, reflected borders)."""
    radius = max(int(3 * sigma + 0.5), 1)
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).repeat(images.shape[1], 1, 1, 1)
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.view(images.shape[1], 1, 1, -1), groups=images.shape[1])
    return F.conv2d(rows, kernel.view(images.shape[1], 1, -1, 1), groups=images.shape[1])


def pixel_loss(
    kind: str, output: torch.Tensor, target: torch.Tensor, eps: float = 1e-3, lowpass: float = 0.0
) -> torch.Tensor:
    """L1, Charbonnier or L2 (mean squared) distance; with `lowpass` > 0, between the images blurred by a Gaussian
    of that sigma (frequency separation, Fritsche et al. 2019: the pixel loss keeps colours and shapes, the
    adversarial loss is free to choose the texture above that band)."""
    if lowpass > 0:
        output, target = gaussian_blur(output, lowpass), gaussian_blur(target, lowpass)
    if kind == "l1":
        return F.l1_loss(output, target)
    if kind == "charbonnier":
        return torch.sqrt((output - target) ** 2 + eps**2).mean()
    if kind == "l2":
        return F.mse_loss(output, target)
    raise ValueError(f"unknown pixel loss '{kind}'; use l1, charbonnier or l2")


def discriminator_loss(
    kind: str, real: torch.Tensor, fake: torch.Tensor, mean: Mean = torch.mean, real_label: float = 1.0
) -> torch.Tensor:
    """Loss for D given its logits on real and (detached) fake images. `mean` takes RaGAN's batch means (over the
    global batch when several processes train); `real_label` < 1 smooths the vanilla loss's real target."""
    if kind == "vanilla":
        real_loss = real_label * F.softplus(-real) + (1 - real_label) * F.softplus(real)  # BCE against real_label
        return real_loss.mean() + F.softplus(fake).mean()
    if kind == "lsgan":
        return 0.5 * ((real - 1) ** 2).mean() + 0.5 * (fake**2).mean()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    if kind == "ragan":
        return 0.5 * (F.softplus(-(real - mean(fake))).mean() + F.softplus(fake - mean(real)).mean())
    raise ValueError(f"unknown GAN loss '{kind}'; use vanilla, lsgan, hinge or ragan")


def generator_adv_loss(
    kind: str, real: torch.Tensor, fake: torch.Tensor, mean: Mean = torch.mean, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Adversarial loss for G given D's logits on real (detached) and fake images; `mean` as for D. `weight`, a map
    broadcastable to the logits, weights each logit's loss before the mean (a region-aware loss)."""
    if kind == "vanilla":
        per_logit = F.softplus(-fake)
    elif kind == "lsgan":
        per_logit = 0.5 * (fake - 1) ** 2
    elif kind == "hinge":
        per_logit = -fake
    elif kind == "ragan":
        if weight is None:
            return 0.5 * (F.softplus(real - mean(fake)).mean() + F.softplus(-(fake - mean(real))).mean())
        per_logit = 0.5 * (F.softplus(real - mean(fake)) + F.softplus(-(fake - mean(real))))
    else:
        raise ValueError(f"unknown GAN loss '{kind}'; use vanilla, lsgan, hinge or ragan")
    return per_logit.mean() if weight is None else (per_logit * weight).mean()


def feature_matching_loss(real_feats: list[torch.Tensor], fake_feats: list[torch.Tensor]) -> torch.Tensor:
    """Mean L1 between D's intermediate features on real and fake (pix2pixHD)."""
    losses = [F.l1_loss(f, r.detach()) for r, f in zip(real_feats, fake_feats, strict=True)]
    return torch.stack(losses).mean()


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """Squared gradient norm of D on real images (Mescheder et al. 2018); real_images must require grad."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def artifact_loss(output: torch.Tensor, stable: torch.Tensor, target: torch.Tensor, window: int = 7) -> torch.Tensor:
    """LDL's loss (Liang et al., CVPR 2022): L1 weighted by a map of likely GAN artifacts. Where the output's error
    varies locally (its local variance, scaled by the image's error variance^(1/5)) and is larger than the error of
    a stable model (the EMA generator), the pixel is taken for an artifact and pulled towards the target; texture
    that the stable model also gets wrong is left to the adversarial loss."""
    with torch.no_grad():
        residual = (target - output).abs().sum(1, keepdim=True)
        stable_residual = (target - stable).abs().sum(1, keepdim=True)
        patch = residual.flatten(1).var(1).pow(0.2).view(-1, 1, 1, 1)
        mean = F.avg_pool2d(residual, window, 1, window // 2, count_include_pad=False)
        mean_sq = F.avg_pool2d(residual**2, window, 1, window // 2, count_include_pad=False)
        weight = patch * (mean_sq - mean**2).clamp_min(0) * (residual >= stable_residual)
    return F.l1_loss(weight * output, weight * target)
