"""The generator's loss as a sum of terms: pixel, perceptual, texture, adversarial, feature matching, artifact.

Each term is a small object built from its own params section; the paired trainer sums `weight x value` over the
terms active in the current phase and logs each value as `loss_<name>`. What several terms read (the
discriminator's verdicts, a feature network's features, the texture mask, the stable generator's output) is
computed once per step, when a term first asks for it (`GeneratorStep`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from gan_enhance.config import PerceptualParams, TextureMaskParams, TrainParams
from gan_enhance.models import features as feature_nets
from gan_enhance.tasks import Task
from gan_enhance.training import losses

Phase = Literal["all", "adversarial"]
LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
Verdicts = tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, list[torch.Tensor]]


def texture_mask(target: torch.Tensor, settings: TextureMaskParams) -> torch.Tensor:
    """1 where the target has texture, else 0 (N x 1 x H x W): the standard deviation of its luma (BT.601) over a
    window x window neighbourhood (reflected at the borders) exceeds the threshold (Beby-GAN, Li et al. 2021)."""
    luma = (target[:, :3] * LUMA.to(target)).sum(1, keepdim=True)
    half = settings.window // 2
    padded = F.pad(luma, (half, half, half, half), mode="reflect")
    mean, mean_sq = F.avg_pool2d(padded, settings.window, 1), F.avg_pool2d(padded**2, settings.window, 1)
    return ((mean_sq - mean**2).clamp_min(0).sqrt() > settings.threshold).to(target.dtype)


@dataclass
class GeneratorStep:
    """What the terms read in one generator step. `judge` runs the discriminator on fake (with gradient) and real
    (without) and returns (fake logits, fake features, real logits, real features); `stable` is the EMA generator's
    output. Both run at most once, when a term first needs them."""

    fake: torch.Tensor
    target: torch.Tensor
    inp: torch.Tensor
    adversarial: bool
    judge: Callable[[], Verdicts]
    stable: Callable[[], torch.Tensor]
    mask_settings: TextureMaskParams
    _features: dict[int, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = field(default_factory=dict)

    @cached_property
    def verdicts(self) -> Verdicts:
        return self.judge()

    @cached_property
    def stable_output(self) -> torch.Tensor:
        with torch.no_grad():
            return self.stable().float()

    @cached_property
    def texture(self) -> torch.Tensor:
        return texture_mask(self.target, self.mask_settings)

    def features(self, net: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """`net`'s features of the output (with gradient) and of the target (without)."""
        if id(net) not in self._features:
            with torch.no_grad():
                real = net(self.target)
            self._features[id(net)] = (net(self.fake), real)
        return self._features[id(net)]


class LossTerm(ABC):
    """One term of the generator's loss: `weight x value(step)`, in the phases `phase` names."""

    name: str
    phase: Phase = "all"

    def __init__(self, weight: float) -> None:
        self.weight = weight

    def active(self, adversarial: bool) -> bool:
        return self.phase == "all" or adversarial

    @abstractmethod
    def value(self, step: GeneratorStep) -> torch.Tensor: ...

    def settings(self) -> dict[str, Any]:
        """What shapes this term (the model card records it)."""
        return {"weight": self.weight, "phase": self.phase}


class PixelTerm(LossTerm):
    """L1/Charbonnier/L2 as the task applies it (inpainting weights its holes); in the adversarial phase between
    images low-passed by `lowpass` (frequency separation) when that is set."""

    name = "pixel"

    def __init__(self, weight: float, kind: str, lowpass: float, task: Task) -> None:
        super().__init__(weight)
        self.kind, self.lowpass, self.task = kind, lowpass, task

    def value(self, step: GeneratorStep) -> torch.Tensor:
        loss = partial(losses.pixel_loss, self.kind, lowpass=self.lowpass if step.adversarial else 0.0)
        return self.task.pixel_loss(loss, step.fake, step.target, step.inp)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "kind": self.kind, "lowpass": self.lowpass}


