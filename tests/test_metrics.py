import math

import numpy as np
import pytest
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from gan_enhance.evaluation.metrics import inception_features, psnr_ssim, rgb_to_y
from gan_enhance.evaluation.uncertainty import CropStatistics

from .conftest import photo_crops

pytestmark = pytest.mark.numeric  # also run on a second CPU code path (make test-cpu-path)


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


class _Precomputed(nn.Module):
    """Lets torchmetrics' FID/KID consume features directly."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _features(n: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    real = torch.rand(n, dim, generator=gen, dtype=torch.float64)
    return real, (real + 0.2 * torch.randn(n, dim, generator=gen, dtype=torch.float64)).abs()


def _torchmetrics_fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    fid = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    fid.update(real, real=True)
    fid.update(fake, real=False)
    return float(fid.compute())


def test_fid_is_zero_for_a_set_against_itself_and_grows_with_noise():
    crops = photo_crops(10, size=64)
    real = inception_features(crops)
    assert real.shape == (10, 2048) and real.dtype == np.float32
    rng = np.random.default_rng(0)
    noisy = [np.clip(c + rng.normal(0, 40, c.shape), 0, 255).astype(np.uint8) for c in crops]
    stats = CropStatistics(real, {"same": real, "noisy": inception_features(noisy)})
    assert abs(stats.point("same", "fid")) < 1e-3
    assert stats.point("noisy", "fid") > 10 * max(stats.point("same", "fid"), 1.0)
    assert stats.point("noisy", "kid") > stats.point("same", "kid")


def test_fid_and_kid_equal_torchmetrics_where_the_covariances_have_full_rank():
    # 400 samples of 64 features: both covariances have full rank and condition numbers near 10, so both ways of
    # computing FID (ours: the nuclear norm of a cross Gram matrix; torchmetrics: eigenvalues of S_r S_f) are
    # well-conditioned and agree to float64 round-off times the dimension, whatever BLAS kernels the CPU picks
    real, fake = _features(400, 64)
    dim = real.shape[1]
    assert torch.linalg.cond(torch.cov(real.T)) < 100 and torch.linalg.cond(torch.cov(fake.T)) < 100
    stats = CropStatistics(real.numpy(), {"fake": fake.numpy(), "fewer": fake[:300].numpy()})
    assert stats.point("fake", "fid") == pytest.approx(_torchmetrics_fid(real, fake), rel=1e-9)
    assert stats.point("fewer", "fid") == pytest.approx(_torchmetrics_fid(real, fake[:300]), rel=1e-9)
    # KID: torchmetrics' value with the cross term over distinct pairs instead of all pairs (see uncertainty.py);
    # sums of positive kernel values in float64: round-off ~1e-13 relative
    kid = KernelInceptionDistance(feature=_Precomputed(dim), subsets=1, subset_size=400)  # one subset: all samples
    kid.update(real, real=True)
    kid.update(fake, real=False)
    k_rf = ((real @ fake.T) / dim + 1) ** 3
    all_pairs, distinct = k_rf.mean(), (k_rf.sum() - k_rf.diagonal().sum()) / (400 * 399)
    expected = float(kid.compute()[0]) + 2 * float(all_pairs - distinct)
    assert stats.point("fake", "kid") == pytest.approx(expected, rel=1e-9)


def test_fid_with_fewer_crops_than_features_is_within_torchmetrics_round_off_bound():
    # The evaluation's own case (192 crops of 2048 Inception features): the covariances have rank n - 1, and S_r S_f
    # has d - (n - 1) eigenvalues that are zero in exact arithmetic. An eigen-solver returns them as round-off of
    # size up to ~eps * ||S_r|| ||S_f|| (some negative or complex); torchmetrics sums their square roots, each up to
    # sqrt(eps * ||S_r|| ||S_f||), so its trace term carries an error up to 2 (d - n + 1) sqrt(eps ||S_r|| ||S_f||)
    # that depends on the CPU's LAPACK kernels (1.7e-6 relative on an AMD EPYC, 0.9e-6 here). Ours never forms a
    # d x d product: it takes the nuclear norm of the n x n centred cross Gram matrix, which has no such zero
    # eigenvalues; the two may differ by that bound and no more.
    real, fake = _features(40, 2048)
    n, dim = real.shape
    norms = torch.linalg.matrix_norm(torch.cov(real.T), 2) * torch.linalg.matrix_norm(torch.cov(fake.T), 2)
    bound = 2 * (dim - n + 1) * float(torch.sqrt(torch.finfo(torch.float64).eps * norms))
    ours = CropStatistics(real.numpy(), {"fake": fake.numpy()}).point("fake", "fid")
    assert abs(ours - _torchmetrics_fid(real, fake)) <= bound
    assert bound < 1e-5 * ours  # the bound is tight enough to catch a wrong formula (e.g. a missing 1/(n-1))


def test_kid_of_paired_crops_does_not_depend_on_their_number():
    # output crop i is reference crop i plus noise (the same place): the all-pairs cross term would make KID grow
    # with the count; over distinct pairs its mean is the same at 16 and at 128 crops
    gen = np.random.default_rng(0)
    small, large = [], []
    for _ in range(40):
        real = gen.gamma(2.0, 0.15, (128, 32))
        fake = real + 0.05 + gen.normal(0, 0.05, real.shape)
        small.append(CropStatistics(real[:16], {"fake": fake[:16]}).point("fake", "kid"))
        large.append(CropStatistics(real, {"fake": fake}).point("fake", "kid"))
    spread = np.std(small, ddof=1) / np.sqrt(len(small))
    assert abs(np.mean(small) - np.mean(large)) < 3 * spread
