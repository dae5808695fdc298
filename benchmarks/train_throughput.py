"""Trainer throughput: `PairedTrainer.train_step` steps/s against a bare forward/backward loop of the same networks.

The bare loop runs the same G and D, batch, patch, losses, gradient clipping and Adam steps on batches made
before timing; it leaves out what the trainer adds around the maths: patch sampling, degradation, EMA,
LR schedulers and logging. The ratio trainer / bare (target >= 0.85) is measured per phase (pixel-loss
warm-up, adversarial) in one process, interleaving the two loops step by step; as the machine is shared, the
ratio is given from the fastest rounds (noise only adds time), as a median of per-round ratios, and by CPU time.

    .venv/bin/python -m benchmarks.train_throughput            # both configs, writes benchmarks/results/
    .venv/bin/python benchmarks/train_throughput.py --help
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

if not __package__:  # run as `python benchmarks/train_throughput.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, RESULTS, WORK, config_names, config_params, describe_model, machine, machine_line
from gan_enhance.config import Params
from gan_enhance.data.batches import sample_rngs
from gan_enhance.data.prepare import prepare
from gan_enhance.device import disable_telemetry
from gan_enhance.kinds import KINDS
from gan_enhance.tasks import build_task
from gan_enhance.training import losses
from gan_enhance.training.paired import PairedTrainer

PHASES = ("warm-up", "adversarial")
TARGET_RATIO = 0.85


@dataclass
class PhaseResult:
    config: str
    phase: str
    threads: int
    trainer_steps_per_s: float  # median over rounds, wall clock
    bare_steps_per_s: float
    ratio_best: float  # trainer / bare steps/s from each loop's fastest round (other processes only add time)
    ratio_median: float  # median of the per-round ratios (each round pairs adjacent blocks)
    ratio_q1: float  # quartiles of the per-round ratios: the noise
    ratio_q3: float
    ratio_cpu: float  # median per-round ratio of process CPU time
    rounds: int
    steps_per_block: int
    trainer_wall_s: list[float]  # seconds per step, per round
    bare_wall_s: list[float]


class BareLoop:
    """The trainer's step without the trainer: same networks (copies), losses, clipping and Adam updates."""

    def __init__(self, trainer: PairedTrainer, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        tp = trainer.params.train
        self.tp = tp
        self.task = trainer.task
        self.G = copy.deepcopy(trainer.G)
        self.D = copy.deepcopy(trainer.D)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=tp.lr_g, betas=tp.betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=tp.lr_d, betas=tp.betas)
        self.batches = batches

    def _clip(self, net: torch.nn.Module) -> None:
        if self.tp.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), self.tp.grad_clip)

    def step(self, i: int, adversarial: bool) -> None:
        tp = self.tp
        inp, target = self.batches[i % len(self.batches)]
        fake = self.G(inp)
        if adversarial:
            self.D.requires_grad_(True)
            real_logits, _ = self.D(target)
            fake_logits, _ = self.D(fake.detach())
            loss_d = losses.discriminator_loss(tp.gan_loss, real_logits, fake_logits)
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self._clip(self.D)
            self.opt_d.step()
        loss_g = tp.weights.pixel * self.task.pixel_loss(partial(losses.pixel_loss, tp.pixel_loss), fake, target, inp)
        if adversarial:
            self.D.requires_grad_(False)
            fake_logits, fake_feats = self.D(fake)
            with torch.no_grad():
                real_logits, real_feats = self.D(target)
            loss_g = (
                loss_g
                + tp.weights.adversarial * losses.generator_adv_loss(tp.gan_loss, real_logits, fake_logits)
                + tp.weights.feature_matching * losses.feature_matching_loss(real_feats, fake_feats)
            )
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self._clip(self.G)
        self.opt_g.step()


def time_block(run: Callable[[int], None], first: int, count: int) -> tuple[float, float]:
    """(wall, CPU) seconds per step over `count` steps."""
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(first, first + count):
        run(i)
    return (time.perf_counter() - wall) / count, (time.process_time() - cpu) / count