class PerceptualTerm(LossTerm):
    """Distance between a frozen network's features of output and target, summed over layers by their weights;
    with `masked`, only where the target has texture."""

    name = "perceptual"

    def __init__(self, weight: float, net: nn.Module, params: PerceptualParams, source: dict[str, Any]) -> None:
        super().__init__(weight)
        self.net, self.params, self.source = net, params, source
        self.phase = params.phase
        self.distance = F.l1_loss if params.criterion == "l1" else F.mse_loss

    def value(self, step: GeneratorStep) -> torch.Tensor:
        fake, real = step.features(self.net)
        total = step.fake.new_zeros(())
        for layer, layer_weight in self.params.layers.items():
            f, r = fake[layer], real[layer]
            if self.params.masked:
                mask = feature_nets.resized_mask(step.texture, f)
                f, r = f * mask, r * mask
            total = total + layer_weight * self.distance(f, r)
        return total

    def settings(self) -> dict[str, Any]:
        p = self.params
        return {**super().settings(), "layers": p.layers, "criterion": p.criterion, "masked": p.masked, **self.source}


class TextureTerm(PerceptualTerm):
    """Distance between the Gram matrices of the same features (EnhanceNet's texture loss)."""

    name = "texture"

    def value(self, step: GeneratorStep) -> torch.Tensor:
        fake, real = step.features(self.net)
        total = step.fake.new_zeros(())
        for layer, layer_weight in self.params.layers.items():
            total = total + layer_weight * self.distance(feature_nets.gram(fake[layer]), feature_nets.gram(real[layer]))
        return total


class AdversarialTerm(LossTerm):
    """The generator's GAN loss on the discriminator's verdicts; with `masked`, the per-logit loss weighted by the
    share of textured target pixels under each logit (region-aware, Beby-GAN)."""

    name = "adv"
    phase: Phase = "adversarial"

    def __init__(self, weight: float, kind: str, mean: losses.Mean, masked: bool) -> None:
        super().__init__(weight)
        self.kind, self.mean, self.masked = kind, mean, masked

    def value(self, step: GeneratorStep) -> torch.Tensor:
        fake_logits, _, real_logits, _ = step.verdicts
        weight = feature_nets.resized_mask(step.texture, fake_logits) if self.masked else None
        return losses.generator_adv_loss(self.kind, real_logits.float(), fake_logits.float(), self.mean, weight)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "gan_loss": self.kind, "mask": "texture" if self.masked else "none"}


class FeatureMatchingTerm(LossTerm):
    """L1 between the discriminator's intermediate features on real and fake (pix2pixHD)."""

    name = "fm"
    phase: Phase = "adversarial"

    def value(self, step: GeneratorStep) -> torch.Tensor:
        _, fake_feats, _, real_feats = step.verdicts
        return losses.feature_matching_loss(real_feats, fake_feats)


class ArtifactTerm(LossTerm):
    """LDL's artifact loss against the stable (EMA) generator."""

    name = "artifact"
    phase: Phase = "adversarial"

    def value(self, step: GeneratorStep) -> torch.Tensor:
        return losses.artifact_loss(step.fake, step.stable_output, step.target)


def feature_network(params: PerceptualParams, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The frozen feature network params.network names, on `device`, and what identifies it (for the card)."""
    layers = list(params.layers)
    if params.network == "vgg19":
        net, sha256 = feature_nets.vgg19_features(layers, params.vgg19_path)
        return net.to(device), {"network": "vgg19", "weights_sha256": sha256}
    r = params.random
    net = feature_nets.random_features(layers, r.width, r.seed, r.init)
    return net.to(device), {"network": "random", "width": r.width, "init": r.init, "seed": r.seed}


def build_terms(tp: TrainParams, task: Task, mean: losses.Mean, device: torch.device) -> list[LossTerm]:
    """The paired trainer's generator terms from train.*: the pixel term always (it is logged even at weight 0),
    the others when their weight is above 0."""
    w = tp.weights
    terms: list[LossTerm] = [PixelTerm(w.pixel, tp.pixel_loss, tp.pixel_lowpass, task)]
    if tp.perceptual.enabled:
        net, source = feature_network(tp.perceptual, device)
        if tp.perceptual.weight > 0:
            terms.append(PerceptualTerm(tp.perceptual.weight, net, tp.perceptual, source))
        if tp.perceptual.texture_weight > 0:
            terms.append(TextureTerm(tp.perceptual.texture_weight, net, tp.perceptual, source))
    if w.adversarial > 0:
        terms.append(AdversarialTerm(w.adversarial, tp.gan_loss, mean, tp.adversarial_mask == "texture"))
    if w.feature_matching > 0:
        terms.append(FeatureMatchingTerm(w.feature_matching))
    if w.artifact > 0:
        terms.append(ArtifactTerm(w.artifact))
    return terms
