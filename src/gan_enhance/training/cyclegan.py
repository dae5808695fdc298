"""CycleGAN (Zhu et al. 2017) for unpaired translation between domain A and domain B.

Two generators (A->B, B->A) and two PatchGAN discriminators; LSGAN adversarial losses, cycle consistency
(A->B->A and B->A->B, L1, weight cycle_weight), identity (G_ab(b) ~ b, weight cycle_weight x identity_weight),
and an image history buffer of pool_size fakes per discriminator. Both generators keep an EMA copy; the one for
task.translate.direction is exported. The paired trainer's train.* keys (gan_loss, weights, warmup_steps,
pixel_loss, r1_gamma) are not read here (gan_enhance.kinds lists them; a changed one warns).
"""

from __future__ import annotations

import hashlib
from itertools import chain
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gan_enhance.data.batches import PatchSampler, load_split, sample_rngs, step_rng
from gan_enhance.data.prepare import DOMAIN_B_DIR, PrepareError, manifest_hash
from gan_enhance.tasks import to_tensor
from gan_enhance.training import distributed, losses
from gan_enhance.training.base import BaseTrainer
from gan_enhance.training.ema import EMA
from gan_enhance.training.pool import ImagePool
from gan_enhance.visual import image_grid

DOMAINS = ("a", "b")
VAL_PATCHES = 4