def measure(name: str, params: Params, rounds: int, block: int, warmup_calls: int) -> list[PhaseResult]:
    """Interleave blocks of trainer and bare steps (order alternating per round); medians per phase."""
    trainer = PairedTrainer(params, base=REPO)
    tp = params.train
    batches = []
    for i in range(4):  # pre-made batches for the bare loop: the same kind of data, sampled before timing
        rngs = sample_rngs(params.seed, 10_000 + i, range(tp.batch_size))
        inp, target = trainer.task.training_pair(trainer.sampler.sample(rngs), rngs)
        batches.append((inp.to(trainer.device), target.to(trainer.device)))
    bare = BareLoop(trainer, batches)
    trainer.G.train()
    results = []
    for phase in PHASES:
        adversarial = phase == "adversarial"
        if adversarial and tp.warmup_steps >= tp.steps:
            print(f"{name}: no adversarial phase (warmup_steps >= steps); skipped")
            continue
        first = tp.warmup_steps if adversarial else 0
        loops: dict[str, Callable[[int], None]] = {
            "trainer": lambda i: trainer.train_step(i, trainer.make_batch(i)),  # the batch made inline
            "bare": lambda i, adversarial=adversarial: bare.step(i, adversarial),
        }
        for run in loops.values():  # allocator and kernel warm-up, not timed
            time_block(run, first, warmup_calls)
        wall: dict[str, list[float]] = {"trainer": [], "bare": []}
        cpu: dict[str, list[float]] = {"trainer": [], "bare": []}
        for r in range(rounds):
            for key in ("trainer", "bare") if r % 2 == 0 else ("bare", "trainer"):
                w, c = time_block(loops[key], first + warmup_calls + r * block, block)
                wall[key].append(w)
                cpu[key].append(c)
        ratios = [b / t for t, b in zip(wall["trainer"], wall["bare"], strict=True)]
        cpu_ratios = [b / t for t, b in zip(cpu["trainer"], cpu["bare"], strict=True)]
        q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
        result = PhaseResult(
            config=name,
            phase=phase,
            threads=torch.get_num_threads(),
            trainer_steps_per_s=1 / statistics.median(wall["trainer"]),
            bare_steps_per_s=1 / statistics.median(wall["bare"]),
            ratio_best=min(wall["bare"]) / min(wall["trainer"]),
            ratio_median=statistics.median(ratios),
            ratio_q1=q1,
            ratio_q3=q3,
            ratio_cpu=statistics.median(cpu_ratios),
            rounds=rounds,
            steps_per_block=block,
            trainer_wall_s=wall["trainer"],
            bare_wall_s=wall["bare"],
        )
        results.append(result)
        print(
            f"{name} {phase}, {result.threads} thread(s): trainer {result.trainer_steps_per_s:.2f} steps/s, "
            f"bare {result.bare_steps_per_s:.2f} steps/s, ratio {result.ratio_best:.3f} best-of-{rounds}, "
            f"{result.ratio_median:.3f} median"
        )
    return results


def table(results: list[PhaseResult], describe: dict[str, str]) -> str:
    lines = [
        "| config | phase | threads | trainer steps/s | bare loop steps/s | ratio, best rounds | ratio, median (IQR) "
        "| ratio, CPU time | verdict (best rounds) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        verdict = "ok" if r.ratio_best >= TARGET_RATIO else f"below {TARGET_RATIO}"
        lines.append(
            f"| {r.config}: {describe[r.config]} | {r.phase} | {r.threads} | {r.trainer_steps_per_s:.2f} "
            f"| {r.bare_steps_per_s:.2f} "
            f"| {r.ratio_best:.3f} | {r.ratio_median:.3f} ({r.ratio_q1:.2f}-{r.ratio_q3:.2f}) | {r.ratio_cpu:.3f} "
            f"| {verdict} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="PairedTrainer steps/s vs a bare forward/backward loop of the same G and D, per training phase "
        f"(target ratio >= {TARGET_RATIO}). Writes train_throughput.md and .json into --out.",
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["sr_x4", "denoise_s25"],
        choices=config_names(),
        help="benchmark configs of paired tasks (the ones `PairedTrainer` trains): benchmarks/configs/NAME.yaml on "
        "top of params.yaml (default: %(default)s)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=30,
        help="interleaved rounds per phase and loop (default: %(default)s)",
    )
    parser.add_argument("--block", type=int, default=1, help="steps per timed block (default: %(default)s)")
    parser.add_argument(
        "--warmup-calls",
        type=int,
        default=3,
        help="untimed steps of each loop before each phase (default: %(default)s)",
    )
    parser.add_argument("--source", help="training images (default: data.source of params.yaml, the embedded photos)")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[torch.get_num_threads()],
        help="torch CPU thread counts to measure, each in turn (default: torch's choice, %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="report folder (default: %(default)s)")
    parser.add_argument(
        "--work", type=Path, default=WORK, help="scratch folder for prepared data (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    disable_telemetry()
    info = machine()
    results: list[PhaseResult] = []
    described: dict[str, str] = {}
    started = time.perf_counter()
    for name in args.configs:
        work = (args.work / f"throughput-{name}").resolve()
        params = config_params(name, work, {"data.source": args.source} if args.source else None)
        kind = build_task(params.task).kind
        if KINDS[kind].load_trainer() is not PairedTrainer:
            parser.error(f"config {name} is a {kind} task; this benchmark measures the PairedTrainer's tasks")
        described[name] = describe_model(params)
        prepare(params.data, min_side=params.train.patch_size)
        for threads in args.threads:
            torch.set_num_threads(threads)
            results += measure(name, params, args.rounds, args.block, args.warmup_calls)
    info["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    info["wall_seconds"] = round(time.perf_counter() - started, 1)
    rendered = table(results, described)
    print(rendered)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"machine": info, "configs": described, "results": [asdict(r) for r in results]}
    (args.out / "train_throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "train_throughput.md").write_text(
        "# Training throughput: trainer vs bare loop\n\n"
        f"{machine_line(info)}.\n"
        f"{args.rounds} rounds of {args.block} step(s) per loop and phase, trainer and bare loop interleaved (order "
        "alternating). steps/s: medians over rounds. Ratio = trainer steps/s / bare steps/s (target >= "
        f"{TARGET_RATIO}): from each loop's fastest round (other processes only ever add time, so the best rounds "
        "are the least disturbed), as the median of per-round ratios with its quartiles, and from process CPU time."
        f"\n\n{rendered}\n"
    )
    print(f"wrote {args.out / 'train_throughput.md'} and .json in {info['wall_seconds']} s")


if __name__ == "__main__":
    main()
