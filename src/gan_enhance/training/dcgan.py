"""DCGAN training as in the PyTorch DCGAN example: binary cross-entropy (Goodfellow et al. 2014, the
non-saturating generator loss), D and G updated once per step on the same batch of fakes.

Each sample's image and latent come from a generator seeded by (seed, step, sample), so resuming is exact. The EMA
generator is exported. With several processes on CPU, each BatchNorm normalizes by its own rank's share of the
batch (torch has no SyncBatchNorm on CPU), so N processes train close to, not exactly like, one (on CUDA the
networks use SyncBatchNorm). The paired trainer's train.* keys (gan_loss, weights, warmup_steps, pixel_loss, r1_gamma)
and train.patch_size are not read here (a changed one warns); train.betas = [0.5, 0.999] and lr 2e-4 are the
paper's settings.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from gan_enhance.data.batches import load_split, sample_rngs, step_rng
from gan_enhance.data.prepare import manifest_hash
from gan_enhance.tasks import to_tensor
from gan_enhance.training import losses
from gan_enhance.training.base import OneGANTrainer
from gan_enhance.training.ema import EMA
from gan_enhance.visual import image_grid

GRID_SIDE = 8


class DCGANTrainer(OneGANTrainer):
    progress_keys = ("loss_g", "loss_d", "d_real", "d_fake")

    def load_data(self) -> str:
        prepared = self.base / self.params.data.prepared_dir
        images = load_split(prepared, "train")
        if not images:
            raise ValueError(f"no training images in {prepared}; run the prepare stage on a source with images")
        self.images = np.stack([self.task.prepare_target(image) for image in images])
        return manifest_hash(prepared)

    def build_networks(self) -> None:
        tp = self.params.train
        size = self.images.shape[1]
        self.G = self.build("generator", image_size=size)
        self.D = self.build("discriminator", image_size=size)
        self.latent_dim = int(self.G.latent_dim)
        self.ema = EMA(self.G, tp.ema_halflife_images, tp.ema_rampup)
        self.G_step, self.D_step = self.parallel(self.G), self.parallel(self.D, sync_buffers=False)
        self.opt_g = self.optimizer(self.G.parameters(), tp.lr_g)
        self.opt_d = self.optimizer(self.D.parameters(), tp.lr_d)
        self.sched_g = self.scheduler(self.opt_g, tp.steps)
        self.sched_d = self.scheduler(self.opt_d, tp.steps)
        rng = step_rng(self.params.seed, 0, stream=1)
        self.val_latent = torch.from_numpy(rng.standard_normal((GRID_SIDE**2, self.latent_dim), dtype=np.float32))

    def set_train_mode(self) -> None:
        self.G.train()
        self.D.train()

    def deliverable(self) -> tuple[nn.Module, dict[str, Any]]:
        return self.ema.model, {"latent_dim": self.latent_dim}

    def make_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rngs = sample_rngs(self.params.seed, step, self.world.shard(self.params.train.batch_size))
        picks = [int(rng.integers(len(self.images))) for rng in rngs]
        latent = np.stack([rng.standard_normal(self.latent_dim, dtype=np.float32) for rng in rngs])
        return to_tensor(self.images[picks]), torch.from_numpy(latent)

    def train_step(self, step: int, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        tp = self.params.train
        real, latent = (t.to(self.device, non_blocking=True) for t in batch)

        with self.autocast():
            fake = self.G_step(latent)
        self.D.requires_grad_(True)
        with self.autocast():
            real_logits, _ = self.D_step(real)
            fake_logits, _ = self.D_step(fake.detach())
            loss_d = losses.discriminator_loss(
                "vanilla", real_logits.float(), fake_logits.float(), real_label=tp.real_label
            )
        self.update(self.opt_d, self.sched_d, loss_d, self.D)

        self.D.requires_grad_(False)  # frozen, and called outside its DDP wrapper: no gradient to reduce
        with self.autocast():
            fake_logits, _ = self.D(fake)
            loss_g = losses.generator_adv_loss("vanilla", real_logits.detach().float(), fake_logits.float())
        self.update(self.opt_g, self.sched_g, loss_g, self.G)
        self.ema.update(self.G, tp.batch_size, (step + 1) * tp.batch_size)
        return {
            "loss_d": loss_d.detach(),
            "loss_g": loss_g.detach(),
            "d_real": torch.sigmoid(real_logits.detach().float()).mean(),
            "d_fake": torch.sigmoid(fake_logits.detach().float()).mean(),
        }

    @torch.inference_mode()
    def validate(self, step: int) -> dict[str, float]:
        """An 8 x 8 grid of the EMA generator's images from fixed latents."""
        if self.tracker.active:
            images = self.ema.model(self.val_latent.to(self.device)).float().clamp(0, 1).cpu()
            cells = [image.permute(1, 2, 0).numpy() for image in images]
            rows = [cells[i : i + GRID_SIDE] for i in range(0, len(cells), GRID_SIDE)]
            self.tracker.log_image(image_grid(rows, min_cell=64), f"samples/step_{step:07d}.png")
        return {}
