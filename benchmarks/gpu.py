"""GPU speed per task: training images/s in fp32 and with bf16 autocast (train.amp), DDP over every visible GPU
with its scaling efficiency, the Enhancer's megapixels/s on a 1024 x 1024 input, and peak GPU memory.

Each task trains its benchmark config (benchmarks/configs/) for a few steps through the trainer's own loop
(`run()`: batches, EMA, logging, export), the untimed first steps excluded; every step is in the adversarial phase
(train.warmup_steps=0), so G and D both train. DDP runs the command line, `gan-enhance train` with
train.distributed.nproc_per_node=N (torchrun's elastic launcher), once with 1 process and once with N, each
process keeping the per-GPU batch (weak scaling; efficiency = images/s(N) / (N x images/s(1))); its steps are
timed between two checkpoints the run writes, so start-up, the last validation and the export are left out.
Measurements stop at the time budget (default 7.5 minutes), the rest marked skipped, so a run stays under 8.

    .venv/bin/python -m benchmarks.gpu                       # CUDA; without a GPU it says so and measures nothing
    .venv/bin/python -m benchmarks.gpu --device cpu --warmup-steps 1 --steps 2 --enhance-side 64 --out /tmp/x
                                                             # the same logic on the CPU (a smoke test, no timings)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

if not __package__:  # run as `python benchmarks/gpu.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import CONFIGS, REPO, RESULTS, WORK, config_params, describe_model, machine, machine_line
from gan_enhance.config import Params
from gan_enhance.data.prepare import prepare_stage
from gan_enhance.device import TELEMETRY_OFF, disable_telemetry
from gan_enhance.inference.base import Enhancer
from gan_enhance.kinds import KINDS
from gan_enhance.servers import kill_tree
from gan_enhance.tasks import build_task
from gan_enhance.training.checkpoint import list_checkpoints

TASKS = {  # task -> its benchmark config
    "sr": "sr_x4",
    "denoise": "denoise_s25",
    "inpaint": "inpaint",
    "translate": "translate_warm_film",
    "dcgan": "generate_digits",
}
NO_GPU = "no GPU: nothing measured"
MIB = 2**20
MIN_RUN_S = 30.0  # a `gan-enhance train` run for DDP starts only with this much of the budget left


@dataclass
class TrainSpeed:
    precision: str
    images_per_s: float
    step_ms: float
    peak_memory_mib: float | None  # torch.cuda.max_memory_allocated over construction and training
    steps_timed: int
    data_wait_share: float  # share of the training loop spent waiting for the next batch (train.prefetch: auto)


@dataclass
class DdpSpeed:
    processes: int
    per_process_batch: int
    images_per_s_1: float | None = None
    images_per_s_n: float | None = None
    efficiency: float | None = None  # images/s(N) / (N x images/s(1))
    note: str = ""


@dataclass
class EnhanceSpeed:
    what: str  # the input (or, for generation, the samples)
    megapixels_per_s: float
    seconds: float
    peak_memory_mib: float | None


@dataclass
class TaskResult:
    task: str
    model: str
    batch: int
    train: list[TrainSpeed] = field(default_factory=list)
    ddp: DdpSpeed | None = None
    enhance: EnhanceSpeed | None = None
    skipped: list[str] = field(default_factory=list)


class Budget:
    """Wall-clock budget: measurements that would start after it are skipped and named in the report."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / MIB if device.type == "cuda" else None


