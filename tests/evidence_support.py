"""Synthetic evaluation evidence with a known answer: the reference crops' features are fixed, a method's crop
features are the reference plus an error of a chosen size (a bias and a seeded per-crop jitter: more error, higher
KID and FID), and its per-image PSNR/SSIM are a chosen mean plus a fixed per-image spread (so two methods differ by
exactly the chosen amount on every image)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from gan_enhance.config import Params
from gan_enhance.evaluation.evidence import EVIDENCE_FILE, Evidence
from gan_enhance.evaluation.report import METRICS_FILE, assemble_result
from gan_enhance.models.artifact import ModelCard

CROPS, DIM = 64, 32
SPREAD = np.array([0.3, -0.2, -0.1, 0.2, -0.2])  # per-image deviation from the mean PSNR (the first 3 sum to 0)


def reference_features(crops: int = CROPS, crop_seed: int = 0) -> np.ndarray:
    """Features of the reference crops; another crop seed stands for other crops of the same images."""
    return np.random.default_rng(crop_seed).gamma(2.0, 0.15, (crops, DIM)).astype(np.float32)


def noisy_features(noise: float, seed: int, crops: int = CROPS, crop_seed: int = 0) -> np.ndarray:
    """The reference crops' features plus an error of size `noise` (seeded): what a method with that much error
    would produce on the same crops."""
    rng = np.random.default_rng(1000 + seed)
    bias = noise * 0.1  # a systematic error: every feature off by the same amount, plus per-crop jitter
    jitter = rng.normal(0.0, 0.05 * noise, (crops, DIM))
    return (reference_features(crops, crop_seed) + bias + jitter).astype(np.float32)


def synthetic_evidence(
    noise: float,
    psnr: float,
    seed: int = 1,
    baseline: str = "bicubic",
    baseline_noise: float = 1.0,
    baseline_psnr: float = 29.0,
    images: int = 3,
    crops: int = CROPS,
    crop_seed: int = 0,
) -> Evidence:
    """Evidence of a model (crop features with error `noise`, mean PSNR `psnr`) and its baseline, on the same crops
    (`crop_seed` draws other crops of the same images)."""
    spread = SPREAD[:images]
    per_image = {
        "model": {"psnr": psnr + spread, "ssim": 0.8 + spread / 100},
        baseline: {"psnr": baseline_psnr + spread, "ssim": 0.75 + spread / 100},
    }
    features = {
        "model": noisy_features(noise, seed, crops, crop_seed),
        baseline: noisy_features(baseline_noise, 999, crops, crop_seed),
    }
    offset = np.full(crops, crop_seed)
    positions = np.stack([np.arange(crops) % images, offset, offset], axis=1).astype(np.int64)
    names = [f"image{i}" for i in range(images)]
    return Evidence(names, per_image, reference_features(crops, crop_seed), features, positions)


def write_evaluation(
    out: Path, params: Params, evidence: Evidence, card: ModelCard | dict[str, Any], protocol: dict[str, Any]
) -> dict[str, Any]:
    """metrics.json (computed from the evidence by the evaluation's own code) and evidence.npz into `out`."""
    if isinstance(card, dict):
        card = ModelCard(**{k: v for k, v in card.items() if k in ModelCard.__dataclass_fields__})
    result = assemble_result(params, evidence, card, protocol)
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS_FILE).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    evidence.save(out / EVIDENCE_FILE)
    return result
