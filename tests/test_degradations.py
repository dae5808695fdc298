import numpy as np
import pytest

from gan_enhance.config import TaskParams
from gan_enhance.data.batches import sample_rngs
from gan_enhance.data.degradations import add_gaussian_noise, bicubic_down, bicubic_up, crop_to_multiple
from gan_enhance.tasks import build_task, task_from_card

from .conftest import photo_crops

pytestmark = pytest.mark.numeric  # also run on a second CPU code path (make test-cpu-path)


def test_bicubic_shapes_and_dtype():
    hr = crop_to_multiple(photo_crops(1, size=99)[0], 3)
    assert hr.shape == (99, 99, 3)
    lr = bicubic_down(hr, 3)
    assert lr.shape == (33, 33, 3) and lr.dtype == np.uint8
    assert bicubic_up(lr, 3).shape == hr.shape


def test_noise_statistics_and_range():
    clean = np.full((64, 64, 3), 128, np.uint8)
    noisy = add_gaussian_noise(clean, 25.0, np.random.default_rng(0))
    assert noisy.dtype == np.float32
    residual = (noisy - clean / 255.0) * 255.0
    assert abs(residual.std() - 25.0) < 0.5 and abs(residual.mean()) < 0.5


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_sr_training_pairs(scale: int):
    task = build_task(TaskParams(name="sr", sr={"scale": scale}))
    patches = np.stack(photo_crops(3, size=12 * scale))
    inputs, targets = task.training_pair(patches, sample_rngs(0, 0, range(len(patches))))
    assert inputs.shape == (3, 3, 12, 12) and targets.shape == (3, 3, 12 * scale, 12 * scale)
    assert float(inputs.min()) >= 0.0 and float(inputs.max()) <= 1.0


def test_denoise_sigma_range_is_drawn_and_eval_sigma_is_fixed():
    task = build_task(TaskParams(name="denoise", denoise={"sigma": [5, 50], "eval_sigma": 15}))
    patches = np.stack(photo_crops(2, size=32))
    inputs, targets = task.training_pair(patches, sample_rngs(0, 0, range(len(patches))))
    assert inputs.shape == targets.shape
    target = photo_crops(1, size=64)[0]
    a, b = task.eval_input(target, seed=3), task.eval_input(target, seed=3)
    assert np.array_equal(a, b)
    assert abs((a - target / 255.0).std() * 255.0 - 15.0) < 1.0


def test_task_round_trips_through_a_card():
    task = build_task(TaskParams(name="denoise", denoise={"sigma": 30, "eval_sigma": 30}))
    assert task_from_card(task.card_params()) == task
    sr = build_task(TaskParams(name="sr", sr={"scale": 3}))
    assert task_from_card(sr.card_params()) == sr


def test_gray_noise_is_one_plane_added_to_every_channel():
    target = photo_crops(1, size=64)[0]
    gray = build_task(TaskParams(name="denoise", denoise={"sigma": 25, "noise": "gray"}))
    noise = gray.eval_input(target, seed=0) - target / 255.0
    assert np.allclose(noise[..., 0], noise[..., 1], atol=1e-6) and np.allclose(noise[..., 0], noise[..., 2], atol=1e-6)
    assert abs(noise.std() * 255.0 - 25.0) < 1.0
    colour = build_task(TaskParams(name="denoise", denoise={"sigma": 25})).eval_input(target, seed=0) - target / 255.0
    assert np.abs(colour[..., 0] - colour[..., 1]).mean() * 255.0 > 10.0


def test_mixed_noise_draws_both_kinds_in_training_and_colour_noise_in_evaluation():
    target = photo_crops(1, size=32)[0]
    mixed = build_task(TaskParams(name="denoise", denoise={"sigma": 25, "noise": "mixed"}))
    rng = np.random.default_rng(0)
    gray_draws = []
    for _ in range(40):
        noise = mixed.degrade(target, rng, training=True) - target / 255.0
        gray_draws.append(np.allclose(noise[..., 0], noise[..., 1], atol=1e-6))
    assert 5 < sum(gray_draws) < 35  # about half of the patches get one noise plane
    noise = mixed.eval_input(target, seed=0) - target / 255.0
    assert np.abs(noise[..., 0] - noise[..., 1]).mean() * 255.0 > 10.0
