"""A task is data: how inputs are made from targets, which classical baselines apply, how metrics are taken.

The trainer, the evaluation stage and the Enhancer ask the task; none of them branches on its name.
New tasks register a builder in TASKS. A task's options are its own params section (config.py), whose `kind`
(gan_enhance.kinds) says which trainer, evaluation and inference class fit the task (paired: input made from its
target; masked: the same with a hole mask; unpaired: two domains; unconditional: noise in, image out) and so what
the generator takes (`inputs`: image, image+mask or latent noise), which the model card carries to the Enhancer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from PIL import Image

from gan_enhance.config import (
    DenoiseParams,
    GenerateParams,
    InpaintParams,
    SRParams,
    TaskName,
    TaskOptions,
    TaskParams,
    TranslateParams,
)
from gan_enhance.data.degradations import add_gaussian_noise, bicubic_down, bicubic_up, crop_to_multiple
from gan_enhance.data.masks import random_mask
from gan_enhance.kinds import KINDS, InputsName, KindName

# (input float32 HxWx3 in [0,1], hole mask HxW bool or None) -> output float32, target size
Baseline = Callable[[np.ndarray, np.ndarray | None], np.ndarray]
# (output, target) -> scalar: the trainer's pixel loss (train.pixel_loss)
PixelLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MetricSpace = Literal["rgb", "y"]
IN_CHANNELS: dict[InputsName, int] = {"image": 3, "image+mask": 4, "latent": 3}


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def to_tensor(batch: np.ndarray) -> torch.Tensor:
    """B x H x W x 3 uint8 or float -> B x 3 x H x W float32 in [0, 1] scale."""
    tensor = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
    return tensor.float().div_(255.0) if batch.dtype == np.uint8 else tensor.float()


@dataclass(frozen=True)
class Task:
    """Base: subclasses fill in the degradation and the baselines."""

    name: TaskName
    options: TaskOptions
    scale: int = 1
    metric_space: MetricSpace = "rgb"  # "y": BT.601 luma as SR papers report; "rgb": all channels
    crop_border: int = 0
    # the method of the evaluation whose primary metric a model must beat before it may become champion
    classical_baseline: ClassVar[str]

    @property
    def kind(self) -> KindName:
        return self.options.kind

    @property
    def inputs(self) -> InputsName:
        return KINDS[self.kind].inputs

    @property
    def in_channels(self) -> int:
        return IN_CHANNELS[self.inputs]

    @property
    def variant(self) -> str:
        """The task with the settings that make its models different products (sr-x4, translate-b2a, ...)."""
        return self.name

    @property
    def source_b(self) -> str | None:
        """Domain B's source for two-domain tasks; None otherwise."""
        return None

    def min_side(self, patch_size: int) -> int:
        """Smallest usable image side (the prepare stage rejects smaller images)."""
        return patch_size

    def degrade(self, target: np.ndarray, rng: np.random.Generator, training: bool) -> np.ndarray:
        """uint8 HxWx3 target -> model input (uint8 or float32 HxWx3)."""
        raise NotImplementedError

    def baselines(self) -> dict[str, Baseline]:
        raise NotImplementedError

    def prepare_target(self, target: np.ndarray) -> np.ndarray:
        return crop_to_multiple(target, self.scale)

    def training_pair(self, patches: np.ndarray, rngs: list[np.random.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        """B x P x P x 3 uint8 target patches -> (input, target) float tensors in [0, 1] scale; patch i is degraded
        with generator i."""
        inputs = np.stack([self.degrade(p, rng, training=True) for p, rng in zip(patches, rngs, strict=True)])
        return to_tensor(inputs), to_tensor(patches)

    def eval_input(self, target: np.ndarray, seed: int) -> np.ndarray:
        """Deterministic model input (float32 HxWx3, [0,1] scale) for a prepared target."""
        inp = self.degrade(target, np.random.default_rng(seed), training=False)
        return inp.astype(np.float32) / 255.0 if inp.dtype == np.uint8 else inp

    def eval_mask(self, target: np.ndarray, seed: int) -> np.ndarray | None:
        """Deterministic hole mask (bool HxW) for tasks whose model takes one."""
        return None

    def pixel_loss(
        self, loss: PixelLoss, output: torch.Tensor, target: torch.Tensor, inp: torch.Tensor
    ) -> torch.Tensor:
        """The paired trainer's pixel loss `loss`, as the task applies it; `inp` is the model input (tasks may
        weight regions by it)."""
        return loss(output, target)

    def card_params(self) -> dict[str, Any]:
        return {"name": self.name, "scale": self.scale, **self.options.model_dump(mode="json")}

    def card_fields(self) -> dict[str, Any]:
        """Model card fields that a model must carry to fit this task (the evaluation checks them)."""
        return {"task": self.name, "scale": self.scale, "inputs": self.inputs, "in_channels": self.in_channels}


@dataclass(frozen=True)
class SuperResolution(Task):
    options: SRParams
    metric_space: MetricSpace = "y"
    classical_baseline: ClassVar[str] = "bicubic"

    @property
    def variant(self) -> str:
        return f"sr-x{self.scale}"

    def degrade(self, target: np.ndarray, rng: np.random.Generator, training: bool) -> np.ndarray:
        return bicubic_down(target, self.scale)

    def baselines(self) -> dict[str, Baseline]:
        return {"bicubic": lambda x, mask: bicubic_up(_to_u8(x), self.scale).astype(np.float32) / 255.0}


@dataclass(frozen=True)
class Denoise(Task):
    options: DenoiseParams
    classical_baseline: ClassVar[str] = "nl_means"

    def _sigma(self, rng: np.random.Generator, training: bool) -> float:
        if not training:
            return float(self.options.eval_sigma)
        sigma = self.options.sigma
        return float(sigma) if isinstance(sigma, int | float) else float(rng.uniform(*sigma))

    def degrade(self, target: np.ndarray, rng: np.random.Generator, training: bool) -> np.ndarray:
        sigma = self._sigma(rng, training)
        noise = self.options.noise
        if noise == "mixed":
            noise = "gray" if training and rng.random() < 0.5 else "rgb"
        if noise == "gray":  # one noise plane, added to every channel
            plane = add_gaussian_noise(np.zeros((*target.shape[:2], 1), np.uint8), sigma, rng)
            return target.astype(np.float32) / 255.0 + plane
        return add_gaussian_noise(target, sigma, rng)

    def baselines(self) -> dict[str, Baseline]:
        from skimage.restoration import denoise_nl_means

        sigma = float(self.options.eval_sigma) / 255.0

        def nl_means(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
            out = denoise_nl_means(
                x, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True, channel_axis=-1
            )
            return out.astype(np.float32)

        return {"noisy_input": lambda x, mask: x, "nl_means": nl_means}


@dataclass(frozen=True)
class Inpaint(Task):
    """Fill holes: the input is the image with holes plus the mask channel (1 = hole)."""

    options: InpaintParams
    classical_baseline: ClassVar[str] = "biharmonic"

    def _mask(self, target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return random_mask(target.shape[0], target.shape[1], rng, tuple(self.options.hole_ratio))

    def degrade(self, target: np.ndarray, rng: np.random.Generator, training: bool) -> np.ndarray:
        """float32 HxWx4: the image with holes painted white, and the mask."""
        return _with_holes(target, self._mask(target, rng), with_mask=True)

    def eval_input(self, target: np.ndarray, seed: int) -> np.ndarray:
        return _with_holes(target, self.eval_mask(target, seed), with_mask=False)

    def eval_mask(self, target: np.ndarray, seed: int) -> np.ndarray:
        return self._mask(target, np.random.default_rng(seed))

    def pixel_loss(
        self, loss: PixelLoss, output: torch.Tensor, target: torch.Tensor, inp: torch.Tensor
    ) -> torch.Tensor:
        """Loss on the valid region plus hole_weight x the loss inside the holes (Liu et al. 2018)."""
        hole = inp[:, 3:4]
        valid = loss(output * (1 - hole), target * (1 - hole))
        return valid + self.options.hole_weight * loss(output * hole, target * hole)

    def baselines(self) -> dict[str, Baseline]:
        """scikit-image's biharmonic inpainting (the baseline gains are taken against), and the mean of the
        harmonic and biharmonic pyramid fills: the gated U-Net's output before training, so the model's gain
        over it is what training added."""
        from skimage.restoration import inpaint_biharmonic

        from gan_enhance.models import inpainting

        def biharmonic(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
            return inpaint_biharmonic(x, mask, channel_axis=-1).astype(np.float32)

        def fills_mean(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
            image = to_tensor(x[None])
            valid = torch.from_numpy(~mask).float()[None, None]
            with torch.no_grad():
                return inpainting.fills_mean(image * valid, valid)[0].permute(1, 2, 0).numpy()

        return {"biharmonic": biharmonic, "fills_mean": fills_mean}


def _with_holes(target: np.ndarray, mask: np.ndarray, with_mask: bool) -> np.ndarray:
    image = target.astype(np.float32) / 255.0
    image[mask] = 1.0
    return np.concatenate([image, mask[..., None].astype(np.float32)], axis=2) if with_mask else image


@dataclass(frozen=True)
class Translate(Task):
    """Unpaired translation from domain A (data.source) to domain B (source_b), or back (direction b2a)."""

    options: TranslateParams
    classical_baseline: ClassVar[str] = "identity"

    @property
    def variant(self) -> str:
        return f"translate-{self.options.direction}"

    @property
    def source_b(self) -> str:
        return self.options.source_b

    def degrade(self, target: np.ndarray, rng: np.random.Generator, training: bool) -> np.ndarray:
        return target

    def baselines(self) -> dict[str, Baseline]:
        return {"identity": lambda x, mask: x}

    def card_fields(self) -> dict[str, Any]:
        return {**super().card_fields(), "direction": self.options.direction}


@dataclass(frozen=True)
class Generate(Task):
    """Unconditional generation: latent noise in, an image_size x image_size image out."""

    options: GenerateParams
    classical_baseline: ClassVar[str] = "noise"  # uniform noise images (evaluation/generation.py)

    @property
    def image_size(self) -> int:
        return self.options.image_size

    def min_side(self, patch_size: int) -> int:
        return self.image_size

    def degrade(self, target: np.ndarray, rng: np.random.Generator, training: bool) -> np.ndarray:
        """No input: a test image stands for itself (it is the reference the samples are compared with)."""
        return target

    def prepare_target(self, target: np.ndarray) -> np.ndarray:
        """Centre square, resized (antialiased bicubic) to image_size."""
        height, width = target.shape[:2]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        square = Image.fromarray(target[top : top + side, left : left + side])
        return np.asarray(square.resize((self.image_size, self.image_size), Image.BICUBIC))

    def card_fields(self) -> dict[str, Any]:
        return {**super().card_fields(), "image_size": self.image_size}


TASKS: dict[TaskName, Callable[[TaskParams], Task]] = {
    "sr": lambda p: SuperResolution("sr", p.sr, scale=p.sr.scale, crop_border=p.sr.scale),
    "denoise": lambda p: Denoise("denoise", p.denoise),
    "inpaint": lambda p: Inpaint("inpaint", p.inpaint),
    "translate": lambda p: Translate("translate", p.translate),
    "generate": lambda p: Generate("generate", p.generate),
}


def build_task(params: TaskParams) -> Task:
    """The task params.task names, with its own section as options."""
    return TASKS[params.name](params)


def task_from_card(card_task: dict[str, Any]) -> Task:
    """Rebuild a task from the dict a model card stores (see Task.card_params)."""
    values = dict(card_task)
    name = values.pop("name")
    scale = values.pop("scale", 1)
    section = {"sr": {"scale": scale}}.get(name, values)
    return build_task(TaskParams.model_validate({"name": name, name: section}))
