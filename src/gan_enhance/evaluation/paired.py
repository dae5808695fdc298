"""Evaluation of paired (and masked) tasks: the Enhancer and the task's classical baselines over a test set,
the same metrics for each: per-image PSNR/SSIM (inside the holes too, for inpainting) and FID/KID on seeded crops,
with a comparison grid."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from gan_enhance.config import Params
from gan_enhance.evaluation.evidence import Evidence
from gan_enhance.evaluation.metrics import hole_psnr_ssim, inception_features, psnr_ssim
from gan_enhance.evaluation.report import MODEL, Evaluation, assemble_result, protocol, write_report
from gan_enhance.evaluation.testsets import TestImage, crop_positions, crops, load_test_split
from gan_enhance.inference import Enhancer
from gan_enhance.metric_facts import IMAGE_METRICS
from gan_enhance.models.artifact import twin_dirs
from gan_enhance.tasks import Task
from gan_enhance.visual import image_grid, textured_crop, to_u8


def measure_outputs(
    params: Params, task: Task, test_set: list[TestImage], methods: dict[str, list[np.ndarray]]
) -> tuple[Evidence, list[dict[str, Any]]]:
    """Each method's uint8 outputs measured: per-image PSNR/SSIM (inside the holes too) and the Inception features
    of seeded crops (the same crops for every method and the targets); returns the evidence and per-image rows."""
    ev = params.evaluate
    rows: list[dict[str, Any]] = []
    per_image: dict[str, dict[str, np.ndarray]] = {}
    for method, outputs in methods.items():
        mine = []
        for image, output in zip(test_set, outputs, strict=True):
            psnr, ssim = psnr_ssim(output, image.target, task.metric_space, task.crop_border)
            row = {"image": image.name, "method": method, "psnr": psnr, "ssim": ssim}
            if image.mask is not None:
                row["psnr_hole"], row["ssim_hole"] = hole_psnr_ssim(output, image.target, image.mask)
            mine.append(row)
        rows.extend(mine)
        per_image[method] = {key: np.array([r[key] for r in mine]) for key in mine[0] if key in IMAGE_METRICS}
    size = ev.fid_crop_size
    positions = crop_positions([t.target.shape[:2] for t in test_set], ev.fid_crops, size, ev.seed)
    reference = inception_features(crops([t.target for t in test_set], positions, size))
    features = {
        method: inception_features(crops(outputs, positions, size))
        for method, outputs in tqdm(methods.items(), desc="Inception features", unit="method", disable=None)
    }
    evidence = Evidence([t.sha256 for t in test_set], per_image, reference, features, np.array(positions))
    return evidence, rows


def comparison_grid(
    test_set: list[TestImage],
    methods: dict[str, list[np.ndarray]],
    count: int,
    rows: Sequence[dict[str, Any]] = (),
    size: int = 128,
) -> Image.Image:
    """The first `count` test images, one row each: the input, every method's output and the target, cropped to the
    size x size window with the most detail (for inpainting, the most detail inside the holes: where a fill has to
    invent texture or continue structure); under each cell, the image's name or the method's PSNR on the whole
    image (inside the holes, for inpainting) from the per-image `rows`."""
    scores = {(r["image"], r["method"]): r.get("psnr_hole", r["psnr"]) for r in rows}
    grid_rows, captions = [], []
    for image, *outputs in list(zip(test_set, *methods.values(), strict=True))[:count]:
        h, w = image.target.shape[:2]
        side = min(size, h, w)
        top, left = textured_crop(image.target, side, within=image.mask)
        scale = h // image.input.shape[0]
        shown_input = np.asarray(
            Image.fromarray(to_u8(np.clip(image.input, 0, 1))).resize(
                (image.input.shape[1] * scale, image.input.shape[0] * scale), Image.NEAREST
            )
        )
        cells = [shown_input, *outputs, image.target]
        grid_rows.append([c[top : top + side, left : left + side] for c in cells])
        psnr = [scores.get((image.name, method)) for method in methods]
        captions.append([image.name, *(f"{p:.2f} dB" if p is not None else "" for p in psnr), ""])
    return image_grid(grid_rows, labels=("input", *methods.keys(), "target"), captions=captions)


def load_twins(model_dir: Path, enhancer: Enhancer) -> dict[str, Enhancer]:
    """The twins exported inside a model folder (its pixel-loss-only state: `pixel_only`), loaded like the model."""
    return {
        name: Enhancer.from_dir(folder, str(enhancer.device), tile=enhancer.tile, tile_pad=enhancer.tile_pad)
        for name, folder in twin_dirs(model_dir).items()
    }


def method_outputs(
    task: Task, enhancer: Enhancer, test_set: list[TestImage], twins: Mapping[str, Enhancer] | None = None
) -> dict[str, list[np.ndarray]]:
    """The uint8 output for every test image of the model, of its twins (baselines too) and of each classical
    baseline."""
    twins = twins or {}
    networks = {MODEL: enhancer, **twins}
    baselines = task.baselines()
    methods: dict[str, list[np.ndarray]] = {name: [] for name in [*networks, *baselines]}
    for image in tqdm(test_set, desc="enhance test set", unit="img", disable=None):
        for name, network in networks.items():
            methods[name].append(to_u8(np.clip(network.enhance_array(image.input, mask=image.mask), 0, 1)))
        for name, baseline in baselines.items():
            methods[name].append(to_u8(np.clip(baseline(image.input, image.mask), 0, 1)))
    return methods


def evaluation_evidence(params: Params, task: Task, enhancer: Enhancer, test_set: list[TestImage]) -> Evidence:
    """The evidence alone (per-image values, crop features) of an evaluation on `test_set`."""
    return measure_outputs(params, task, test_set, method_outputs(task, enhancer, test_set))[0]


def run_evaluation(
    params: Params,
    task: Task,
    enhancer: Enhancer,
    test_set: list[TestImage],
    twins: Mapping[str, Enhancer] | None = None,
) -> Evaluation:
    """Enhancer, its twins and the classical baselines over a test set: metrics.json content with intervals,
    per-image rows, evidence and the comparison grid."""
    methods = method_outputs(task, enhancer, test_set, twins)
    evidence, rows = measure_outputs(params, task, test_set, methods)
    result = assemble_result(params, evidence, enhancer.card, protocol(params, task, test_set))
    grid = comparison_grid(test_set, methods, params.evaluate.grid_images, rows)
    return Evaluation(result, rows, grid, evidence)


def evaluate_test_set(
    params: Params,
    task: Task,
    enhancer: Enhancer,
    test_set: list[TestImage],
    out: Path,
    twins: Mapping[str, Enhancer] | None = None,
) -> Evaluation:
    """Evaluate on a test set and write metrics.json, evidence.npz, per_image.csv and comparison.png into `out`."""
    evaluation = run_evaluation(params, task, enhancer, test_set, twins)
    write_report(out, evaluation)
    return evaluation


def evaluate_paired(params: Params, task: Task, enhancer: Enhancer, base: Path) -> Evaluation:
    """The evaluate stage's evaluation for paired and masked kinds: the prepared test split, with the model's twins."""
    twins = load_twins(base / params.train.out_dir, enhancer)
    return run_evaluation(params, task, enhancer, load_test_split(params, task, base), twins)
