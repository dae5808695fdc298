"""This process's place among the training processes, and the few collectives the trainers need (torch.distributed).

A process started by torchrun's elastic launcher finds RANK, LOCAL_RANK and WORLD_SIZE in its environment; a
process started any other way is a world of one, and every collective below is then a no-op, so the single-process
path runs exactly as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

# how long a rank waits for the others at a collective: rank 0 alone talks to MLflow and writes checkpoints, and a
# slow tracking server must not make the others give up (NCCL's default is 10 minutes)
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """Rank, local rank (the GPU index on its node) and world size of this process."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, exports, curves, MLflow runs and the progress bar."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, batch: int) -> range:
        """Indices of the global batch this rank trains on (contiguous, rank order)."""
        local = batch // self.size
        return range(self.rank * local, (self.rank + 1) * local)


def launched_world() -> World:
    """The world torchrun describes in the environment (a world of one when it did not start this process)."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))


def under_launcher() -> bool:
    """Whether torchrun (or the elastic launcher) started this process as one of its workers."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def _attempt_store(world: World) -> dist.Store | None:
    """The launcher's key-value store, under a prefix of its own for this attempt (None: not launched that way).

    The elastic agent keeps one store for all restarts of the group, so without a prefix a restarted group would
    read the network addresses the killed one left there (gloo: "connectFullMesh failed ... Connection refused").
    """
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), world.size, is_master=False)
    return dist.PrefixStore(f"gan-enhance/attempt-{env.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def join(world: World, device: torch.device, backend: str = "auto") -> None:
    """Join the process group (nccl on CUDA, gloo otherwise, unless `backend` names one)."""
    if not world.distributed or dist.is_initialized():
        return
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend,
        timeout=COLLECTIVE_TIMEOUT,
        store=_attempt_store(world),
        rank=world.rank,
        world_size=world.size,
        device_id=device if backend == "nccl" else None,
    )


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def mean_across(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean of each value over all ranks (each rank holds the mean over its equal share of the batch)."""
    if not dist.is_initialized() or not values:
        return values
    keys = sorted(values)
    stacked = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(stacked)
    stacked /= dist.get_world_size()
    return dict(zip(keys, stacked.tolist(), strict=True))


def global_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean of `values` over every rank's share (equal shapes), with its gradient: the autograd-aware all-reduce
    sends each rank's share of the gradient back through the other ranks' losses, so N processes compute the
    gradient one process would over the whole batch."""
    if not dist.is_initialized():
        return values.mean()
    return _SumAcrossRanks.apply(values.sum()) / (values.numel() * dist.get_world_size())


class _SumAcrossRanks(torch.autograd.Function):
    """The sum of a tensor over all ranks; its gradient is the sum of the ranks' gradients (all-reduce both ways)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` (same shape on each), concatenated along dim 0 in rank order, on every rank."""
    if not dist.is_initialized():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable `obj`, in rank order, on every rank."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def from_main(obj: Any) -> Any:
    """Rank 0's picklable `obj`, on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap(net: nn.Module, device: torch.device, sync_buffers: bool = True) -> nn.Module:
    """`net` under DistributedDataParallel when several processes train (else `net` itself).

    A discriminator passes sync_buffers=False: it runs forward twice (real, fake) before one backward, and a buffer
    broadcast at the second forward would overwrite, in place, spectral-norm vectors the first one saved for
    backward. Its buffers stay equal across ranks anyway (they are synced once, when wrapped, and spectral norm's
    power iteration depends on the weights only).
    """
    if not dist.is_initialized():
        return net
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(net, device_ids=ids, forward_sync_buffers=sync_buffers)


def sync_batchnorm(net: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm layers as SyncBatchNorm on CUDA with several processes (batch statistics over the global batch).
    On CPU, torch has no SyncBatchNorm: each rank normalizes by the statistics of its own share."""
    if dist.is_initialized() and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(net)
    return net
