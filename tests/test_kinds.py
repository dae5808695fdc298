"""The task-kind registry: every kind resolves to its parts, every task has a kind, the inference loader picks the
class for the card, and train.* keys a kind's trainer does not read warn and stay out of its fingerprint."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from gan_enhance.config import ParamsError, TaskParams, load_params
from gan_enhance.data.prepare import prepare_stage
from gan_enhance.inference import Enhancer
from gan_enhance.inference.image import ImageEnhancer
from gan_enhance.inference.inpainting import InpaintingEnhancer
from gan_enhance.inference.sampling import Sampler
from gan_enhance.kinds import KINDS, inference_ref, load
from gan_enhance.models.artifact import ModelCard
from gan_enhance.tasks import TASKS, build_task
from gan_enhance.training.base import BaseTrainer
from gan_enhance.training.cyclegan import CycleGANTrainer

TRANSLATE = {
    "task.name": "translate",
    "model.generator": {"name": "cyclegan_resnet", "num_feat": 8, "num_blocks": 1},
    "model.discriminator": {"name": "patchgan", "num_feat": 8, "num_layers": 2},
    "train.patch_size": 32,
    "tracking.enabled": False,
}


def test_every_kind_names_a_trainer_an_evaluation_and_an_inference_class_for_its_inputs():
    for name, kind in KINDS.items():
        assert kind.name == name
        assert issubclass(kind.load_trainer(), BaseTrainer)
        assert callable(kind.load_evaluation())
        inference = kind.load_inference()
        assert issubclass(inference, Enhancer) and inference.inputs == kind.inputs
        assert load(inference_ref(kind.inputs)) is inference
        assert inference.apis and inference.input_example().dtype == inference.batch[0]
    with pytest.raises(ValueError, match="no inference class for models that take 'voxels'"):
        inference_ref("voxels")


def test_every_task_has_a_registered_kind():
    for name in TASKS:
        task = build_task(TaskParams(name=name))
        assert task.kind in KINDS and task.inputs == KINDS[task.kind].inputs
    assert {build_task(TaskParams(name=n)).kind for n in TASKS} == set(KINDS)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"model.generator": {"name": "srvgg", "num_feat": 8, "num_conv": 2}}, ImageEnhancer),
        (
            {"task.name": "inpaint", "model.generator": {"name": "gated_unet", "num_feat": 8, "depth": 2}},
            InpaintingEnhancer,
        ),
        (
            {"task.name": "generate", "model.generator": {"name": "dcgan", "num_feat": 8, "latent_dim": 16}},
            Sampler,
        ),
    ],
)
def test_the_loader_gives_the_class_that_fits_the_card(overrides: dict, expected: type, tmp_path: Path):
    params = load_params(None, overrides)
    task = build_task(params.task)
    card = ModelCard(
        arch=params.model.generator.name,
        arch_kwargs=params.model.generator.kwargs,
        **task.card_fields(),
        latent_dim=params.model.generator.kwargs.get("latent_dim"),
    )
    net = card.build_network()
    enhancer = Enhancer(net, card)
    assert type(enhancer) is expected
    assert enhancer.predict_batch(expected.input_example()).dtype == np.uint8
    other = Sampler if expected is not Sampler else ImageEnhancer
    with pytest.raises(ValueError, match=rf"runs models that take {other.inputs}, not {re.escape(card.inputs)}"):
        other(net, card)


def test_train_keys_a_trainer_does_not_read_warn_and_leave_its_fingerprint(tmp_path: Path, tiny_source: Path):
    base = {
        **TRANSLATE,
        "data.source": str(tiny_source),
        "data.prepared_dir": str(tmp_path / "p"),
        "data.min_side": 32,
        "data.split.test": 0.3,
    }
    plain = load_params(None, base)
    prepare_stage(plain)
    assert plain.unread_train_settings() == {}
    tuned = load_params(None, {**base, "train.gan_loss": "hinge", "train.warmup_steps": 5000, "train.steps": 10})
    assert tuned.unread_train_settings() == {"warmup_steps": 5000, "gan_loss": "hinge"}
    with pytest.raises(ParamsError, match=r"warmup_steps \(5000\) exceeds steps \(10\)"):
        load_params(None, {"train.warmup_steps": 5000, "train.steps": 10})  # the paired trainer reads it

    reference = CycleGANTrainer(load_params(None, {**base, "train.steps": 10}), tmp_path).fingerprint
    with pytest.warns(UserWarning, match=r"train.gan_loss='hinge' has no effect: the CycleGANTrainer"):
        ignored = CycleGANTrainer(tuned, tmp_path).fingerprint
    assert ignored == reference
    assert CycleGANTrainer(
        load_params(None, {**base, "train.steps": 10, "train.lr_g": 0.001}), tmp_path
    ).fingerprint != (reference)
