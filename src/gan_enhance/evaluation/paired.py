"""Evaluation of paired (and masked) tasks: the Enhancer and the task's classical baselines over a test set,
the same metrics for each: per-image PSNR/SSIM (inside the holes too, for inpainting) and FID/KID on seeded crops,
with a comparison grid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from gan_enhance.config import Params
from gan_enhance.evaluation.metrics import fid_kid, hole_psnr_ssim, inception_features, psnr_ssim
from gan_enhance.evaluation.report import MODEL, assemble_result, protocol, write_report
from gan_enhance.evaluation.testsets import TestImage, crop_positions, crops, load_test_split
from gan_enhance.inference import Enhancer
from gan_enhance.tasks import Task
from gan_enhance.visual import image_grid, textured_crop, to_u8


def evaluate_outputs(
    params: Params, task: Task, test_set: list[TestImage], methods: dict[str, list[np.ndarray]]
) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """Metrics for each method's uint8 outputs: per-image PSNR/SSIM and FID/KID on seeded crops."""
    ev = params.evaluate
    rows: list[dict[str, Any]] = []
    for method, outputs in methods.items():
        for image, output in zip(test_set, outputs, strict=True):
            psnr, ssim = psnr_ssim(output, image.target, task.metric_space, task.crop_border)
            row = {"image": image.name, "method": method, "psnr": psnr, "ssim": ssim}
            if image.mask is not None:
                row["psnr_hole"], row["ssim_hole"] = hole_psnr_ssim(output, image.target, image.mask)
            rows.append(row)
    size = ev.fid_crop_size
    positions = crop_positions([t.target.shape[:2] for t in test_set], ev.fid_crops, size, ev.seed)
    real = inception_features(crops([t.target for t in test_set], positions, size))
    summary: dict[str, dict[str, float]] = {}
    for method, outputs in tqdm(methods.items(), desc="FID/KID", unit="method", disable=None):
        mine = [r for r in rows if r["method"] == method]
        summary[method] = {
            **{key: float(np.mean([r[key] for r in mine])) for key in mine[0] if key not in ("image", "method")},
            **fid_kid(real, inception_features(crops(outputs, positions, size)), ev.kid_subset_size, ev.seed),
        }
    return summary, rows


def comparison_grid(
    test_set: list[TestImage],
    methods: dict[str, list[np.ndarray]],
    count: int,
    rows: Sequence[dict[str, Any]] = (),
    size: int = 128,
) -> Image.Image:
    """The first `count` test images, one row each: the input, every method's output and the target, cropped to the
    size x size window with the most detail; under each cell, the image's name or the method's PSNR on the whole
    image (inside the holes, for inpainting) from the per-image `rows`."""
    scores = {(r["image"], r["method"]): r.get("psnr_hole", r["psnr"]) for r in rows}
    grid_rows, captions = [], []
    for image, *outputs in list(zip(test_set, *methods.values(), strict=True))[:count]:
        h, w = image.target.shape[:2]
        side = min(size, h, w)
        top, left = textured_crop(image.target, side)
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


def run_evaluation(
    params: Params, task: Task, enhancer: Enhancer, test_set: list[TestImage]
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, list[np.ndarray]]]:
    """Enhancer and baselines over a test set -> (metrics.json content, per-image rows, outputs by method)."""
    methods: dict[str, list[np.ndarray]] = {MODEL: []}
    baselines = task.baselines()
    methods.update({name: [] for name in baselines})
    for image in tqdm(test_set, desc="enhance test set", unit="img", disable=None):
        methods[MODEL].append(to_u8(np.clip(enhancer.enhance_array(image.input, mask=image.mask), 0, 1)))
        for name, baseline in baselines.items():
            methods[name].append(to_u8(np.clip(baseline(image.input, image.mask), 0, 1)))
    summary, rows = evaluate_outputs(params, task, test_set, methods)
    return assemble_result(summary, enhancer.card, protocol(params, task, test_set)), rows, methods


def evaluate_test_set(
    params: Params, task: Task, enhancer: Enhancer, test_set: list[TestImage], out: Path
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Evaluate on a test set and write metrics.json, per_image.csv and comparison.png into `out`; returns
    (metrics.json content, per-image rows)."""
    result, rows, methods = run_evaluation(params, task, enhancer, test_set)
    write_report(out, result, rows, comparison_grid(test_set, methods, params.evaluate.grid_images, rows))
    return result, rows


def evaluate_paired(
    params: Params, task: Task, enhancer: Enhancer, base: Path
) -> tuple[dict[str, Any], list[dict[str, Any]], Image.Image]:
    """The evaluate stage's evaluation for paired and masked kinds: the prepared test split."""
    test_set = load_test_split(params, task, base)
    result, rows, methods = run_evaluation(params, task, enhancer, test_set)
    return result, rows, comparison_grid(test_set, methods, params.evaluate.grid_images, rows)
