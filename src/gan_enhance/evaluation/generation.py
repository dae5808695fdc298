"""Evaluation of unconditional generation: FID/KID of evaluate.fid_crops seeded samples against as many test
images (drawn with a seed; repeated when the test split is smaller), beside a baseline of uniform-noise images,
and a grid of samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from gan_enhance.config import Params
from gan_enhance.evaluation.evidence import Evidence
from gan_enhance.evaluation.metrics import inception_features
from gan_enhance.evaluation.report import MODEL, Evaluation, assemble_result, protocol
from gan_enhance.evaluation.testsets import load_test_split
from gan_enhance.inference import Enhancer
from gan_enhance.tasks import Generate, Task
from gan_enhance.visual import image_grid

NOISE = Generate.classical_baseline
GRID_SIDE = 8


def noise_images(count: int, side: int, seed: int) -> np.ndarray:
    """The baseline: count x side x side x 3 uniform uint8 noise."""
    return np.random.default_rng(seed).integers(0, 256, size=(count, side, side, 3), dtype=np.uint8)


def sample_grid(samples: np.ndarray) -> Image.Image:
    """Up to 8 x 8 samples, each shown at least 64 pixels wide."""
    shown = samples[: GRID_SIDE**2]
    zoom = max(1, 64 // shown.shape[1])
    cells = [np.kron(image, np.ones((zoom, zoom, 1), dtype=np.uint8)) for image in shown]
    return image_grid([cells[i : i + GRID_SIDE] for i in range(0, len(cells), GRID_SIDE)], min_cell=64)


def evaluate_generation(params: Params, task: Task, enhancer: Enhancer, base: Path) -> Evaluation:
    ev = params.evaluate
    test_set = load_test_split(params, task, base)
    count = ev.fid_crops
    picks = np.random.default_rng(ev.seed).choice(len(test_set), size=count, replace=len(test_set) < count)
    real = inception_features([test_set[i].target for i in picks])
    samples = enhancer.sample(count, seed=ev.seed)
    side = samples.shape[1]
    methods = {MODEL: samples, NOISE: noise_images(count, side, ev.seed)}
    features = {method: inception_features(list(images)) for method, images in methods.items()}
    evidence = Evidence([t.sha256 for t in test_set], {}, real, features, picks[:, None])
    protocol_block = {**protocol(params, task, test_set), "samples": count, "image_size": side}
    result = assemble_result(params, evidence, enhancer.card, protocol_block)
    return Evaluation(result, [], sample_grid(samples), evidence)
