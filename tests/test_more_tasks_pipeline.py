"""Inpainting, translation and generation end to end (prepare -> train -> evaluate -> register -> promote) on
short CPU runs with fixed seeds, each against its baseline; and exact resume for the CycleGAN and DCGAN trainers."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import yaml
from PIL import Image
from safetensors.torch import load_file

from gan_enhance.config import load_params
from gan_enhance.data.prepare import prepare_stage
from gan_enhance.evaluation.stage import evaluate
from gan_enhance.inference import Enhancer
from gan_enhance.lifecycle.promotion import promote
from gan_enhance.lifecycle.register import register
from gan_enhance.training.checkpoint import list_checkpoints
from gan_enhance.training.stage import train

from .conftest import photo_crops, tiny_params_tree

pytestmark = pytest.mark.slow

FAST_EVAL = {"evaluate.fid_crops": 16, "evaluate.fid_crop_size": 48}
INPAINT = {
    "task.name": "inpaint",
    "model.generator": {"name": "gated_unet", "num_feat": 12, "depth": 2},
    "train.patch_size": 48,
    "train.batch_size": 8,
    "train.steps": 300,
    "train.warmup_steps": 300,
    "train.lr_g": 0.002,
}
TRANSLATE = {
    "task.name": "translate",
    "model.generator": {"name": "cyclegan_resnet", "num_feat": 8, "num_blocks": 1},
    "data.split.test": 0.3,
    "train.patch_size": 32,
    "train.batch_size": 4,
    "train.steps": 600,
    "train.lr_g": 0.002,
    "train.lr_d": 0.001,
    "train.betas": [0.5, 0.999],
    # a short run: the identity loss held the generator at the identity for its first few hundred steps
    "task.translate.identity_weight": 0.0,
    "task.translate.cycle_weight": 5.0,
    "evaluate.fid_crops": 64,
    "evaluate.fid_crop_size": 32,
}
GENERATE = {
    "task.name": "generate",
    "data.source": "digits",
    "data.min_side": 8,
    "model.generator": {"name": "dcgan", "num_feat": 16, "latent_dim": 32},
    "model.discriminator": {"name": "dcgan", "num_feat": 16},
    "train.batch_size": 32,
    "train.steps": 400,
    "train.lr_g": 0.0005,
    "train.lr_d": 0.0005,
    "train.betas": [0.5, 0.999],
}
SHORT = {"train.log_every": 50, "train.sample_every": 100, "train.checkpoint_every": 100}


def _pipeline(overrides: dict) -> tuple[dict, dict]:
    """prepare -> train -> evaluate -> register in the current folder; (metrics.json, registration record)."""
    params = load_params("params.yaml", {**SHORT, **FAST_EVAL, **overrides})
    prepare_stage(params)
    train(params)
    metrics = evaluate(params)
    assert json.loads(Path("reports/eval/metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert Path("reports/eval/comparison.png").is_file() and Path("reports/eval/per_image.csv").is_file()
    registration = register(params)
    assert registration.status == "registered" and registration.version == "1"
    client = mlflow.MlflowClient(params.tracking.uri, registry_uri=params.tracking.uri)
    version = client.get_model_version(registration.model_name, "1")
    assert version.tags["task"] == params.task.name
    assert promote(params).verdict == "promoted"  # first champion; translation/generation have no PSNR guard
    return metrics, {"name": registration.model_name}


def test_inpainting_is_evaluated_inside_the_holes_against_biharmonic(tiny_project: Path):
    """End to end, with the hole metrics beside the classical baselines'. Training must not lose what the
    network starts from (the mean of its two classical fills). Not asserted: that the model beats biharmonic
    inside the holes; on this short run it does not (about 22.5 dB against 22.8, see docs/benchmarks.md)."""
    metrics, registered = _pipeline(INPAINT)
    model, baseline = metrics["model"], metrics["biharmonic"]
    assert model["psnr_hole"] > metrics["fills_mean"]["psnr_hole"] - 0.5, metrics
    assert {"psnr", "ssim", "psnr_hole", "ssim_hole", "fid", "kid"} <= set(model)
    assert metrics["gain"]["psnr_hole_vs_biharmonic"] == pytest.approx(model["psnr_hole"] - baseline["psnr_hole"])
    assert model["psnr"] > model["psnr_hole"] + 3  # outside the holes the image is returned as given
    assert registered["name"] == "gan-enhance-inpaint"
    per_image = Path("reports/eval/per_image.csv").read_text().splitlines()
    assert per_image[0] == "image,method,psnr,ssim,psnr_hole,ssim_hole"


@pytest.fixture
def two_domain_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project whose source deals two crops of each photo to the two warm_film domains (sorted names alternate),
    so both domains show the same photos and only the grade tells them apart, as in the embedded default; with
    tiny_source's crops each domain would hold other photos, and a discriminator of 12 crops learns the photos."""
    source = tmp_path / "source"
    source.mkdir()
    for i, crop in enumerate(photo_crops(24, pairs=True)):
        Image.fromarray(crop).save(source / f"photo_{i:02d}.png")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params_tree(source, tmp_path)))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_translation_beats_identity_in_fid_to_the_target_domain(two_domain_project: Path):
    metrics, registered = _pipeline(TRANSLATE)
    assert set(metrics) == {"model", "identity", "gain", "protocol"}
    assert metrics["protocol"]["direction"] == "a2b" and metrics["protocol"]["reference_images"] >= 1
    assert metrics["model"]["fid"] < metrics["identity"]["fid"] - 10, metrics
    assert "psnr" not in metrics["model"]
    assert registered["name"].startswith("gan-enhance-translate")


def test_generation_beats_noise_in_fid_and_samples_by_seed(tiny_project: Path):
    metrics, registered = _pipeline({**GENERATE, "evaluate.fid_crops": 64})
    assert set(metrics) == {"model", "noise", "gain", "protocol"} and metrics["protocol"]["samples"] == 64
    # 64 samples and 400 steps: at 16 samples / 200 steps the gap to noise varied from 40 to 140 with the thread count
    assert metrics["model"]["fid_high"] < metrics["noise"]["fid_low"], metrics
    enhancer = Enhancer.from_dir("models/generator", device="cpu")
    assert enhancer.card.latent_dim == 32 and enhancer.sample(4, seed=1).shape == (4, 32, 32, 3)
    assert registered["name"] == "gan-enhance-generate"


@pytest.mark.parametrize("overrides", [TRANSLATE, GENERATE], ids=["cyclegan", "dcgan"])
def test_trainer_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path: Path, tiny_source: Path, overrides: dict):
    """A run continued from a mid-run checkpoint ends with the same weights (pools, EMA and RNG included)."""
    tree = tiny_params_tree(tiny_source, tmp_path)
    tree["tracking"]["enabled"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree))
    steps = {"train.steps": 12, "train.checkpoint_every": 4, "train.keep_checkpoints": 5, "train.threads": 1}
    params = load_params(tmp_path / "params.yaml", {**overrides, "data.source": str(tiny_source), **steps})
    prepare_stage(params, base=tmp_path)
    train(params, base=tmp_path)
    weights = tmp_path / params.train.out_dir / "generator.safetensors"
    straight = load_file(str(weights))
    for later in list_checkpoints(tmp_path / params.train.checkpoint_dir)[1:]:
        later.unlink()
    assert train(params, base=tmp_path).resumed_from == 4
    resumed = load_file(str(weights))
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert (straight[key] == resumed[key]).all(), f"{key} differs after resume"