def run_overrides(device: str, steps: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Settings every measured run shares: the device, `steps` steps, no checkpoint or validation before the end,
    no MLflow."""
    return {
        "train.device": device,
        "train.steps": steps,
        "train.checkpoint_every": steps + 1,
        "train.sample_every": steps + 1,
        "train.log_every": steps,
        "tracking.enabled": False,
        **(extra or {}),
    }


def train_speed(params: Params, warmup: int, precision: str) -> tuple[TrainSpeed, Path]:
    """Train `params` through the trainer's loop, timing each step after the first `warmup`; returns the speed
    and the exported model folder."""
    trainer_class = KINDS[build_task(params.task).kind].load_trainer()
    for folder in (params.train.checkpoint_dir, params.train.out_dir):
        shutil.rmtree(folder, ignore_errors=True)  # no resume from an earlier run
    device = torch.device(params.train.device)
    _reset_peak(device)
    trainer = trainer_class(params, base=REPO)
    marks: list[float] = []
    step = trainer.train_step

    def timed(*args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        out = step(*args, **kwargs)
        if len(marks) + 1 in (warmup, params.train.steps):  # only the two marks timed between wait for the GPU:
            _sync(device)  # a sync after every step would add the host round trip the trainer avoids
        marks.append(time.perf_counter())
        return out

    trainer.train_step = timed
    result = trainer.run()
    timed_steps = len(marks) - warmup
    seconds = marks[-1] - marks[warmup - 1]
    speed = TrainSpeed(
        precision=precision,
        images_per_s=params.train.batch_size * timed_steps / seconds,
        step_ms=1000 * seconds / timed_steps,
        peak_memory_mib=_peak_mib(device),
        steps_timed=timed_steps,
        data_wait_share=result.metrics["data_wait_share"],
    )
    return speed, result.model_dir


def _enhance_call(enhancer: Enhancer, side: int) -> tuple[str, float, Callable[[], None]]:
    """What one timed call does, its description and the megapixels it handles."""
    rng = np.random.default_rng(0)
    if enhancer.inputs == "latent":
        n = max(1, (side * side) // (enhancer.card.image_size**2))
        return (
            f"{n} samples of {enhancer.card.image_size} px",
            n * enhancer.card.image_size**2 / 1e6,
            (lambda: enhancer.sample(n)),
        )
    image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    if enhancer.takes_mask:
        mask = np.zeros((side, side), np.uint8)
        mask[side // 4 : side // 2, side // 4 : side // 2] = 255  # a square hole, 1/16 of the image
        return f"{side} x {side} input + mask", side * side / 1e6, lambda: enhancer.enhance_array(image, mask)
    return f"{side} x {side} input", side * side / 1e6, lambda: enhancer.enhance_array(image)


def enhance_speed(model_dir: Path, device: torch.device, side: int, repeats: int) -> EnhanceSpeed:
    """The Enhancer with `gan-enhance enhance`'s defaults for the device (on CUDA: bf16, tiles planned from free
    memory; on the CPU: fp32, tiles of 256) on a side x side input: megapixels of input per s."""
    enhancer = Enhancer.from_dir(model_dir, device=device.type)
    what, megapixels, call = _enhance_call(enhancer, side)
    call()  # warm-up: kernels, allocator
    _sync(device)
    _reset_peak(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        _sync(device)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return EnhanceSpeed(what, megapixels / seconds, seconds, _peak_mib(device))


def cli_images_per_s(
    config: str, work: Path, overrides: dict[str, Any], processes: int, warmup: int, timeout_s: float
) -> float:
    """`gan-enhance train` with `processes` processes: images/s over the steps between its checkpoints at
    `warmup` and 2 x `warmup` (the run goes to 3 x `warmup`, so the last validation and the export fall after)."""
    settings = {
        **yaml.safe_load((CONFIGS / f"{config}.yaml").read_text()),
        **overrides,
        "train.out_dir": str(work / "generator"),
        "train.checkpoint_dir": str(work / "checkpoints"),
        "train.report_dir": str(work / "train_report"),
        **run_overrides(overrides["train.device"], 3 * warmup),
        "train.checkpoint_every": warmup,
        "train.keep_checkpoints": 3,
        "train.distributed.nproc_per_node": processes,
    }
    shutil.rmtree(work, ignore_errors=True)
    command = [sys.executable, "-m", "gan_enhance", "train", "-p", str(REPO / "params.yaml")]
    for key, value in settings.items():
        command += ["-S", f"{key}={json.dumps(value)}"]
    env = {**os.environ, **TELEMETRY_OFF, "GAN_ENHANCE_PROGRESS_SECONDS": "3600"}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_tree(proc)  # the launcher's workers run in sessions of their own: else they keep the GPUs busy
        raise
    if proc.returncode:
        tail = "\n".join(output.splitlines()[-15:])
        raise RuntimeError(f"`gan-enhance train` with {processes} process(es) exited {proc.returncode}:\n{tail}")
    stamps = {int(p.stem.split("-")[1]): p.stat().st_mtime for p in list_checkpoints(work / "checkpoints")}
    return settings["train.batch_size"] * warmup / (stamps[2 * warmup] - stamps[warmup])


def ddp_speed(
    config: str,
    params: Params,
    work: Path,
    shared: dict[str, Any],
    processes: int,
    warmup: int,
    budget: Budget,
    timeout_s: float,
) -> DdpSpeed:
    """Images/s of the command line with 1 and with `processes` processes, the per-process batch kept."""
    batch = params.train.batch_size
    speed = DdpSpeed(processes=processes, per_process_batch=batch)
    shared = {**shared, "train.device": params.train.device, "train.amp": True}  # bf16: the precision of larger runs
    for n in (1, processes):
        limit = min(timeout_s, budget.left())
        if limit < MIN_RUN_S:
            speed.note = f"{n}-process run skipped: time budget"
            return speed
        overrides = {**shared, "train.batch_size": batch * n}
        try:
            ips = cli_images_per_s(config, work / f"ddp-{n}", overrides, n, warmup, limit)
        except subprocess.TimeoutExpired:
            speed.note = f"{n}-process run stopped after {limit:.0f} s"
            return speed
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            speed.note = f"{n}-process run failed: {str(exc).splitlines()[-1]}"
            return speed
        if n == 1:
            speed.images_per_s_1 = ips
        else:
            speed.images_per_s_n = ips
    if speed.images_per_s_1 and speed.images_per_s_n:
        speed.efficiency = speed.images_per_s_n / (processes * speed.images_per_s_1)
    return speed


def measure_task(task: str, args: argparse.Namespace, budget: Budget) -> TaskResult:
    config = TASKS[task]
    work = (args.work / f"gpu-{task}").resolve()
    steps = args.warmup_steps + args.steps
    shared: dict[str, Any] = {"data.prepared_dir": str(work / "prepared")}  # one prepared copy for every run
    kind = KINDS[build_task(config_params(config, work, shared).task).kind]
    if "warmup_steps" not in kind.unread_train_keys:
        shared["train.warmup_steps"] = 0  # every step adversarial: G and D both train
    base = config_params(config, work, run_overrides(args.device, steps, shared))
    prepare_stage(base, base=REPO)
    result = TaskResult(task=task, model=describe_model(base), batch=base.train.batch_size)
    model_dir = None
    for precision, amp in (("fp32", False), ("bf16", True)):
        if budget.left() <= 0:
            result.skipped.append(f"training {precision}: time budget")
            continue
        overrides = run_overrides(args.device, steps, {**shared, "train.amp": amp})
        speed, folder = train_speed(config_params(config, work / precision, overrides), args.warmup_steps, precision)
        result.train.append(speed)
        model_dir = model_dir or folder
    device = torch.device(args.device)
    if model_dir is None or budget.left() <= 0:
        result.skipped.append("Enhancer: time budget")
    else:
        result.enhance = enhance_speed(model_dir, device, args.enhance_side, args.enhance_repeats)
    if args.ddp_processes >= 2:
        result.ddp = ddp_speed(
            config, base, work, shared, args.ddp_processes, args.ddp_warmup_steps, budget, args.ddp_timeout
        )
    else:
        result.ddp = DdpSpeed(args.ddp_processes, base.train.batch_size, note=args.ddp_note)
    return result


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(results: list[TaskResult]) -> str:
    lines = [
        "| task: model | batch | fp32 images/s | bf16 images/s | bf16 speed-up | peak memory fp32 / bf16 (MiB) "
        "| waiting for data fp32 / bf16 | DDP: processes, images/s (1 -> N) | scaling efficiency "
        "| Enhancer MP/s (input) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        by = {s.precision: s for s in r.train}
        fp32, bf16 = by.get("fp32"), by.get("bf16")
        speedup = bf16.images_per_s / fp32.images_per_s if fp32 and bf16 else None
        memory = " / ".join(_fmt(s.peak_memory_mib, 0) if s else "-" for s in (fp32, bf16))
        waiting = " / ".join(f"{100 * s.data_wait_share:.1f} %" if s else "-" for s in (fp32, bf16))
        ddp = r.ddp
        ddp_cell = (
            f"{ddp.processes}: {_fmt(ddp.images_per_s_1)} -> {_fmt(ddp.images_per_s_n)}"
            if ddp and ddp.processes >= 2
            else "-"
        )
        ddp_cell += f" ({ddp.note})" if ddp and ddp.note else ""
        enhance = f"{_fmt(r.enhance.megapixels_per_s, 2)} ({r.enhance.what})" if r.enhance else "-"
        lines.append(
            f"| {r.task}: {r.model} | {r.batch} | {_fmt(fp32.images_per_s if fp32 else None)} "
            f"| {_fmt(bf16.images_per_s if bf16 else None)} | {_fmt(speedup, 2)} | {memory} | {waiting} | {ddp_cell} "
            f"| {_fmt(ddp.efficiency if ddp else None, 2)} | {enhance} |"
        )
    return "\n".join(lines)


def write_report(out: Path, info: dict[str, Any], body: str, data: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps({"machine": info, **data}, indent=2) + "\n")
    (out / "gpu.md").write_text(f"# GPU speed per task\n\n{machine_line(info)}.\n\n{body}\n")
    print(f"wrote {out / 'gpu.md'} and gpu.json")


def gpu_line(device: str) -> str:
    if device != "cuda":
        return f"device {device} (a smoke run of the benchmark's logic: the figures are not GPU figures)"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"{len(names)} x {names[0]}, CUDA {torch.version.cuda}" if names else "no GPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS), help="(default: all)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a smoke run of the logic")
    parser.add_argument("--warmup-steps", type=int, default=30, help="untimed steps per run (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per run (default: %(default)s)")
    parser.add_argument(
        "--ddp-processes",
        type=int,
        help="processes for the DDP measurement (default: every visible GPU; on the CPU 0, i.e. none)",
    )
    parser.add_argument(
        "--ddp-warmup-steps", type=int, default=50, help="DDP: untimed steps, also the timed count (default: 50)"
    )
    parser.add_argument("--ddp-timeout", type=float, default=150.0, help="seconds per `gan-enhance train` run")
    parser.add_argument("--enhance-side", type=int, default=1024, help="Enhancer input side (default: 1024)")
    parser.add_argument("--enhance-repeats", type=int, default=3, help="timed Enhancer calls, median (default: 3)")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds before measurements are skipped")
    parser.add_argument("--out", type=Path, default=RESULTS, help="report folder (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=WORK, help="scratch folder (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.warmup_steps < 1 or args.steps < 1:
        parser.error("--warmup-steps and --steps must be >= 1 (the first timed step needs a step before it)")
    disable_telemetry()
    info = machine()
    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_GPU)
        info["gpu"] = "none"
        write_report(
            args.out,
            info,
            f"**{NO_GPU}**: torch {torch.__version__} sees no CUDA device on this machine (CUDA build: "
            f"{torch.version.cuda or 'none'}). Run `python -m benchmarks.gpu` on a machine with a GPU; "
            "`--device cpu` runs the same logic on the CPU as a smoke test.",
            {"measured": False, "reason": NO_GPU, "results": []},
        )
        return 0
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    if args.ddp_processes is None:
        args.ddp_processes = gpus
    args.ddp_note = (
        f"{gpus} GPU visible: DDP scaling needs 2 or more" if args.device == "cuda" else "not run (--ddp-processes)"
    )
    info["gpu"] = gpu_line(args.device)
    budget = Budget(args.budget)
    started = time.perf_counter()
    results = []
    for task in args.tasks:
        if budget.left() <= 0:
            results.append(TaskResult(task, "-", 0, skipped=["time budget"]))
            continue
        try:
            results.append(measure_task(task, args, budget))
        except Exception as exc:  # one task's failure must not cost the others' figures (a GPU session is short)
            traceback.print_exc()
            results.append(TaskResult(task, "-", 0, skipped=[f"failed: {type(exc).__name__}: {exc}"]))
        print(table(results[-1:]).splitlines()[-1])
    info["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    info["wall_seconds"] = round(time.perf_counter() - started, 1)
    rendered = table(results)
    print(rendered)
    skipped = [f"{r.task}: {s}" for r in results for s in r.skipped]
    write_report(
        args.out,
        info,
        f"{info['gpu']}; {info['wall_seconds']} s in all.\n\n"
        f"Training: {args.steps} timed steps after {args.warmup_steps} untimed, all in the adversarial phase (G and "
        "D), through the trainer's own loop; images/s = batch x steps / s; bf16 = train.amp (bfloat16 autocast). "
        "Peak memory: torch.cuda.max_memory_allocated from building the trainer to the export. "
        f"DDP: `gan-enhance train` with 1 and N processes in bf16, the per-process batch kept (weak scaling), "
        f"{args.ddp_warmup_steps} steps timed between two checkpoints after {args.ddp_warmup_steps} untimed; "
        "efficiency = images/s(N) / (N x images/s(1)). Enhancer: `gan-enhance enhance`'s defaults for "
        "the device (CUDA: bf16, tiles planned from free memory; benchmarks/roofline.py compares fp32), "
        f"median of {args.enhance_repeats} calls after one warm-up, megapixels of input per second "
        "(generation: of samples)."
        f"\n\n{rendered}\n" + (f"\nSkipped: {'; '.join(skipped)}.\n" if skipped else ""),
        {
            "measured": True,
            "settings": {k: str(v) for k, v in vars(args).items()},
            "results": [asdict(r) for r in results],
        },
    )
    failed = [r.task for r in results if any(s.startswith("failed") for s in r.skipped)]
    if failed:
        print(f"error: {', '.join(failed)} failed (traceback above; the report names the error)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
