"""Task kinds: what differs between paired, masked, unpaired and unconditional tasks, in one registry.

A kind says which trainer trains its tasks, which evaluation measures them, which inference class runs their
generators (and with it the MLflow signature and the serving APIs, which the class declares), and which
`train.*` keys its trainer does not read. Nothing else in the package branches on a kind's name: it asks
`KINDS[kind]`.

Entries name their classes as "module:attribute" and load them on first use, so this module imports nothing of
the package: the trainers, evaluations and inference classes may import the tasks, and the tasks this registry,
without a cycle (and serving never imports training code).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

KindName = Literal["paired", "masked", "unpaired", "unconditional"]
InputsName = Literal["image", "image+mask", "latent"]

# train.* keys that only the paired trainer reads (the adversarial phase and its losses, the pixel loss)
PAIRED_ONLY = (
    "warmup_steps",
    "pixel_loss",
    "pixel_lowpass",
    "gan_loss",
    "weights",
    "r1_gamma",
    "instance_noise",
    "conditional_discriminator",
    "perceptual",
    "adversarial_mask",
    "texture_mask",
    "init_from",
    "init_discriminator",
)

# train.* keys that only the DCGAN trainer reads
UNCONDITIONAL_ONLY = ("real_label",)


@cache
def load(ref: str) -> Any:
    """The object a "package.module:attribute" reference names."""
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class Kind:
    """One kind of task and the parts that train, evaluate and run its generators."""

    name: KindName
    inputs: InputsName  # what the generator takes; the model card carries it to the inference loader
    trainer: str  # BaseTrainer subclass
    evaluation: str  # (params, task, enhancer, base) -> (metrics.json content, per-image rows, grid)
    inference: str  # Enhancer subclass: the forward pass, uint8 batches, MLflow signature, serving APIs
    unread_train_keys: tuple[str, ...] = ()  # train.* keys its trainer ignores (a changed one only warns)
    evaluates_folders: bool = False  # whether `evaluate_folder` can score it on a folder of images (benchmarks)

    def load_trainer(self) -> Any:
        return load(self.trainer)

    def load_evaluation(self) -> Any:
        return load(self.evaluation)

    def load_inference(self) -> Any:
        return load(self.inference)


KINDS: dict[KindName, Kind] = {
    "paired": Kind(
        "paired",
        inputs="image",
        trainer="gan_enhance.training.paired:PairedTrainer",
        evaluation="gan_enhance.evaluation.paired:evaluate_paired",
        inference="gan_enhance.inference.image:ImageEnhancer",
        unread_train_keys=UNCONDITIONAL_ONLY,
        evaluates_folders=True,
    ),
    "masked": Kind(
        "masked",
        inputs="image+mask",
        trainer="gan_enhance.training.paired:PairedTrainer",
        evaluation="gan_enhance.evaluation.paired:evaluate_paired",
        inference="gan_enhance.inference.inpainting:InpaintingEnhancer",
        unread_train_keys=UNCONDITIONAL_ONLY,
        evaluates_folders=True,
    ),
    "unpaired": Kind(
        "unpaired",
        inputs="image",
        trainer="gan_enhance.training.cyclegan:CycleGANTrainer",
        evaluation="gan_enhance.evaluation.translation:evaluate_translation",
        inference="gan_enhance.inference.image:ImageEnhancer",
        unread_train_keys=(*PAIRED_ONLY, *UNCONDITIONAL_ONLY),
    ),
    "unconditional": Kind(
        "unconditional",
        inputs="latent",
        trainer="gan_enhance.training.dcgan:DCGANTrainer",
        evaluation="gan_enhance.evaluation.generation:evaluate_generation",
        inference="gan_enhance.inference.sampling:Sampler",
        unread_train_keys=(*PAIRED_ONLY, "patch_size"),
    ),
}


def inference_ref(inputs: str) -> str:
    """The inference class for generators that take `inputs` (a model card's field); kinds that share inputs
    share the class."""
    refs = {kind.inference for kind in KINDS.values() if kind.inputs == inputs}
    if len(refs) != 1:
        raise ValueError(f"no inference class for models that take '{inputs}'; known: {sorted(_all_inputs())}")
    return refs.pop()


def _all_inputs() -> set[str]:
    return {kind.inputs for kind in KINDS.values()}
