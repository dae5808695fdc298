"""GAN recipes on the default run, one change at a time: which levers make the adversarial phase earn its name.

    .venv/bin/python -m benchmarks.gan_recipes                           # every recipe not yet in the work folder
    .venv/bin/python -m benchmarks.gan_recipes --recipes default unet_d   # some of them
    .venv/bin/python -m benchmarks.gan_recipes --report-only              # the table from the runs already there
    .venv/bin/python -m benchmarks.gan_recipes --recipes default perc --report perceptual  # a series of its own

Each recipe in benchmarks/configs/gan_recipes.yaml is dotted overrides on top of params.yaml (the default run: x4
SR on the embedded photos; its prepared data, data/prepared, comes from `dvc repro prepare`). Training is the
project's trainer and evaluation the evaluate stage's: the EMA generator, its pixel_only twin and bicubic on the
test split, every number with its interval and the paired gains. Recipes that agree on everything the pixel-loss
phase depends on share that phase: the first trains it, the others resume from its checkpoint at warmup_steps.
That is exact: the discriminator is neither called nor trained before warmup_steps, so there it still holds its
initial state (a resumed `default` recipe reproduces `dvc repro`'s model bit for bit). The table goes to
benchmarks/results/gan_recipes.{md,json}; models and evaluations stay in benchmarks/results/work/gan_recipes/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import yaml

from benchmarks.common import CONFIGS, REPO, RESULTS, WORK, machine, machine_line, work_params
from gan_enhance.config import Params, parse_overrides
from gan_enhance.data.prepare import prepare
from gan_enhance.device import disable_telemetry
from gan_enhance.evaluation.stage import evaluate
from gan_enhance.training.base import _code_hash
from gan_enhance.training.checkpoint import PREFIX
from gan_enhance.training.paired import PairedTrainer

RECIPES = CONFIGS / "gan_recipes.yaml"
OUT = WORK / "gan_recipes"
SUMMARY = "summary.json"
# what the adversarial phase alone reads: recipes differing only here share the pixel-loss phase
ADVERSARIAL_ONLY = {
    "lr_d",
    "gan_loss",
    "pixel_lowpass",
    "r1_gamma",
    "instance_noise",
    "conditional_discriminator",
    "checkpoint_every",
    "keep_checkpoints",
    "adversarial_mask",
    "texture_mask",
}
SHOWN = [(metric, baseline) for baseline in ("bicubic", "pixel_only") for metric in ("psnr", "fid", "kid")]


def recipes() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(RECIPES.read_text())


def recipe_params(name: str, overrides: dict[str, Any]) -> Params:
    """The recipe's params: outputs in its work folder; the default run's prepared data unless the recipe changes
    data.* (then it prepares its own in the work folder)."""
    own_data = any(key.startswith("data.") for key in overrides)
    return work_params(
        OUT / name, overrides if own_data else {"data.prepared_dir": str(REPO / "data/prepared"), **overrides}
    )


def pixel_phase_key(trainer: PairedTrainer) -> str:
    """Hash of what the pixel-loss phase depends on: the trainer's fingerprint (params, data, the code that shapes
    the weights) without the adversarial settings, so a cached phase from other code is never reused."""
    dumped = trainer.params.model_dump(mode="json")
    train = {k: v for k, v in dumped["train"].items() if k not in ADVERSARIAL_ONLY and not k.endswith("_dir")}
    train["weights"] = {"pixel": train["weights"]["pixel"]}
    perceptual = trainer.params.train.perceptual
    if not perceptual.enabled or perceptual.phase == "adversarial":
        del train["perceptual"]  # not read before warmup_steps
    key = [dumped["seed"], dumped["task"], dumped["model"]["generator"], train, trainer.data_hash, _code_hash()]
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def seed_pixel_phase(trainer: PairedTrainer, cached: Path) -> None:
    """Put the shared pixel-phase checkpoint into the trainer's checkpoint folder as its own: every state from the
    cache but the discriminator's, which is the fresh trainer's (the initial state, as in an uninterrupted run)."""
    state = torch.load(cached, weights_only=True)
    for name in ("D", "opt_d", "sched_d"):
        state[name] = trainer.stateful()[name].state_dict()
    state.update(fingerprint=trainer.fingerprint, run_id=None)
    folder = trainer.base / trainer.params.train.checkpoint_dir
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / f"{PREFIX}{trainer.params.train.warmup_steps:08d}.pt")


TRAINED = "train.json"


def train_recipe(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Train one recipe (sharing the pixel-loss phase where possible); what the training took, also saved beside
    its model (a recipe trained on another machine, e.g. a GPU, is evaluated here with --eval-only)."""
    warmup = recipe_params(name, overrides).train.warmup_steps
    keep = {"train.checkpoint_every": warmup, "train.keep_checkpoints": 10**6}  # the step-warmup checkpoint stays
    params = recipe_params(name, {**overrides, **keep})
    shutil.rmtree(OUT / name, ignore_errors=True)
    if params.data.prepared_dir != REPO / "data/prepared":
        prepare(params.data, min_side=params.train.patch_size)
    trainer = PairedTrainer(params, base=REPO)
    cached = OUT / "pixel_phase" / f"{pixel_phase_key(trainer)}.pt"
    shared = cached.is_file()
    if shared:
        seed_pixel_phase(trainer, cached)
    started = time.perf_counter()
    result = trainer.run()
    train_seconds = time.perf_counter() - started
    if not shared:
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(params.train.checkpoint_dir) / f"{PREFIX}{warmup:08d}.pt", cached)
    shutil.rmtree(params.train.checkpoint_dir)
    trained = {
        "recipe": name,
        "overrides": overrides,
        "steps": params.train.steps,
        "warmup_steps": warmup,
        "device": str(trainer.device),
        "pixel_phase_shared": shared,
        "train_seconds": train_seconds,
        "adversarial_step_seconds": None if not shared else train_seconds / max(params.train.steps - warmup, 1),
        "trained_steps": result.steps - result.resumed_from,
        "machine": machine(),
    }
    (OUT / name / TRAINED).write_text(json.dumps(trained, indent=2, default=str))
    return trained