def _lsgan_g(fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's least-squares loss as in the paper: MSE of D(fake) to 1."""
    return ((fake_logits.float() - 1) ** 2).mean()


class CycleGANTrainer(BaseTrainer):
    progress_keys = ("loss_g", "loss_d", "loss_cycle")
    card_metric_keys = ("val_cycle_l1",)

    def load_data(self) -> str:
        tp = self.params.train
        prepared = self.base / self.params.data.prepared_dir
        folders = {"a": prepared, "b": prepared / DOMAIN_B_DIR}
        if not (folders["b"] / "manifest.csv").is_file():
            raise PrepareError(
                f"no domain B in {prepared}: run the prepare stage with task.name=translate "
                "(`gan-enhance prepare -S task.name=translate` or `dvc repro`)"
            )
        self.samplers: dict[str, PatchSampler] = {}
        self.val: dict[str, torch.Tensor] = {}
        for i, (domain, folder) in enumerate(folders.items()):
            self.samplers[domain] = PatchSampler(load_split(folder, "train"), tp.patch_size)
            val_images = [im for im in load_split(folder, "val") if min(im.shape[:2]) >= tp.patch_size]
            sampler = PatchSampler(val_images, tp.patch_size) if val_images else self.samplers[domain]
            self.val[domain] = to_tensor(sampler.sample(sample_rngs(self.params.seed, 0, range(VAL_PATCHES), 1 + i)))
        both = "".join(manifest_hash(folder) for folder in folders.values())
        return hashlib.sha256(both.encode()).hexdigest()[:16]

    def build_networks(self) -> None:
        tp = self.params.train
        self.G = {"a2b": self.build("generator"), "b2a": self.build("generator")}
        self.D = {"a": self.build("discriminator"), "b": self.build("discriminator")}
        self.ema = {name: EMA(net, tp.ema_halflife_images, tp.ema_rampup) for name, net in self.G.items()}
        self.G_step = {name: self.parallel(net) for name, net in self.G.items()}
        self.D_step = {name: self.parallel(net, sync_buffers=False) for name, net in self.D.items()}
        self.opt_g = self.optimizer(chain(*(g.parameters() for g in self.G.values())), tp.lr_g)
        self.opt_d = self.optimizer(chain(*(d.parameters() for d in self.D.values())), tp.lr_d)
        self.sched_g = self.scheduler(self.opt_g, tp.steps)
        self.sched_d = self.scheduler(self.opt_d, tp.steps)
        self.pools = {domain: ImagePool(self.task.options.pool_size) for domain in DOMAINS}

    def stateful(self) -> dict[str, Any]:
        return {
            **{f"G_{name}": net for name, net in self.G.items()},
            **{f"D_{name}": net for name, net in self.D.items()},
            **{f"EMA_{name}": ema.model for name, ema in self.ema.items()},
            "opt_g": self.opt_g,
            "opt_d": self.opt_d,
            "sched_g": self.sched_g,
            "sched_d": self.sched_d,
            **{f"pool_{domain}": pool for domain, pool in self.pools.items()},
        }

    def fingerprint_task(self) -> dict[str, Any]:
        """The exported direction does not shape the weights: switching it resumes and exports the other G."""
        task = super().fingerprint_task()
        task["translate"] = {k: v for k, v in task["translate"].items() if k != "direction"}
        return task

    def set_train_mode(self) -> None:
        for net in chain(self.G.values(), self.D.values()):
            net.train()

    def deliverable(self) -> tuple[nn.Module, dict[str, Any]]:
        return self.ema[self.task.options.direction].model, {}

    def make_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        shard = self.world.shard(self.params.train.batch_size)
        return tuple(
            to_tensor(self.samplers[d].sample(sample_rngs(self.params.seed, step, shard, stream=i)))
            for i, d in enumerate(DOMAINS)
        )

    def _pooled(self, domain: str, fakes: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """This rank's share of the history buffer's answer for the global batch of fakes (the buffer sees every
        rank's fakes in rank order, as one process would see the whole batch, and is the same on every rank)."""
        answer = self.pools[domain].query(distributed.gather(fakes.detach()), rng)
        return answer[self.world.rank * len(fakes) : (self.world.rank + 1) * len(fakes)]

    def train_step(self, step: int, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        tp, options = self.params.train, self.task.options
        real = {d: t.to(self.device, non_blocking=True) for d, t in zip(DOMAINS, batch, strict=True)}
        g_ab, g_ba = self.G_step["a2b"], self.G_step["b2a"]
        d_a, d_b = self.D["a"], self.D["b"]  # frozen in the G step, called outside their DDP wrappers

        for net in self.D.values():
            net.requires_grad_(False)
        with self.autocast():
            fake_b, fake_a = g_ab(real["a"]), g_ba(real["b"])
            loss_adv = _lsgan_g(d_b(fake_b)[0]) + _lsgan_g(d_a(fake_a)[0])
            loss_cycle = F.l1_loss(g_ba(fake_b).float(), real["a"]) + F.l1_loss(g_ab(fake_a).float(), real["b"])
            loss_id = torch.zeros((), device=self.device)
            if options.identity_weight > 0:
                loss_id = F.l1_loss(g_ab(real["b"]).float(), real["b"]) + F.l1_loss(g_ba(real["a"]).float(), real["a"])
            identity_weight = options.cycle_weight * options.identity_weight
            loss_g = loss_adv + options.cycle_weight * loss_cycle + identity_weight * loss_id
        self.update(self.opt_g, self.sched_g, loss_g, *self.G.values())
        for name, net in self.G.items():
            self.ema[name].update(net, tp.batch_size, (step + 1) * tp.batch_size)

        for net in self.D.values():
            net.requires_grad_(True)
        rng = step_rng(self.params.seed, step)
        pooled = {"b": self._pooled("b", fake_b, rng), "a": self._pooled("a", fake_a, rng)}
        with self.autocast():
            loss_d = sum(
                losses.discriminator_loss(
                    "lsgan", self.D_step[d](real[d])[0].float(), self.D_step[d](pooled[d])[0].float()
                )
                for d in DOMAINS
            )
        self.update(self.opt_d, self.sched_d, loss_d, *self.D.values())
        return {
            "loss_g": loss_g.detach(),
            "loss_adv": loss_adv.detach(),
            "loss_cycle": loss_cycle.detach(),
            "loss_identity": loss_id.detach(),
            "loss_d": loss_d.detach(),
        }

    @torch.inference_mode()
    def validate(self, step: int) -> dict[str, float]:
        """EMA generators on fixed validation patches: cycle L1 and a grid (a | a->b | b | b->a)."""
        g_ab, g_ba = self.ema["a2b"].model, self.ema["b2a"].model
        a, b = self.val["a"].to(self.device), self.val["b"].to(self.device)
        fake_b, fake_a = g_ab(a).float(), g_ba(b).float()
        cycle = 0.5 * (F.l1_loss(g_ba(fake_b).float(), a) + F.l1_loss(g_ab(fake_a).float(), b)).item()
        if self.tracker.active:
            rows = [
                [t.clamp(0, 1).permute(1, 2, 0).cpu().numpy() for t in cells]
                for cells in zip(a, fake_b, b, fake_a, strict=True)
            ]
            grid = image_grid(rows, labels=("A", "A->B (EMA)", "B", "B->A (EMA)"))
            self.tracker.log_image(grid, f"samples/step_{step:07d}.png")
        return {"val_cycle_l1": cycle}
