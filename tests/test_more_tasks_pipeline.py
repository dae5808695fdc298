"""Exact resume for the CycleGAN and DCGAN trainers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from gan_enhance.config import load_params
from gan_enhance.data.prepare import prepare_stage
from gan_enhance.training.checkpoint import list_checkpoints
from gan_enhance.training.trainer import train

from .conftest import tiny_params_tree

pytestmark = pytest.mark.slow

TRANSLATE = {
    "task.name": "translate",
    "model.generator": {"name": "cyclegan_resnet", "num_feat": 8, "num_blocks": 1},
    "data.split.test": 0.3,
    "train.patch_size": 32,
    "train.batch_size": 4,
    "train.steps": 150,
    "train.lr_g": 0.002,
    "train.lr_d": 0.001,
    "train.betas": [0.5, 0.999],
}
GENERATE = {
    "task.name": "generate",
    "data.source": "digits",
    "data.min_side": 8,
    "model.generator": {"name": "dcgan", "num_feat": 16, "latent_dim": 32},
    "model.discriminator": {"name": "dcgan", "num_feat": 16},
    "train.batch_size": 32,
    "train.steps": 200,
    "train.lr_g": 0.0005,
    "train.lr_d": 0.0005,
    "train.betas": [0.5, 0.999],
}


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
