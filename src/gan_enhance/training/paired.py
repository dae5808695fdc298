"""The GAN trainer for paired tasks (and masked ones: inpainting): the task makes each (input, target) pair.

Phase 1 (step < warmup_steps): the pixel loss (and a perceptual/texture loss whose phase is `all`). Phase 2: the
adversarial terms join (GAN loss, discriminator feature matching, artifact loss), the others kept. The generator's
loss is the sum of the terms training/terms.py builds from train.*; each is logged as loss_<name>. The EMA
generator is the deliverable; its state when phase 1 ended is exported beside it as its PSNR twin (`pixel_only`),
which the evaluation scores as a baseline: what the adversarial phase bought.
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gan_enhance.data.batches import PatchSampler, load_split, sample_rngs
from gan_enhance.data.prepare import manifest_hash
from gan_enhance.models.artifact import PARENT_TWIN, PIXEL_TWIN
from gan_enhance.training import losses
from gan_enhance.training.base import OneGANTrainer
from gan_enhance.training.ema import EMA
from gan_enhance.training.parent import load_discriminator_state, load_parent
from gan_enhance.training.terms import GeneratorStep, Verdicts, build_terms
from gan_enhance.visual import image_grid


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.clamp(0, 1) - b) ** 2).item()
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


class PairedTrainer(OneGANTrainer):
    """Paired tasks: the task makes each (input, target) pair from a target patch."""

    progress_keys = ("loss_pixel", "loss_d", "val_psnr")
    card_metric_keys = ("val_psnr",)

    def load_data(self) -> str:
        tp = self.params.train
        prepared = self.base / self.params.data.prepared_dir
        self.sampler = PatchSampler(load_split(prepared, "train"), tp.patch_size)
        val_images = load_split(prepared, "val") or self.sampler.images
        val_sampler = PatchSampler(
            [im for im in val_images if min(im.shape[:2]) >= tp.patch_size] or self.sampler.images,
            tp.patch_size,
        )
        rngs = sample_rngs(self.params.seed, 0, range(min(8, tp.batch_size)), stream=1)
        self.val_input, self.val_target = self.task.training_pair(val_sampler.sample(rngs), rngs)
        return manifest_hash(prepared)

    def build_networks(self) -> None:
        tp = self.params.train
        self.G = self.build("generator", scale=self.task.scale, in_channels=self.task.in_channels)
        condition = {"in_channels": 3 + self.task.in_channels} if tp.conditional_discriminator else {}
        self.D = self.build("discriminator", **condition)
        self.parent_net = self.start_from_parent()
        self.ema = EMA(self.G, tp.ema_halflife_images, tp.ema_rampup)
        self.G_step, self.D_step = self.parallel(self.G), self.parallel(self.D, sync_buffers=False)
        self.opt_g = self.optimizer(self.G.parameters(), tp.lr_g)
        self.opt_d = self.optimizer(self.D.parameters(), tp.lr_d)
        self.sched_g = self.scheduler(self.opt_g, tp.steps)
        self.sched_d = self.scheduler(self.opt_d, max(tp.steps - tp.warmup_steps, 1))  # D trains after warm-up
        self.twin = copy.deepcopy(self.ema.model) if self.has_adversarial_phase() else None
        self.terms = build_terms(tp, self.task, self.batch_mean, self.device)

    def start_from_parent(self) -> nn.Module | None:
        """Load train.init_from into G (and train.init_discriminator into D); returns a frozen copy of the parent
        (exported beside the model as its `parent` twin, so the evaluation scores what fine-tuning bought)."""
        tp = self.params.train
        if tp.init_discriminator is not None:
            sha256 = load_discriminator_state(self.base / tp.init_discriminator, self.D)
            self.lineage["discriminator"] = {"source": str(tp.init_discriminator), "sha256": sha256}
        if tp.init_from is None:
            return None
        parent = load_parent(tp.init_from, self.params, self.base)
        self.G.load_state_dict({k: v.to(self.device) for k, v in parent.state.items()})
        self.lineage.update(parent.lineage)
        return copy.deepcopy(self.G).requires_grad_(False).eval()

    def has_adversarial_phase(self) -> bool:
        tp = self.params.train
        return (tp.weights.adversarial > 0 or tp.weights.feature_matching > 0) and 0 < tp.warmup_steps < tp.steps

    def stateful(self) -> dict[str, Any]:
        return {**super().stateful(), **({PIXEL_TWIN: self.twin} if self.twin is not None else {})}

    def twins(self) -> dict[str, tuple[nn.Module, int]]:
        twins = {PIXEL_TWIN: (self.twin, self.params.train.warmup_steps)} if self.twin is not None else {}
        return {**twins, PARENT_TWIN: (self.parent_net, 0)} if self.parent_net is not None else twins

    def set_train_mode(self) -> None:
        self.G.train()

    def curve_markers(self) -> dict[str, float]:
        """Where the adversarial phase starts (loss_g jumps there: the adversarial terms join the pixel loss)."""
        return {"adversarial phase starts": self.params.train.warmup_steps} if self.has_adversarial_phase() else {}

    def deliverable(self) -> tuple[nn.Module, dict[str, Any]]:
        losses = {term.name: term.settings() for term in self.terms}
        return self.ema.model, {"losses": losses, "parent": self.lineage or None}

    def judged(self, images: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        """What the discriminator sees: the images (plus instance noise, if set), with a conditional discriminator
        beside the input (bicubic upsampled to their size where it is smaller: super-resolution)."""
        tp = self.params.train
        if tp.instance_noise > 0:
            images = images + tp.instance_noise * torch.randn_like(images)
        if not tp.conditional_discriminator:
            return images
        if inp.shape[-2:] != images.shape[-2:]:
            inp = F.interpolate(inp, size=images.shape[-2:], mode="bicubic", align_corners=False)
        return torch.cat([images, inp.to(images.dtype)], dim=1)

    def make_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rngs = sample_rngs(self.params.seed, step, self.world.shard(self.params.train.batch_size))
        return self.task.training_pair(self.sampler.sample(rngs), rngs)

    def train_step(self, step: int, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        tp = self.params.train
        inp, target = (t.to(self.device, non_blocking=True) for t in batch)
        if self.device.type == "cuda":
            inp = inp.contiguous(memory_format=torch.channels_last)
            target = target.contiguous(memory_format=torch.channels_last)
        logs: dict[str, torch.Tensor] = {}
        adversarial = step >= tp.warmup_steps and (tp.weights.adversarial > 0 or tp.weights.feature_matching > 0)

        with self.autocast():
            fake = self.G_step(inp)
        if adversarial:
            self.D.requires_grad_(True)
            real_in = target.requires_grad_(tp.r1_gamma > 0)
            with self.autocast():
                real_logits, _ = self.D_step(self.judged(real_in, inp))
                fake_logits, _ = self.D_step(self.judged(fake.detach(), inp))
                loss_d = losses.discriminator_loss(
                    tp.gan_loss, real_logits.float(), fake_logits.float(), mean=self.batch_mean
                )
            if tp.r1_gamma > 0:
                r1 = losses.r1_penalty(real_logits.float(), real_in)
                loss_d = loss_d + 0.5 * tp.r1_gamma * r1
                logs["r1"] = r1.detach()
            self.update(self.opt_d, self.sched_d, loss_d, self.D)
            logs["loss_d"] = loss_d.detach()
            target = target.detach()

        step_terms = GeneratorStep(
            fake.float(),
            target,
            inp,
            step >= tp.warmup_steps,
            judge=partial(self._verdicts, fake, target, inp),
            stable=partial(self.ema.model, inp),
            mask_settings=tp.texture_mask,
        )
        with self.autocast():
            loss_g = None
            for term in self.terms:
                if term.active(step_terms.adversarial):
                    value = term.value(step_terms)
                    loss_g = term.weight * value if loss_g is None else loss_g + term.weight * value
                    logs[f"loss_{term.name}"] = value.detach()
        self.update(self.opt_g, self.sched_g, loss_g, self.G)
        self.ema.update(self.G, tp.batch_size, (step + 1) * tp.batch_size)  # global batch: the same on every rank
        if self.twin is not None and step + 1 == tp.warmup_steps:
            self.twin.load_state_dict(self.ema.model.state_dict())
        logs["loss_g"] = loss_g.detach()
        return logs

    def _verdicts(self, fake: torch.Tensor, target: torch.Tensor, inp: torch.Tensor) -> Verdicts:
        """D on the output (with gradient to G) and on the target; D frozen, and called outside its DDP wrapper:
        no gradient to reduce."""
        self.D.requires_grad_(False)
        fake_logits, fake_feats = self.D(self.judged(fake, inp))
        with torch.no_grad():
            real_logits, real_feats = self.D(self.judged(target, inp))
        return fake_logits, fake_feats, real_logits, real_feats

    @torch.inference_mode()
    def validate(self, step: int) -> dict[str, float]:
        """EMA generator on the fixed validation patches: PSNR and a sample grid (input | output | target)."""
        out = self.ema.model(self.val_input.to(self.device)).float().cpu()
        psnr = _psnr(out, self.val_target)
        if self.tracker.active:
            rows = []
            for inp, res, tgt in zip(self.val_input[:4, :3], out[:4], self.val_target[:4], strict=True):
                rows.append([t.clamp(0, 1).permute(1, 2, 0).numpy() for t in (inp, res, tgt)])
            grid = image_grid(rows, labels=("input", "output (EMA)", "target"))
            self.tracker.log_image(grid, f"samples/step_{step:07d}.png")
        return {"val_psnr": psnr}
