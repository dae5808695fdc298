"""Training scaling on this machine: steps/s and images/s of the train stage with 1 and 2 processes (torch.distributed,
gloo, 1 thread each by default), the scaling efficiency, and the share of step time spent waiting for the next batch,
with the batch made ahead on a thread (train.prefetch=2) and made inline (prefetch=0).

Each measurement is a real `gan_enhance.training.stage.train` call (the 2-process one launches itself through
torchrun's elastic launcher) from a fresh checkpoint folder, with the same global batch; steps/s comes from rank 0's
training-loop time (process start, data loading and export excluded; the launch overhead is reported apart). The
pixel-loss (warm-up) and adversarial phases are measured apart: the adversarial step also all-reduces the
discriminator's gradients. Runs are repeated in rounds, order alternating, and the fastest round of each setting
is kept (other processes on a shared machine only ever add time).

    .venv/bin/python -m benchmarks.train_scaling            # default run's SR x4 model, writes benchmarks/results/
    .venv/bin/python benchmarks/train_scaling.py --help
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if not __package__:  # run as `python benchmarks/train_scaling.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, RESULTS, WORK, describe_model, machine, machine_line, work_params
from gan_enhance.config import Params, parse_overrides
from gan_enhance.data.prepare import prepare
from gan_enhance.device import disable_telemetry
from gan_enhance.training.stage import train

PHASES = ("warm-up", "adversarial")


@dataclass
class Setting:
    phase: str
    processes: int
    prefetch: int

    @property
    def label(self) -> str:
        return f"{self.phase}, {self.processes} process(es), prefetch {self.prefetch}"


@dataclass
class Measured:
    phase: str
    processes: int
    prefetch: int
    steps: int
    batch: int
    loop_seconds: list[float]  # per round: rank 0's training loop
    wall_seconds: list[float]  # per round: the whole train() call (launch, data, export included)
    data_wait_share: list[float]  # per round: share of the loop spent waiting for (or making) batches

    @property
    def best(self) -> int:
        return min(range(len(self.loop_seconds)), key=self.loop_seconds.__getitem__)

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.loop_seconds[self.best]

    @property
    def images_per_s(self) -> float:
        return self.steps_per_s * self.batch


def _params(work: Path, extra: dict[str, Any], setting: Setting, steps: int, threads: int) -> Params:
    return work_params(
        work,
        {
            **extra,
            "train.steps": steps,
            "train.warmup_steps": steps if setting.phase == "warm-up" else 0,
            "train.threads": threads,
            "train.prefetch": setting.prefetch,
            "train.distributed.nproc_per_node": setting.processes,
            "train.checkpoint_every": steps,
            "train.log_every": steps,
            "train.sample_every": steps,
        },
    )


def measure(
    work: Path, extra: dict[str, Any], settings: list[Setting], steps: int, rounds: int, threads: int
) -> list[Measured]:
    batch = work_params(work, extra).train.batch_size
    results = {s.label: Measured(s.phase, s.processes, s.prefetch, steps, batch, [], [], []) for s in settings}
    for r in range(rounds):
        for setting in settings if r % 2 == 0 else list(reversed(settings)):
            params = _params(work, extra, setting, steps, threads)
            shutil.rmtree(params.train.checkpoint_dir, ignore_errors=True)
            started = time.perf_counter()
            result = train(params, base=REPO)
            wall = time.perf_counter() - started
            got = results[setting.label]
            got.loop_seconds.append(result.metrics["train_seconds"])
            got.wall_seconds.append(wall)
            got.data_wait_share.append(result.metrics["data_wait_share"])
            print(
                f"round {r + 1}/{rounds} {setting.label}: {steps / result.metrics['train_seconds']:.2f} steps/s, "
                f"waiting for data {100 * result.metrics['data_wait_share']:.1f} % of the loop, {wall:.1f} s in all",
                flush=True,
            )
    return list(results.values())


def table(results: list[Measured]) -> str:
    single = {(m.phase, m.prefetch): m for m in results if m.processes == 1}
    lines = [
        "| phase | processes | prefetch | steps/s | images/s | scaling efficiency | waiting for data | "
        "whole call (launch, data, export), s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in results:
        one = single.get((m.phase, m.prefetch))
        efficiency = f"{m.images_per_s / (m.processes * one.images_per_s):.2f}" if one and m.processes > 1 else "-"
        lines.append(
            f"| {m.phase} | {m.processes} | {m.prefetch} | {m.steps_per_s:.2f} | {m.images_per_s:.1f} | {efficiency} "
            f"| {100 * m.data_wait_share[m.best]:.1f} % | {m.wall_seconds[m.best]:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="steps/s and images/s of the train stage with 1 and 2 processes (--threads each), the scaling "
        "efficiency, and the share of the loop spent waiting for batches; writes train_scaling.md and .json.",
    )
    parser.add_argument("--steps", type=int, default=30, help="training steps per run (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="repeats of every setting (default: %(default)s)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="world sizes (default: 1 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default: %(default)s)")
    parser.add_argument("--prefetch", type=int, nargs="+", default=[2, 0], help="train.prefetch values (default: 2 0)")
    parser.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES, help="training phases")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="params overrides (dotted keys)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="report folder (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=WORK, help="scratch folder (default: %(default)s)")
    args = parser.parse_args(argv)
    disable_telemetry()
    work = (args.work / "train_scaling").resolve()
    extra = parse_overrides(args.set)
    base = work_params(work, extra)
    prepare(base.data, min_side=base.train.patch_size)
    settings = [Setting(ph, n, pf) for ph in args.phases for pf in args.prefetch for n in args.processes]
    info = machine()
    started = time.perf_counter()
    results = measure(work, extra, settings, args.steps, args.rounds, args.threads)
    info["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    info["wall_seconds"] = round(time.perf_counter() - started, 1)
    rendered = table(results)
    print(rendered)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": info,
        "model": describe_model(base),
        "steps": args.steps,
        "rounds": args.rounds,
        "threads_per_process": args.threads,
        "results": [{**asdict(m), "steps_per_s": m.steps_per_s, "images_per_s": m.images_per_s} for m in results],
    }
    (args.out / "train_scaling.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "train_scaling.md").write_text(
        "# Training scaling: 1 and 2 processes on this machine\n\n"
        f"{machine_line(info)}.\n"
        f"Model: {describe_model(base)} (global batch; each of N processes trains batch / N). {args.steps} steps per "
        f"run, {args.rounds} round(s) per setting (order alternating), fastest round kept. Every process runs "
        f"{args.threads} torch thread(s). steps/s from rank 0's training loop; scaling efficiency = images/s(N) / "
        "(N x images/s(1)) at the same prefetch; waiting for data = share of the loop spent waiting for the next "
        "batch (prefetch 0: making it)."
        f"\n\n{rendered}\n"
    )
    print(f"wrote {args.out / 'train_scaling.md'} and .json in {info['wall_seconds']} s")


if __name__ == "__main__":
    main()
