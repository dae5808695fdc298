import math

import numpy as np
import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from gan_enhance.evaluation.metrics import (
    _Precomputed,
    fid_kid,
    frechet_distance,
    inception_features,
    psnr_ssim,
    rgb_to_y,
)

from .conftest import photo_crops


def test_y_channel_psnr_matches_a_hand_computed_value():
    target = np.zeros((32, 32, 3), np.uint8)
    target[..., 1] = 100
    output = target.copy()
    output[8:24, 8:24, 1] = 110  # a quarter of the pixels differ in G by 10
    # only the centre 16x16 survives a border crop of 8, and every pixel there differs by 128.553 * 10 / 255 in Y
    dy = 128.553 * 10 / 255
    expected = 10 * math.log10(255.0**2 / dy**2)
    psnr, _ = psnr_ssim(output, target, space="y", crop=8)
    assert psnr == pytest.approx(expected, abs=1e-4)
    # without the crop, a quarter of the pixels differ
    expected_full = 10 * math.log10(255.0**2 / (dy**2 / 4))
    assert psnr_ssim(output, target, space="y", crop=0)[0] == pytest.approx(expected_full, abs=1e-4)


def test_bt601_luma_range():
    assert rgb_to_y(np.zeros((1, 1, 3), np.uint8))[0, 0] == pytest.approx(16.0)
    assert rgb_to_y(np.full((1, 1, 3), 255, np.uint8))[0, 0] == pytest.approx(235.0)


def test_identical_images_have_ssim_one_and_metrics_need_uint8():
    image = photo_crops(1, size=48)[0]
    _, ssim = psnr_ssim(image, image, space="rgb")
    assert ssim == pytest.approx(1.0)
    with pytest.raises(TypeError, match="uint8"):
        psnr_ssim(image.astype(np.float32), image)


def test_fid_is_zero_for_a_set_against_itself_and_grows_with_noise():
    crops = photo_crops(10, size=64)
    real = inception_features(crops)
    assert real.shape == (10, 2048)
    same = fid_kid(real, real, kid_subset_size=5)
    rng = np.random.default_rng(0)
    noisy = [np.clip(c + rng.normal(0, 40, c.shape), 0, 255).astype(np.uint8) for c in crops]
    other = fid_kid(real, inception_features(noisy), kid_subset_size=5)
    assert abs(same["fid"]) < 1e-3
    assert other["fid"] > 10 * max(same["fid"], 1.0)
    assert other["kid"] > same["kid"]


def test_fast_frechet_distance_equals_torchmetrics():
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(40, 2048, generator=gen, dtype=torch.float64)
    fake = (real[:30] + 0.2 * torch.randn(30, 2048, generator=gen, dtype=torch.float64)).abs()
    reference = FrechetInceptionDistance(feature=_Precomputed())
    reference.update(real, real=True)
    reference.update(fake, real=False)
    assert frechet_distance(real, fake) == pytest.approx(float(reference.compute()), rel=1e-5)
