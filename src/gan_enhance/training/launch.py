"""`gan-enhance train` with more than one process: it launches itself through PyTorch's elastic launcher (what
torchrun runs), one worker per process, each running the train stage as one rank.

On one node the rendezvous takes a free port on 127.0.0.1; on several nodes every node runs the same command with
the same train.distributed (nnodes, rdzv_endpoint), and the c10d rendezvous at the endpoint assembles the group.
The launcher restarts the whole group up to train.distributed.max_restarts times when a process fails; the
workers then resume from the newest checkpoint. What can be checked before any work is checked here: the number
of GPUs, the backend, the batch's split over the processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from gan_enhance.config import Params
from gan_enhance.training.base import TrainingError, TrainResult, check_batch_split

WORKER_MODULE = "gan_enhance.training.stage"


def _uses_cuda(params: Params) -> bool:
    return params.train.device == "cuda" or (params.train.device == "auto" and torch.cuda.is_available())


def processes_per_node(params: Params) -> int:
    """train.distributed.nproc_per_node resolved ('auto': one per visible GPU, else 1) and checked against the
    GPUs this node has."""
    asked = params.train.distributed.nproc_per_node
    gpus = torch.cuda.device_count() if _uses_cuda(params) else 0
    if asked == "auto":
        return max(gpus, 1)
    if gpus and asked > gpus:
        raise TrainingError(
            f"train.distributed.nproc_per_node={asked} but this node has {gpus} GPU(s); set it to {gpus} or auto "
            "(one process per GPU), or train.device=cpu to train on the CPU"
        )
    return asked


def world_size(params: Params) -> int:
    """Processes in the whole training: per node x nodes."""
    return processes_per_node(params) * params.train.distributed.nnodes


def check_world(params: Params) -> int:
    """The world size, after the checks that need no data: the batch splits evenly, the backend fits the device."""
    world = world_size(params)
    tp = params.train
    check_batch_split(tp.batch_size, world)
    if tp.distributed.backend == "nccl" and not _uses_cuda(params):
        raise TrainingError("train.distributed.backend=nccl needs CUDA GPUs; use auto or gloo to train on the CPU")
    return world


def _threads_per_process(params: Params, nproc: int) -> str:
    """OMP_NUM_THREADS for each worker: train.threads, else the node's cores shared out (torchrun sets 1)."""
    return str(params.train.threads or max(1, (os.cpu_count() or 1) // nproc))


def _failure_message(exc: Exception) -> str:
    """The first failed worker's own error message (from the error file `record` writes), else the launcher's."""
    failures = getattr(exc, "failures", None)
    if not failures:
        return str(exc)
    rank, failure = min(failures.items())
    message: Any = failure.message
    if isinstance(message, dict):
        message = message.get("message", message)
    return f"rank {rank} (exit code {failure.exitcode}): {message}"


@contextlib.contextmanager
def _worker_threads(threads: str) -> Iterator[None]:
    """OMP_NUM_THREADS for the workers the launcher starts (a value already set wins), restored on the way out, so
    that nothing else this process starts later inherits it."""
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ.setdefault("OMP_NUM_THREADS", threads)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before


def launch(params: Params, base: Path = Path(".")) -> TrainResult:
    """Train with train.distributed's processes; returns rank 0's result (on a node without rank 0: the model
    folder, with no run id or metrics)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    dp = params.train.distributed
    world = check_world(params)
    nproc = processes_per_node(params)
    single_node = dp.nnodes == 1
    config = LaunchConfig(
        min_nodes=dp.nnodes,
        max_nodes=dp.nnodes,
        nproc_per_node=nproc,
        run_id=f"gan-enhance-{params.fingerprint('seed', 'task', 'model', 'train')}",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0" if single_node else dp.rdzv_endpoint,
        rdzv_configs={"is_host": True} if single_node else {},
        max_restarts=dp.max_restarts,
        monitor_interval=0.5,
        start_method="spawn",
    )
    threads = _threads_per_process(params, nproc)
    with _worker_threads(threads), tempfile.TemporaryDirectory(prefix="gan-enhance-launch-") as tmp:
        params_file, result_file = Path(tmp) / "params.json", Path(tmp) / "result.json"
        params_file.write_text(json.dumps(params.model_dump(mode="json")))
        print(f"Training with {world} processes ({nproc} per node x {dp.nnodes} node(s), restarts {dp.max_restarts}).")
        args = ("-m", WORKER_MODULE, "--params", str(params_file), "--base", str(base.resolve()))
        try:
            elastic_launch(config, entrypoint=sys.executable)(*args, "--result", str(result_file))
        except ChildFailedError as exc:
            raise TrainingError(f"distributed training failed: {_failure_message(exc)}") from None
        if not result_file.is_file():
            return TrainResult(base / params.train.out_dir, params.train.steps, -1, None, {})
        saved = json.loads(result_file.read_text())
    return TrainResult(
        Path(saved["model_dir"]), saved["steps"], saved["resumed_from"], saved["run_id"], saved["metrics"]
    )
