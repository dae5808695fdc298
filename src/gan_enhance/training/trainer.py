"""The GAN trainer for paired tasks.

Phase 1 (step < warmup_steps): pixel loss only. Phase 2: adversarial + discriminator feature matching,
pixel loss kept. The EMA generator is the deliverable. Checkpoints hold everything needed to continue
bit for bit, so a killed run started again ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import gan_enhance
from gan_enhance.config import Params
from gan_enhance.data.batches import PatchSampler, load_split, step_rng
from gan_enhance.data.prepare import manifest_hash
from gan_enhance.device import pick_device
from gan_enhance.models.artifact import ModelCard, save_generator
from gan_enhance.models.registry import build
from gan_enhance.tasks import Task, build_task
from gan_enhance.tracking import git_commit
from gan_enhance.training import losses
from gan_enhance.training.checkpoint import load_latest, restore_rng_state, save_checkpoint
from gan_enhance.training.ema import EMA
from gan_enhance.training.tracker import RunTracker
from gan_enhance.visual import image_grid, plot_curves

# train.* keys that change bookkeeping, not the weights: a checkpoint stays valid when only these change.
_BOOKKEEPING = (
    "out_dir",
    "checkpoint_dir",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "sample_every",
    "device",
    "threads",
    "report_dir",
)
CURVES_FILE = "curves.csv"


def _code_hash() -> str:
    """Hash of the code that shapes the weights: a checkpoint made by other code is not resumed."""
    package = Path(gan_enhance.__file__).parent
    files = [
        *sorted((package / "training").glob("*.py")),
        *sorted((package / "models").glob("*.py")),
        package / "tasks.py",
        package / "data" / "batches.py",
        package / "data" / "degradations.py",
    ]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@dataclass
class TrainResult:
    model_dir: Path
    steps: int
    resumed_from: int
    run_id: str | None
    metrics: dict[str, float]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.clamp(0, 1) - b) ** 2).item()
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


class Trainer:
    """Builds everything from Params; `run()` trains (resuming when a matching checkpoint exists)."""

    def __init__(self, params: Params, base: Path = Path("."), tracker: RunTracker | None = None) -> None:
        self.params = params
        self.base = base
        tp = params.train
        if tp.threads:
            torch.set_num_threads(tp.threads)
        self.device = pick_device(tp.device)
        self.task: Task = build_task(params.task)
        prepared = base / params.data.prepared_dir
        self.data_hash = manifest_hash(prepared)
        self.sampler = PatchSampler(load_split(prepared, "train"), tp.patch_size)
        val_images = load_split(prepared, "val") or self.sampler.images
        val_sampler = PatchSampler(
            [im for im in val_images if min(im.shape[:2]) >= tp.patch_size] or self.sampler.images,
            tp.patch_size,
        )
        self.val_input, self.val_target = self.task.training_pair(
            val_sampler.sample(min(8, tp.batch_size), step_rng(params.seed, 0, stream=1)),
            step_rng(params.seed, 0, stream=2),
        )
        torch.manual_seed(params.seed)
        gen, disc = params.model.generator, params.model.discriminator
        self.G = build("generator", gen.name, scale=self.task.scale, **gen.kwargs).to(self.device)
        self.D = build("discriminator", disc.name, **disc.kwargs).to(self.device)
        if self.device.type == "cuda":
            self.G = self.G.to(memory_format=torch.channels_last)
            self.D = self.D.to(memory_format=torch.channels_last)
        self.ema = EMA(self.G, tp.ema_halflife_images, tp.ema_rampup)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=tp.lr_g, betas=tp.betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=tp.lr_d, betas=tp.betas)
        self.sched_g = self._scheduler(self.opt_g, tp.steps)
        self.sched_d = self._scheduler(self.opt_d, max(tp.steps - tp.warmup_steps, 1))  # D trains after warm-up
        self.amp = tp.amp and self.device.type == "cuda"
        self.fingerprint = self._fingerprint()
        self.tracker = tracker or RunTracker.from_params(params, base)
        self.history: list[dict[str, float]] = []

    def _scheduler(self, optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        if self.params.train.lr_schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=0.0)
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)

    def _fingerprint(self) -> str:
        dumped = self.params.model_dump(mode="json")
        train = {k: v for k, v in dumped["train"].items() if k not in _BOOKKEEPING}
        key = json.dumps(
            [dumped["seed"], dumped["task"], dumped["model"], train, self.data_hash, _code_hash()],
            sort_keys=True,
        )
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    # ---- checkpoints -------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "EMA": self.ema.model.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "sched_d": self.sched_d.state_dict(),
            "history": self.history,
            "run_id": self.tracker.run_id,
        }

    def _resume(self) -> int:
        folder = self.base / self.params.train.checkpoint_dir
        state = load_latest(folder, map_location=self.device)
        if state is None:
            return 0
        if state.get("fingerprint") != self.fingerprint:
            stale = folder / f"stale-{state.get('fingerprint', 'unknown')}"
            print(f"Checkpoints in {folder} belong to other params or data; moved to {stale}, starting fresh.")
            stale.mkdir(parents=True, exist_ok=True)
            for path in folder.glob("step-*.pt"):
                path.replace(stale / path.name)
            return 0
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.ema.model.load_state_dict(state["EMA"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        self.history = list(state["history"])
        restore_rng_state(state["rng"])
        self.tracker.resume(state.get("run_id"))
        print(f"Resuming from step {state['step']} ({folder}).")
        return int(state["step"])

    # ---- one step ----------------------------------------------------------------------------------
    def _autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()

    def _clip(self, net: nn.Module) -> None:
        if self.params.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), self.params.train.grad_clip)

    def train_step(self, step: int) -> dict[str, float]:
        tp = self.params.train
        rng = step_rng(self.params.seed, step)
        inp, target = self.task.training_pair(self.sampler.sample(tp.batch_size, rng), rng)
        inp, target = inp.to(self.device, non_blocking=True), target.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            inp = inp.contiguous(memory_format=torch.channels_last)
            target = target.contiguous(memory_format=torch.channels_last)
        logs: dict[str, float] = {}
        adversarial = step >= tp.warmup_steps and (tp.weights.adversarial > 0 or tp.weights.feature_matching > 0)

        with self._autocast():
            fake = self.G(inp)
        if adversarial:
            self.D.requires_grad_(True)
            real_in = target.requires_grad_(tp.r1_gamma > 0)
            with self._autocast():
                real_logits, _ = self.D(real_in)
                fake_logits, _ = self.D(fake.detach())
                loss_d = losses.discriminator_loss(tp.gan_loss, real_logits.float(), fake_logits.float())
            if tp.r1_gamma > 0:
                r1 = losses.r1_penalty(real_logits.float(), real_in)
                loss_d = loss_d + 0.5 * tp.r1_gamma * r1
                logs["r1"] = r1.item()
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self._clip(self.D)
            self.opt_d.step()
            self.sched_d.step()
            logs["loss_d"] = loss_d.item()
            target = target.detach()

        with self._autocast():
            loss_pix = losses.pixel_loss(tp.pixel_loss, fake.float(), target)
            loss_g = tp.weights.pixel * loss_pix
            if adversarial:
                self.D.requires_grad_(False)
                fake_logits, fake_feats = self.D(fake)
                with torch.no_grad():
                    real_logits, real_feats = self.D(target)
                loss_adv = losses.generator_adv_loss(tp.gan_loss, real_logits.float(), fake_logits.float())
                loss_fm = losses.feature_matching_loss(real_feats, fake_feats)
                loss_g = loss_g + tp.weights.adversarial * loss_adv + tp.weights.feature_matching * loss_fm
                logs["loss_adv"], logs["loss_fm"] = loss_adv.item(), loss_fm.item()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self._clip(self.G)
        self.opt_g.step()
        self.sched_g.step()
        self.ema.update(self.G, tp.batch_size, (step + 1) * tp.batch_size)
        logs["loss_pixel"], logs["loss_g"] = loss_pix.item(), loss_g.item()
        return logs

    # ---- validation samples ------------------------------------------------------------------------
    @torch.inference_mode()
    def validate(self, step: int) -> dict[str, float]:
        """EMA generator on the fixed validation patches: PSNR and a sample grid (input | output | target)."""
        out = self.ema.model(self.val_input.to(self.device)).float().cpu()
        psnr = _psnr(out, self.val_target)
        if self.tracker.active:
            rows = []
            for inp, res, tgt in zip(self.val_input[:4], out[:4], self.val_target[:4], strict=True):
                rows.append([t.clamp(0, 1).permute(1, 2, 0).numpy() for t in (inp, res, tgt)])
            grid = image_grid(rows, labels=("input", "output (EMA)", "target"))
            self.tracker.log_image(grid, f"samples/step_{step:07d}.png")
        return {"val_psnr": psnr}

    # ---- the loop ----------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        tp = self.params.train
        start = self._resume()
        self.tracker.start(self.params, self.data_hash)
        window: dict[str, list[float]] = defaultdict(list)
        bar = tqdm(
            total=tp.steps,
            initial=start,
            desc=f"train {self.task.name}",
            unit="step",
            disable=None,
            dynamic_ncols=True,
        )
        t0 = time.perf_counter()
        try:
            for step in range(start, tp.steps):
                self.G.train()
                for key, value in self.train_step(step).items():
                    window[key].append(value)
                done = step + 1
                if done % tp.log_every == 0 or done == tp.steps:
                    row: dict[str, float] = {
                        "step": done,
                        **{k: float(np.mean(v)) for k, v in window.items()},
                    }
                    row["lr_g"] = self.sched_g.get_last_lr()[0]
                    if done % tp.sample_every == 0 or done == tp.steps:
                        row.update(self.validate(done))
                    self.history.append(row)
                    self.tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, done)
                    bar.set_postfix(
                        {k: f"{v:.4g}" for k, v in row.items() if k in ("loss_pixel", "loss_d", "val_psnr")}
                    )
                    window.clear()
                if done % tp.checkpoint_every == 0 or done == tp.steps:
                    save_checkpoint(self.base / tp.checkpoint_dir, done, self._state(), tp.keep_checkpoints)
                bar.update(1)
        finally:
            bar.close()
        elapsed = time.perf_counter() - t0
        model_dir = self._export()
        metrics = {k: v for k, v in (self.history[-1] if self.history else {}).items() if k != "step"}
        metrics["train_seconds"] = elapsed
        self.tracker.finish(model_dir, self.base / tp.report_dir, metrics)
        return TrainResult(model_dir, tp.steps, start, self.tracker.run_id, metrics)

    def _export(self) -> Path:
        """Write the EMA generator (safetensors + card) and the training curves."""
        tp = self.params.train
        last = self.history[-1] if self.history else {}
        card = ModelCard(
            arch=self.params.model.generator.name,
            arch_kwargs=self.params.model.generator.kwargs,
            task=self.task.name,
            scale=self.task.scale,
            task_params=self.task.card_params(),
            data_hash=self.data_hash,
            git_commit=git_commit(self.base),
            mlflow_run_id=self.tracker.run_id,
            params_fingerprint=self.fingerprint,
            steps=tp.steps,
            metrics={"val_psnr": last["val_psnr"]} if "val_psnr" in last else {},
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            gan_enhance_version=gan_enhance.__version__,
        )
        out = self.base / tp.out_dir
        if out.exists():
            shutil.rmtree(out)
        save_generator(self.ema.model, card, out)
        self._write_curves(self.base / tp.report_dir)
        return out

    def _write_curves(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        keys = sorted({k for row in self.history for k in row} - {"step"})
        with (folder / CURVES_FILE).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["step", *keys])
            writer.writeheader()
            writer.writerows(self.history)
        plot_curves(self.history, folder / "curves.png", f"training: {self.task.name}")


def train(params: Params, base: Path = Path(".")) -> TrainResult:
    """The train stage."""
    return Trainer(params, base).run()
