"""How inputs are made from clean targets. Pillow's bicubic is used for resizing so that LR images
and the bicubic baseline match the literature's protocol (MATLAB-like antialiased bicubic)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def crop_to_multiple(rgb: np.ndarray, multiple: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    return rgb[: height - height % multiple, : width - width % multiple]


def _resize_u8(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BICUBIC))


def bicubic_down(rgb: np.ndarray, scale: int) -> np.ndarray:
    """uint8 HxWx3 (H, W multiples of scale) -> uint8 (H/scale)x(W/scale)x3, antialiased bicubic."""
    height, width = rgb.shape[:2]
    return _resize_u8(rgb, (width // scale, height // scale))


def bicubic_up(rgb: np.ndarray, scale: int) -> np.ndarray:
    """uint8 HxWx3 -> uint8 (H*scale)x(W*scale)x3: the classical super-resolution baseline."""
    height, width = rgb.shape[:2]
    return _resize_u8(rgb, (width * scale, height * scale))


def add_gaussian_noise(rgb: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """uint8 image + N(0, sigma) on the 0-255 scale -> float32 in [0, 1] scale, not clipped, as in the
    DnCNN/FFDNet protocol (the model sees the unclipped noisy input). Evaluation scores every method's output
    clipped and quantised as saved, so the 'noisy input' baseline measures ~20.3 dB at sigma 25, not 20.17."""
    noise = rng.standard_normal(rgb.shape, dtype=np.float32) * np.float32(sigma / 255.0)
    return rgb.astype(np.float32) / 255.0 + noise
