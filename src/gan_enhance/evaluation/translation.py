"""Evaluation of unpaired translation: FID/KID of the translated test images of the source domain to the test
images of the target domain (other photos: there are no pairs), against the identity baseline (the source images
untouched). Crops are seeded, spread over the images, as in the paired evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from gan_enhance.config import Params
from gan_enhance.data.prepare import DOMAIN_B_DIR
from gan_enhance.evaluation.evidence import Evidence
from gan_enhance.evaluation.metrics import inception_features
from gan_enhance.evaluation.report import MODEL, Evaluation, assemble_result, protocol
from gan_enhance.evaluation.testsets import TestImage, crop_positions, crops, load_test_split, test_set_hash
from gan_enhance.inference import Enhancer
from gan_enhance.tasks import Task
from gan_enhance.visual import image_grid, textured_crop, to_u8


def _window(image: np.ndarray, side: int) -> tuple[slice, slice]:
    """The side x side window of `image` with the most detail."""
    side = min(side, *image.shape[:2])
    top, left = textured_crop(image, side)
    return slice(top, top + side), slice(left, left + side)


def translation_grid(
    sources: list[TestImage], methods: dict[str, list[np.ndarray]], references: list[TestImage], count: int
) -> Image.Image:
    """Rows: the most detailed window of a source image, each method's output there, and a target-domain example
    (another photo)."""
    rows = []
    for k, (image, *outputs) in enumerate(list(zip(sources, *methods.values(), strict=True))[:count]):
        reference = references[k % len(references)].target
        at = _window(image.target, 128)
        rows.append([cell[at] for cell in (image.target, *outputs)] + [reference[_window(reference, 128)]])
    return image_grid(rows, labels=("input", *methods.keys(), "target domain"))


def evaluate_translation(params: Params, task: Task, enhancer: Enhancer, base: Path) -> Evaluation:
    ev = params.evaluate
    domains = {"a": load_test_split(params, task, base), "b": load_test_split(params, task, base, DOMAIN_B_DIR)}
    source, target = ("a", "b") if task.options.direction == "a2b" else ("b", "a")
    inputs, references = domains[source], domains[target]
    methods: dict[str, list[np.ndarray]] = {MODEL: []}
    baselines = task.baselines()
    methods.update({name: [] for name in baselines})
    for image in tqdm(inputs, desc="translate test set", unit="img", disable=None):
        methods[MODEL].append(to_u8(np.clip(enhancer.enhance_array(image.input), 0, 1)))
        for name, baseline in baselines.items():
            methods[name].append(to_u8(np.clip(baseline(image.input, image.mask), 0, 1)))

    size = ev.fid_crop_size
    real_at = crop_positions([t.target.shape[:2] for t in references], ev.fid_crops, size, ev.seed)
    fake_at = crop_positions([t.target.shape[:2] for t in inputs], ev.fid_crops, size, ev.seed + 1)
    real = inception_features(crops([t.target for t in references], real_at, size))
    features = {
        method: inception_features(crops(outputs, fake_at, size))
        for method, outputs in tqdm(methods.items(), desc="Inception features", unit="method", disable=None)
    }
    evidence = Evidence([t.sha256 for t in inputs], {}, real, features, np.array(fake_at))
    protocol_block = {
        **protocol(params, task, inputs),
        "direction": task.options.direction,
        "reference_set_hash": test_set_hash(references),
        "reference_images": len(references),
    }
    grid = translation_grid(inputs, methods, references, ev.grid_images)
    return Evaluation(assemble_result(params, evidence, enhancer.card, protocol_block), [], grid, evidence)
