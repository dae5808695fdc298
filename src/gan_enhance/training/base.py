"""What every trainer shares: device, task, optimizers, the loop, checkpoints with exact resume, MLflow, export.

A trainer subclass loads its data (returning its hash), builds its networks and sets the optimizers and
schedulers the loop uses (opt_g, opt_d, sched_g, sched_d), says which objects make up its state, and defines one
training step and one validation; `update` is every optimizer step (zero grad, backward, clip, step, schedule).
Each sample of a step's global batch draws its randomness from a generator seeded by (seed, step, sample), and
checkpoints hold every network, optimizer, scheduler, buffer and every process's RNG state, so a run killed and
started again ends with exactly the weights of an uninterrupted one.

Under torchrun (train.distributed) each process makes and trains on its share of the global batch (`make_batch`),
the trainers wrap G and D separately in DistributedDataParallel (`parallel`), batch statistics that a loss takes
(RaGAN's mean logits) are taken over the global batch, logged values are averaged over the processes, and rank 0
alone writes checkpoints, the exported generator, curves, the MLflow run and the progress bar.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import time
import warnings
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import gan_enhance
from gan_enhance.config import Params
from gan_enhance.device import pick_device
from gan_enhance.errors import GanEnhanceError
from gan_enhance.kinds import KINDS
from gan_enhance.models.artifact import ModelCard, save_generator
from gan_enhance.progress import Progress
from gan_enhance.tasks import Task, build_task
from gan_enhance.tracking import git_commit
from gan_enhance.training import distributed
from gan_enhance.training.checkpoint import load_latest, restore_rng_state, rng_state, save_checkpoint
from gan_enhance.training.prefetch import Batch, Prefetcher
from gan_enhance.training.tracker import RunTracker
from gan_enhance.visual import plot_curves

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
    "prefetch",
    "distributed",  # the world size is checked on its own: a checkpoint resumes only with the world that wrote it
)
CURVES_FILE = "curves.csv"


class TrainingError(GanEnhanceError, RuntimeError):
    """Training cannot go on as asked; the message says what to change."""


def check_batch_split(batch_size: int, world: int) -> None:
    """TrainingError unless the global batch splits evenly over `world` processes."""
    if batch_size % world:
        multiple = -(-batch_size // world) * world
        raise TrainingError(
            f"train.batch_size={batch_size} does not split evenly over {world} processes; set it to a multiple "
            f"of {world} (e.g. {multiple}) or change train.distributed.nproc_per_node / nnodes"
        )


def _code_hash() -> str:
    """Hash of the code that shapes the weights: a checkpoint made by other code is not resumed."""
    package = Path(gan_enhance.__file__).parent
    files = [
        *sorted((package / "training").glob("*.py")),
        *sorted((package / "models").glob("*.py")),
        package / "tasks.py",
        package / "data" / "batches.py",
        package / "data" / "degradations.py",
        package / "data" / "masks.py",
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


class BaseTrainer(ABC):
    """Builds everything from Params; `run()` trains (resuming when a matching checkpoint exists)."""

    progress_keys: tuple[str, ...] = ()  # shown on the progress bar
    card_metric_keys: tuple[str, ...] = ()  # copied from the last logged row into the model card
    # set by build_networks: the loop steps, logs and checkpoints them
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    sched_g: torch.optim.lr_scheduler.LRScheduler
    sched_d: torch.optim.lr_scheduler.LRScheduler

    def __init__(self, params: Params, base: Path = Path("."), tracker: RunTracker | None = None) -> None:
        self.params = params
        self.base = base
        tp = params.train
        for key, value in params.unread_train_settings().items():
            warnings.warn(
                f"train.{key}={value!r} has no effect: the {type(self).__name__} (task '{params.task.name}') does "
                f"not read it; remove it or set it back to the default",
                stacklevel=2,
            )
        if tp.threads:
            torch.set_num_threads(tp.threads)
        self.world = distributed.launched_world()
        check_batch_split(tp.batch_size, self.world.size)  # again here: torchrun may start the ranks directly
        self.device = pick_device(tp.device)
        if self.device.type == "cuda" and self.world.distributed:
            self.device = torch.device("cuda", self.world.local_rank)
        distributed.join(self.world, self.device, tp.distributed.backend)
        self.task: Task = build_task(params.task)
        self.lineage: dict[str, Any] = {}  # where the weights started (train.init_from): card, tags, fingerprint
        self.data_hash = self.load_data()
        torch.manual_seed(params.seed)
        self.build_networks()
        missing = [name for name in ("opt_g", "opt_d", "sched_g", "sched_d") if not hasattr(self, name)]
        if missing:
            raise TypeError(f"{type(self).__name__}.build_networks must set {', '.join(missing)}")
        self.amp = tp.amp and self.device.type == "cuda"
        self.fingerprint = self._fingerprint()
        if not self.world.main:  # one MLflow run per training: rank 0's
            tracker = RunTracker(None, "", base)
        self.tracker = tracker or RunTracker.from_params(params, base)
        self.history: list[dict[str, float]] = []

    # ---- what a trainer defines ---------------------------------------------------------------------
    @abstractmethod
    def load_data(self) -> str:
        """Load the training data; return its identity (a hash)."""
        ...

    @abstractmethod
    def build_networks(self) -> None:
        """Build networks, EMA copies, optimizers and schedulers (torch's RNG is seeded just before)."""
        ...

    @abstractmethod
    def stateful(self) -> dict[str, Any]:
        """Everything with state_dict()/load_state_dict() that a checkpoint must hold, by name."""
        ...

    @abstractmethod
    def make_batch(self, step: int) -> Batch:
        """This process's share (`world.shard`) of the global batch of `step`, as CPU tensors. It runs on the
        prefetch thread: it must depend on nothing but the step and the data."""
        ...

    @abstractmethod
    def train_step(self, step: int, batch: Batch) -> dict[str, torch.Tensor]:
        """One step on this process's share of the batch; returns the values to log (means over the share) as
        detached tensors: the loop reads them only every train.log_every steps, so a CUDA step never waits for
        the host."""
        ...

    @abstractmethod
    def validate(self, step: int) -> dict[str, float]: ...

    @abstractmethod
    def deliverable(self) -> tuple[nn.Module, dict[str, Any]]:
        """The network to export and the card fields it needs beyond the task's and the architecture's."""
        ...

    @abstractmethod
    def set_train_mode(self) -> None: ...

    def twins(self) -> dict[str, tuple[nn.Module, int]]:
        """Other states of the deliverable exported beside it (name -> network, steps it had trained), e.g. the
        generator before its adversarial phase: the evaluation scores each as a baseline."""
        return {}

    def curve_markers(self) -> dict[str, float]:
        """Steps worth marking on the training curves (label -> step), e.g. where a phase starts."""
        return {}

    # ---- shared parts -------------------------------------------------------------------------------
    def build(self, kind: str, **context: Any) -> nn.Module:
        """A network from params.model (generator or discriminator) on the device, with task context."""
        from gan_enhance.models.registry import build

        arch = getattr(self.params.model, kind)
        net = distributed.sync_batchnorm(build(kind, arch.name, **context, **arch.kwargs), self.device)
        net = net.to(self.device)
        return net.to(memory_format=torch.channels_last) if self.device.type == "cuda" else net

    def parallel(self, net: nn.Module, sync_buffers: bool = True) -> nn.Module:
        """`net` as the training step calls it: under DistributedDataParallel when several processes train.
        Keep `net` itself for EMA, checkpoints, export and frozen forward passes (a discriminator in the G step)."""
        return distributed.wrap(net, self.device, sync_buffers)

    def batch_mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean over the global batch (all processes), with its gradient."""
        return distributed.global_mean(values)

    def optimizer(self, parameters: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        """Adam; on CUDA the fused kernel (one launch for every parameter instead of several per tensor)."""
        return torch.optim.Adam(parameters, lr=lr, betas=self.params.train.betas, fused=self.device.type == "cuda")

    def scheduler(self, optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        if self.params.train.lr_schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=0.0)
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)

    def autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()

    def update(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        loss: torch.Tensor,
        *nets: nn.Module,
    ) -> None:
        """One optimizer step on `loss`: fresh gradients, backward, gradient clipping of `nets`, step, schedule."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.params.train.grad_clip > 0:
            for net in nets:
                torch.nn.utils.clip_grad_norm_(net.parameters(), self.params.train.grad_clip)
        optimizer.step()
        scheduler.step()

    def fingerprint_task(self) -> dict[str, Any]:
        """The task settings that shape the weights (a trainer may leave out export-only ones)."""
        return self.params.model_dump(mode="json")["task"]

    def _fingerprint(self) -> str:
        dumped = self.params.model_dump(mode="json")
        unread = KINDS[self.task.kind].unread_train_keys
        train = {k: v for k, v in dumped["train"].items() if k not in _BOOKKEEPING and k not in unread}
        parts = [dumped["seed"], self.fingerprint_task(), dumped["model"], train, self.data_hash, _code_hash()]
        if self.lineage:  # the parent's weights, not only its path: a checkpoint never resumes onto another parent
            parts.append(self.lineage)
        key = json.dumps(parts, sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    # ---- checkpoints -------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any] | None:
        """The checkpoint's content on rank 0 (None on the others); every rank must call it (RNG states are
        gathered)."""
        rngs = distributed.gather_objects(rng_state())
        if not self.world.main:
            return None
        return {
            "fingerprint": self.fingerprint,
            "world_size": self.world.size,
            **{name: obj.state_dict() for name, obj in self.stateful().items()},
            "history": self.history,
            "run_id": self.tracker.run_id,
            "rng": rngs,
        }

    def _latest_matching(self) -> dict[str, Any] | None:
        """Rank 0: the newest checkpoint made with these params, data and code (others are moved aside)."""
        folder = self.base / self.params.train.checkpoint_dir
        state = load_latest(folder, map_location="cpu")
        if state is None or state.get("fingerprint") == self.fingerprint:
            return state
        stale = folder / f"stale-{state.get('fingerprint', 'unknown')}"
        print(f"Checkpoints in {folder} belong to other params or data; moved to {stale}, starting fresh.")
        stale.mkdir(parents=True, exist_ok=True)
        for path in folder.glob("step-*.pt"):
            path.replace(stale / path.name)
        return None

    def _resume(self) -> int:
        """Load the newest matching checkpoint (read by rank 0, sent to every rank); returns its step, or 0."""
        folder = self.base / self.params.train.checkpoint_dir
        state = distributed.from_main(self._latest_matching() if self.world.main else None)
        if state is None:
            return 0
        written_by = int(state.get("world_size", 1))
        if written_by != self.world.size:
            raise TrainingError(
                f"the checkpoints in {folder} were written by {written_by} training processes and this run has "
                f"{self.world.size}: resuming exactly needs the same world; set train.distributed so that "
                f"nproc_per_node x nnodes = {written_by}, or move {folder} away to start fresh"
            )
        for name, obj in self.stateful().items():
            obj.load_state_dict(state[name])
        self.history = list(state["history"])
        restore_rng_state(state["rng"][self.world.rank])
        self.tracker.resume(state.get("run_id"))
        if self.world.main:
            print(f"Resuming from step {state['step']} ({folder}).")
        return int(state["step"])

    # ---- the loop ----------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train from the newest matching checkpoint to train.steps; rank 0 exports. Every rank returns the result
        (the other ranks without waiting for rank 0's export: their model folder is the one it writes)."""
        try:
            return self._run()
        finally:
            distributed.leave()

    def _run(self) -> TrainResult:
        tp = self.params.train
        start = self._resume()
        self.tracker.start(self.params, self.data_hash)
        window: dict[str, list[torch.Tensor]] = defaultdict(list)
        progress = Progress(tp.steps, initial=start, desc=f"train {self.task.name}") if self.world.main else None
        on_cuda = self.device.type == "cuda"
        depth = tp.prefetch if tp.prefetch != "auto" else (2 if on_cuda else 0)
        batches = Prefetcher(self.make_batch, start, tp.steps, depth, pin=on_cuda)
        t0 = time.perf_counter()
        try:
            for step in range(start, tp.steps):
                self.set_train_mode()
                for key, value in self.train_step(step, batches.get(step)).items():
                    window[key].append(value)
                done = step + 1
                if done % tp.log_every == 0 or done == tp.steps:
                    values = {k: float(np.mean([float(t) for t in v])) for k, v in window.items()}  # the host sync
                    means = distributed.mean_across(values, self.device)
                    row: dict[str, float] = {"step": done, **means, "lr_g": self.sched_g.get_last_lr()[0]}
                    if self.world.main and (done % tp.sample_every == 0 or done == tp.steps):
                        row.update(self.validate(done))
                    self.history.append(row)
                    self.tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, done)
                    if progress:
                        progress.show({k: v for k, v in row.items() if k in self.progress_keys})
                    window.clear()
                if done % tp.checkpoint_every == 0 or done == tp.steps:
                    state = self._state()
                    if state is not None:
                        save_checkpoint(self.base / tp.checkpoint_dir, done, state, tp.keep_checkpoints)
                    distributed.barrier()
                if progress:
                    progress.update()
        finally:
            batches.close()
            if progress:
                progress.close()
        elapsed = time.perf_counter() - t0
        metrics = {k: v for k, v in (self.history[-1] if self.history else {}).items() if k != "step"}
        metrics["train_seconds"] = elapsed
        metrics["data_wait_share"] = batches.waited_s / elapsed if elapsed > 0 else 0.0
        model_dir = self.base / tp.out_dir
        if self.world.main:
            model_dir = self._export()
            self.tracker.finish(model_dir, self.base / tp.report_dir, metrics)
        return TrainResult(model_dir, tp.steps, start, self.tracker.run_id, metrics)

    def _export(self) -> Path:
        """Write the deliverable generator (safetensors + card) and the training curves."""
        tp = self.params.train
        last = self.history[-1] if self.history else {}
        net, extra = self.deliverable()
        card = ModelCard(
            arch=self.params.model.generator.name,
            arch_kwargs=self.params.model.generator.kwargs,
            **self.task.card_fields(),
            **extra,
            task_params=self.task.card_params(),
            data_hash=self.data_hash,
            git_commit=git_commit(self.base),
            mlflow_run_id=self.tracker.run_id,
            params_fingerprint=self.fingerprint,
            steps=tp.steps,
            metrics={key: last[key] for key in self.card_metric_keys if key in last},
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            gan_enhance_version=gan_enhance.__version__,
        )
        out = self.base / tp.out_dir
        if out.exists():
            shutil.rmtree(out)
        save_generator(net, card, out)
        for name, (twin, steps) in self.twins().items():
            save_generator(twin, replace(card, steps=steps, metrics={}), out / name)
        self._write_curves(self.base / tp.report_dir)
        return out

    def _write_curves(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        keys = sorted({k for row in self.history for k in row} - {"step"})
        with (folder / CURVES_FILE).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["step", *keys])
            writer.writeheader()
            writer.writerows(self.history)
        plot_curves(self.history, folder / "curves.png", f"training: {self.task.name}", self.curve_markers())


class OneGANTrainer(BaseTrainer):
    """A trainer with one generator, one discriminator and one EMA copy (the paired and DCGAN trainers)."""

    G: nn.Module
    D: nn.Module

    def stateful(self) -> dict[str, Any]:
        return {
            "G": self.G,
            "D": self.D,
            "EMA": self.ema.model,
            "opt_g": self.opt_g,
            "opt_d": self.opt_d,
            "sched_g": self.sched_g,
            "sched_d": self.sched_d,
        }