def evaluate_recipe(name: str) -> dict[str, Any]:
    """Evaluate a trained recipe (the evaluate stage: model, pixel_only twin, bicubic) and write its summary."""
    trained = json.loads((OUT / name / TRAINED).read_text())
    metrics = evaluate(recipe_params(name, trained["overrides"]), REPO)
    summary = {**trained, "metrics": metrics, "evaluated_on": machine()}
    (OUT / name / SUMMARY).write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _cell(metrics: dict[str, Any], name: str, baseline: str) -> str:
    gain = metrics["gain"]
    value, low, high = (gain.get(f"{name}_vs_{baseline}{s}") for s in ("", "_low", "_high"))
    if value is None:
        return "-"
    digits = 4 if name == "kid" else 2
    mark = " **better**" if low > 0 else " *worse*" if high < 0 else ""
    return f"{value:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]{mark}"


def report(summaries: list[dict[str, Any]]) -> str:
    heads = ["recipe", "change", "adv. s/step", "PSNR", "FID", "KID"]
    heads += [f"{m.upper()} gain vs {b}" for m, b in SHOWN]
    lines = ["| " + " | ".join(heads) + " |", "|---" * len(heads) + "|"]
    for s in summaries:
        model = s["metrics"]["model"]
        change = ", ".join(f"`{k}={json.dumps(v, separators=(',', ':'))}`" for k, v in s["overrides"].items()) or "-"
        cost = s["adversarial_step_seconds"]
        cells = [
            s["recipe"],
            change,
            f"{cost:.2f}" if cost else "-",
            f"{model['psnr']:.2f}",
            f"{model['fid']:.1f} [{model['fid_low']:.1f}, {model['fid_high']:.1f}]",
            f"{model['kid']:.4f} [{model['kid_low']:.4f}, {model['kid_high']:.4f}]",
            *(_cell(s["metrics"], m, b) for m, b in SHOWN),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="*", help="names from gan_recipes.yaml (default: all)")
    parser.add_argument("--rerun", action="store_true", help="train again recipes that already have results")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the table from finished runs")
    only = parser.add_mutually_exclusive_group()
    only.add_argument(
        "--train-only", action="store_true", help="train, do not evaluate (e.g. on a GPU machine; then --eval-only)"
    )
    only.add_argument("--eval-only", action="store_true", help="evaluate recipes trained before (--train-only)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--report",
        default="gan_recipes",
        help="report name: benchmarks/results/<name>.{md,json}, of the recipes chosen (default: every recipe run)",
    )
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every recipe (e.g. train.steps=300)"
    )
    args = parser.parse_args(argv)
    disable_telemetry()
    if args.threads:
        torch.set_num_threads(args.threads)
    available = recipes()
    chosen = args.recipes or list(available)
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        raise SystemExit(f"unknown recipe(s) {', '.join(unknown)}; {RECIPES} has: {', '.join(available)}")
    if not (REPO / "data/prepared/manifest.csv").is_file():
        raise SystemExit("no prepared data in data/prepared; run `dvc repro prepare` first")
    info = machine()
    for name in chosen:
        done = (OUT / name / SUMMARY).is_file()
        if args.report_only or (done and not args.rerun):
            continue
        if args.eval_only and not (OUT / name / TRAINED).is_file():
            print(f"[{name}] skipped: not trained (no {OUT / name / TRAINED}; train it with --train-only)")
            continue
        overrides = {**(available[name] or {}), **parse_overrides(args.set)}
        print(f"[{name}] {overrides or 'params.yaml as it is'}", flush=True)
        if not args.eval_only:
            train_recipe(name, overrides)
        if not args.train_only:
            evaluate_recipe(name)
    if args.train_only:
        return 0
    shown = chosen if args.recipes else list(available)
    summaries = [json.loads((OUT / n / SUMMARY).read_text()) for n in shown if (OUT / n / SUMMARY).is_file()]
    info["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    table = report(summaries)
    print(table)
    text = f"# GAN recipes on the default run\n\n{machine_line(info)}\n\n{table}\n"
    (RESULTS / f"{args.report}.md").write_text(text)
    (RESULTS / f"{args.report}.json").write_text(json.dumps(summaries, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
