"""A task is data: how inputs are made from targets, which classical baselines apply, how metrics are taken.

The trainer, the evaluation stage and the Enhancer ask the task; none of them branches on its name.
New tasks register a builder in TASKS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gan_enhance.config import TaskParams
from gan_enhance.data.degradations import add_gaussian_noise, bicubic_down, bicubic_up, crop_to_multiple

Baseline = Callable[[np.ndarray], np.ndarray]  # input float32 HxWx3 in [0,1] -> output float32, target size


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def _to_tensor(batch: np.ndarray) -> torch.Tensor:
    """B x H x W x 3 uint8 or float -> B x 3 x H x W float32 in [0, 1] scale."""
    tensor = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
    return tensor.float().div_(255.0) if batch.dtype == np.uint8 else tensor.float()


@dataclass(frozen=True)
class Task:
    """Base: subclasses fill in the degradation and the baselines."""

    name: str
    scale: int = 1
    metric_space: str = "rgb"  # "y": BT.601 luma as SR papers report; "rgb": all channels
    crop_border: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def degrade(self, target: np.ndarray, rng: np.random.Generator, training: bool) -> np.ndarray:
        """uint8 HxWx3 target -> model input (uint8 or float32 HxWx3)."""
        raise NotImplementedError

    def baselines(self) -> dict[str, Baseline]:
        raise NotImplementedError

    def prepare_target(self, target: np.ndarray) -> np.ndarray:
        return crop_to_multiple(target, self.scale)

    def training_pair(self, patches: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """B x P x P x 3 uint8 target patches -> (input, target) float tensors in [0, 1] scale."""
        inputs = np.stack([self.degrade(p, rng, training=True) for p in patches])
        return _to_tensor(inputs), _to_tensor(patches)

    def eval_input(self, target: np.ndarray, seed: int) -> np.ndarray:
        """Deterministic model input (float32 HxWx3, [0,1] scale) for a prepared target."""
        inp = self.degrade(target, np.random.default_rng(seed), training=False)
        return inp.astype(np.float32) / 255.0 if inp.dtype == np.uint8 else inp

    def card_params(self) -> dict[str, Any]:
        return {"name": self.name, "scale": self.scale, **self.options}


@dataclass(frozen=True)
class SuperResolution(Task):
    metric_space: str = "y"

    def degrade(self, target: np.ndarray, rng: np.random.Generator, training: bool) -> np.ndarray:
        return bicubic_down(target, self.scale)

    def baselines(self) -> dict[str, Baseline]:
        return {"bicubic": lambda x: bicubic_up(_to_u8(x), self.scale).astype(np.float32) / 255.0}


@dataclass(frozen=True)
class Denoise(Task):
    def _sigma(self, rng: np.random.Generator, training: bool) -> float:
        if not training:
            return float(self.options["eval_sigma"])
        sigma = self.options["sigma"]
        return float(sigma) if isinstance(sigma, int | float) else float(rng.uniform(*sigma))

    def degrade(self, target: np.ndarray, rng: np.random.Generator, training: bool) -> np.ndarray:
        return add_gaussian_noise(target, self._sigma(rng, training), rng)

    def baselines(self) -> dict[str, Baseline]:
        from skimage.restoration import denoise_nl_means

        sigma = float(self.options["eval_sigma"]) / 255.0

        def nl_means(x: np.ndarray) -> np.ndarray:
            out = denoise_nl_means(
                x, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True, channel_axis=-1
            )
            return out.astype(np.float32)

        return {"noisy_input": lambda x: x, "nl_means": nl_means}


TASKS: dict[str, Callable[[TaskParams], Task]] = {
    "sr": lambda p: SuperResolution("sr", scale=p.sr.scale, crop_border=p.sr.scale),
    "denoise": lambda p: Denoise("denoise", options={"sigma": p.denoise.sigma, "eval_sigma": p.denoise.eval_sigma}),
}


def build_task(params: TaskParams) -> Task:
    return TASKS[params.name](params)


def task_from_card(card_task: dict[str, Any]) -> Task:
    """Rebuild a task from the dict a model card stores (see Task.card_params)."""
    values = dict(card_task)
    name = values.pop("name")
    scale = values.pop("scale", 1)
    section = {"sr": {"scale": scale}}.get(name, values)
    return build_task(TaskParams.model_validate({"name": name, name: section}))
