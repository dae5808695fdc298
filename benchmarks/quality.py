"""Quality benchmark: train with the project's own pipeline, evaluate on the standard test sets.

(a) sr: x4 super-resolution trained on CBSD68, tested on Set5, Set14 and Urban100: PSNR/SSIM (Y channel, border
    4), FID/KID on seeded crops, for the model, its pixel-loss twin and bicubic, beside ANCHORS.md's numbers.
(b) denoise: sigma=25 Gaussian denoising trained on CBSD68 (mixed colour and gray noise), tested on Set12
    (grayscale images read as RGB with equal channels) with colour noise and with gray noise: PSNR/SSIM/FID for the
    model, the noisy input and non-local means. BSD68 is the grayscale of CBSD68, this part's training set, so it
    is not evaluated here.
(c) denoise_gray: the published gray protocol end to end: trained on Train400 (DnCNN's 400 gray training crops)
    with gray noise, tested on Set12 and BSD68, beside BM3D and DnCNN-S.
(d) inpaint: free-form inpainting trained on CBSD68, tested on Set14 and Urban100 with seeded masks: PSNR/SSIM
    inside the holes and over the image, FID/KID on crops, for the gated U-Net, its twin, its own untrained first
    stage (fills_mean) and scikit-image's biharmonic inpainting.

Every part also reports the model's paired gains over each method it was compared with, with 95 % intervals.

Prepared data, models, per-image CSVs and comparison grids go to the work folder (git-ignored); the report
(quality.md + quality.json) goes to --out; parts this run did not redo are kept from the report already there when
it was measured on the same data sets and FID protocol.

    .venv/bin/python -m benchmarks.quality --threads 1          # sr, denoise and inpaint
    .venv/bin/python -m benchmarks.quality --parts sr --sr-steps 300
    .venv/bin/python -m benchmarks.quality --parts denoise_gray --train-only   # e.g. on a GPU machine, then:
    .venv/bin/python -m benchmarks.quality --parts denoise_gray --eval-only --out benchmarks/results/quality_gray
    .venv/bin/python benchmarks/quality.py --help
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

if not __package__:  # run as `python benchmarks/quality.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    REPO,
    RESULTS,
    WORK,
    config_params,
    describe_model,
    earlier_parts,
    gain_cell,
    machine,
    machine_line,
)
from gan_enhance.config import Params
from gan_enhance.data.degradations import add_gaussian_noise
from gan_enhance.data.prepare import prepare
from gan_enhance.device import disable_telemetry
from gan_enhance.evaluation.paired import evaluate_test_set, load_twins
from gan_enhance.evaluation.report import MODEL
from gan_enhance.evaluation.stage import evaluate_folder
from gan_enhance.evaluation.testsets import TestImage
from gan_enhance.inference import Enhancer
from gan_enhance.metric_facts import metric
from gan_enhance.models.artifact import PIXEL_TWIN
from gan_enhance.tasks import build_task
from gan_enhance.training.stage import train

PARTS = {  # -> configs/<name>.yaml
    "sr": "sr_x4",
    "denoise": "denoise_s25",
    "denoise_gray": "denoise_s25_gray",
    "inpaint": "inpaint_cbsd68",
}
TRAIN_SETS = {"sr": "CBSD68", "denoise": "CBSD68", "denoise_gray": "Train400", "inpaint": "CBSD68"}
TEST_SETS = {
    "sr": ("Set5", "Set14", "Urban100"),
    "denoise": ("Set12",),
    "denoise_gray": ("Set12", "BSD68"),
    "inpaint": ("Set14", "Urban100"),
}
TRAIN_INFO = "train.json"
GRAY_PROTOCOL = "gray noise"  # Set12 variant: one noise plane copied to the 3 channels (the papers' gray protocol)

# Published x4 SR results (ANCHORS.md): method, parameters, {set: (PSNR, SSIM or None)}.
PUBLISHED_SR: list[tuple[str, str, dict[str, tuple[float, float | None]]]] = [
    ("bicubic", "-", {"Set5": (28.42, 0.8104), "Set14": (26.00, 0.7027), "Urban100": (23.14, 0.6577)}),
    ("FSRCNN", "12K", {"Set5": (30.72, 0.8660), "Urban100": (24.62, 0.7280)}),
    ("ESPCN", "~25K", {"Set5": (30.90, None)}),
    ("SRResNet (MSE)", "1.5M", {"Set5": (32.05, 0.9019), "Set14": (28.49, 0.8184)}),
    ("SRGAN (GAN)", "1.5M", {"Set5": (29.40, 0.8472), "Set14": (26.02, 0.7397)}),
    ("IMDN", "715K", {"Set5": (32.21, 0.8948), "Urban100": (26.04, 0.7838)}),
    (
        "RRDB (ESRGAN's G, PSNR-trained)",
        "16.7M",
        {"Set5": (32.73, 0.9011), "Set14": (28.99, 0.7917), "Urban100": (27.03, 0.8153)},
    ),
]
# The denoising baselines measured here: label, method.
DENOISE_BASELINES = [
    ("**noisy input** (measured here)", "noisy_input"),
    ("**non-local means** (scikit-image, measured here)", "nl_means"),
]
# Published sigma=25 gray denoising PSNR, Train400 protocol (ANCHORS.md): method, {set: PSNR}.
PUBLISHED_GRAY: list[tuple[str, dict[str, float]]] = [
    ("noisy input", {"BSD68": 20.17}),
    ("BM3D", {"Set12": 29.97, "BSD68": 28.57}),
    ("DnCNN-S", {"Set12": 30.44, "BSD68": 29.23}),
    ("FFDNet", {"BSD68": 29.19}),
]
# Published sigma=25 denoising PSNR (ANCHORS.md): method, BSD68 gray, CBSD68 colour.
PUBLISHED_DENOISE: list[tuple[str, float, float | None]] = [
    ("noisy input", 20.17, 20.17),
    ("BM3D / CBM3D", 28.57, None),
    ("DnCNN", 29.23, 31.24),
    ("FFDNet", 29.19, 31.21),
]


def datasets_dir(given: Path | None) -> Path:
    """--datasets, else $GAN_ENHANCE_DATASETS, else <repo>/../shared/datasets."""
    if given:
        return given
    env = os.environ.get("GAN_ENHANCE_DATASETS")
    return Path(env) if env else REPO.parent / "shared" / "datasets"


def part_params(part: str, work: Path, datasets: Path, args: argparse.Namespace) -> Params:
    config = config_params(PARTS[part], work)  # the config's own schedule, for --<part>-steps
    extra: dict[str, Any] = {
        "data.source": str(datasets / TRAIN_SETS[part]),
        # Only the train split matters here (the test sets are separate): keep val/test small but non-empty.
        "data.split.val": 0.05,
        "data.split.test": 0.05,
        "evaluate.fid_crops": args.fid_crops,
        "evaluate.fid_crop_size": args.fid_crop_size,
    }
    if args.threads:
        extra["train.threads"] = args.threads
    steps = getattr(args, f"{part}_steps")
    if steps:  # keep the config's warm-up fraction
        extra["train.steps"] = steps
        extra["train.warmup_steps"] = round(steps * config.train.warmup_steps / config.train.steps)
    return config_params(PARTS[part], work, extra)


def train_part(params: Params, work: Path) -> dict[str, Any]:
    """prepare -> train; returns the timings. A run stopped part way resumes from its last checkpoint when the
    params, data and code are the same (the trainer's fingerprint); otherwise the trainer sets the old checkpoints
    aside and starts from step 0. The times are this invocation's only (`resumed_from` says where it began)."""
    rows = prepare(params.data, min_side=params.train.patch_size)
    cpu_started = time.process_time()
    result = train(params, base=REPO)
    cpu_seconds = time.process_time() - cpu_started  # the budgets are CPU time: a shared core stretches wall
    seconds = result.metrics["train_seconds"]
    info = {
        "train_images": sum(r.split == "train" for r in rows),
        "steps": params.train.steps,
        "warmup_steps": params.train.warmup_steps,
        "resumed_from": result.resumed_from,
        "train_seconds": seconds,
        "train_cpu_seconds": cpu_seconds,
        "seconds_per_step": seconds / max(params.train.steps - result.resumed_from, 1),
        "final_val_psnr": result.metrics.get("val_psnr"),
        "model": describe_model(params),
        "generator": params.model.generator.name,
    }
    (work / TRAIN_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return info


def gray_noise_set(test_set: list[TestImage], sigma: float, seed: int) -> list[TestImage]:
    """The same gray images with one noise plane shared by the 3 channels: the published gray protocol."""
    noisy = []
    for i, image in enumerate(test_set):
        if not (
            np.array_equal(image.target[..., 0], image.target[..., 1])
            and np.array_equal(image.target[..., 0], image.target[..., 2])
        ):
            raise ValueError(f"{image.name} is not a gray image; the gray-noise protocol needs equal channels")
        plane = add_gaussian_noise(image.target[..., :1], sigma, np.random.default_rng([seed, i]))
        noisy.append(dataclasses.replace(image, input=np.repeat(plane, 3, axis=2)))
    return noisy


def evaluate_set(
    params: Params, enhancer: Enhancer, twins: dict[str, Enhancer], test_set: list[TestImage], out: Path
) -> dict[str, Any]:
    """The project's evaluation (the model, its twins, the classical baselines) on one test set; metrics.json,
    per_image.csv and comparison.png into `out`."""
    started = time.perf_counter()
    evaluation = evaluate_test_set(params, build_task(params.task), enhancer, test_set, out, twins)
    return {"summary": evaluation.result, "per_image": evaluation.rows, "eval_seconds": time.perf_counter() - started}


def run_part(part: str, datasets: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    """Train (unless --eval-only) and evaluate one part; None, with the reason printed, when data is missing."""
    train_set = datasets / TRAIN_SETS[part]
    if not train_set.is_dir() and not args.eval_only:
        print(f"[{part}] skipped: training set {train_set} is absent (set --datasets)")
        return None
    sets = {name: datasets / name for name in TEST_SETS[part] if (datasets / name).is_dir()}
    for name in TEST_SETS[part]:
        if name not in sets:
            print(f"[{part}] {name} skipped: {datasets / name} is absent")
    if not sets and not args.train_only:
        print(f"[{part}] skipped: none of its test sets ({', '.join(TEST_SETS[part])}) is present")
        return None
    work = (args.work / part).resolve()
    params = part_params(part, work, datasets, args)
    if args.eval_only:
        if not (work / TRAIN_INFO).is_file():
            raise SystemExit(f"--eval-only: no trained model in {work}; run once without --eval-only")
        training = json.loads((work / TRAIN_INFO).read_text())
    else:
        print(f"[{part}] training {describe_model(params)} for {params.train.steps} steps on {train_set.name}")
        training = train_part(params, work)
    if args.train_only:
        return None
    ev = params.evaluate
    enhancer = Enhancer.from_dir(
        params.train.out_dir, device=params.train.device, tile=ev.tile, tile_pad=ev.tile_overlap
    )
    training["generator_params"] = sum(p.numel() for p in enhancer.net.parameters())
    twins = load_twins(params.train.out_dir, enhancer)
    results: dict[str, Any] = {}
    for name, folder in sets.items():
        print(f"[{part}] evaluating on {name}")
        started = time.perf_counter()
        where = str(params.train.out_dir)
        evaluated = evaluate_folder(params, enhancer, folder, work / f"eval-{name}", where, twins)
        elapsed = time.perf_counter() - started
        results[name] = {"summary": evaluated.result, "per_image": evaluated.rows, "eval_seconds": elapsed}
        if part == "denoise":  # trained on colour noise: also the gray protocol, out of its training distribution
            gray = gray_noise_set(evaluated.test_set, params.task.denoise.eval_sigma, ev.seed)
            results[f"{name} ({GRAY_PROTOCOL})"] = evaluate_set(
                params, enhancer, twins, gray, work / f"eval-{name}-gray"
            )
    return {"config": PARTS[part], "training": training, "sets": results}


def _show(name: str, value: float | None) -> str:
    """A value of metric `name` in its format; '-' for none."""
    return "-" if value is None else metric(name).show(value)


def _pair(metrics: dict[str, float], a: str, b: str) -> str:
    """'31.61 / 0.8294': two metrics of one method."""
    return f"{_show(a, metrics[a])} / {_show(b, metrics[b])}"


def _with_twin(measured: list[tuple[str, str]], part: dict[str, Any]) -> list[tuple[str, str]]:
    """The measured rows plus the model's pixel-loss-only twin, second, where the evaluation scored one."""
    first = next(iter(part["sets"].values()))["summary"]
    twin = [(f"**{PIXEL_TWIN}** (the same G after its pixel-loss phase)", PIXEL_TWIN)] if PIXEL_TWIN in first else []
    return [measured[0], *twin, *measured[1:]]


def _model_row(part: dict[str, Any]) -> tuple[str, str]:
    t = part["training"]
    return f"**gan-enhance {t['generator']}, EMA G** ({t['steps']} steps, {t['train_seconds'] / 60:.1f} min)", MODEL


def _measured_rows(part: dict[str, Any], baselines: list[tuple[str, str]]) -> list[str]:
    """Header and the rows measured here (the model, its twin, `baselines`): PSNR / SSIM and FID / KID per set."""
    sets = list(part["sets"])
    head = "| method | params | " + " | ".join(f"{s} PSNR / SSIM | {s} FID / KID" for s in sets) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(sets))]
    for label, method in _with_twin([_model_row(part), *baselines], part):
        size = f"{part['training']['generator_params'] / 1000:.0f}K" if method == MODEL else "-"
        cells = [
            f"{_pair(part['sets'][s]['summary'][method], 'psnr', 'ssim')} | "
            f"{_pair(part['sets'][s]['summary'][method], 'fid', 'kid')}"
            for s in sets
        ]
        lines.append(f"| {label} | {size} | " + " | ".join(cells) + " |")
    return lines


GAIN_METRICS = ("psnr", "psnr_hole", "kid", "fid")  # the gains each part's table shows, where measured


def gains_table(part: dict[str, Any]) -> str:
    """The model against each method it was compared with, per test set: paired gains (positive = better) with
    their intervals, marked where the interval excludes zero."""
    first = next(iter(part["sets"].values()))["summary"]
    shown = [metric(name) for name in GAIN_METRICS if name in first[MODEL]]
    lines = [
        "| test set | model vs | " + " | ".join(f"{m.label} gain" for m in shown) + " |",
        "|" + "---|" * (2 + len(shown)),
    ]
    for set_name, result in part["sets"].items():
        summary = result["summary"]
        for method in (name for name in summary if name not in (MODEL, "gain", "protocol")):
            cells = [gain_cell(m, summary["gain"], method) for m in shown]
            lines.append(f"| {set_name} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def inpaint_table(part: dict[str, Any]) -> str:
    """PSNR / SSIM inside the holes, over the image, and FID / KID, per set."""
    sets = list(part["sets"])
    head = "| method | params | " + " | ".join(f"{s} holes PSNR / SSIM | {s} PSNR / SSIM | {s} FID / KID" for s in sets)
    lines = [head + " |", "|" + "---|" * (2 + 3 * len(sets))]
    baselines = [
        ("**fills_mean** (its untrained first stage)", "fills_mean"),
        ("**biharmonic** (scikit-image)", "biharmonic"),
    ]
    for label, method in _with_twin([_model_row(part), *baselines], part):
        size = f"{part['training']['generator_params'] / 1000:.0f}K" if method == MODEL else "-"
        cells = []
        for s in sets:
            values = part["sets"][s]["summary"][method]
            pairs = (("psnr_hole", "ssim_hole"), ("psnr", "ssim"), ("fid", "kid"))
            cells.append(" | ".join(_pair(values, a, b) for a, b in pairs))
        lines.append(f"| {label} | {size} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sr_table(part: dict[str, Any]) -> str:
    lines = _measured_rows(part, [("**bicubic** (Pillow, measured here)", "bicubic")])
    for method, size, published in PUBLISHED_SR:
        cells = []
        for s in part["sets"]:
            psnr, ssim = published.get(s, (None, None))
            cells.append(f"{_show('psnr', psnr)} / {_show('ssim', ssim)} | -" if psnr else "- | -")
        lines.append(f"| {method} (published) | {size} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def denoise_table(part: dict[str, Any]) -> str:
    sets = list(part["sets"])
    t = part["training"]
    head = (
        "| method | params | "
        + " | ".join(f"{s} PSNR / SSIM | {s} FID" for s in sets)
        + " | BSD68 gray (published) | CBSD68 colour (published) |"
    )
    lines = [head, "|" + "---|" * (4 + 2 * len(sets))]
    for label, method in _with_twin([_model_row(part), *DENOISE_BASELINES], part):
        size = f"{t['generator_params'] / 1000:.0f}K" if method == MODEL else "-"
        cells = [
            f"{_pair(part['sets'][s]['summary'][method], 'psnr', 'ssim')} | "
            f"{_show('fid', part['sets'][s]['summary'][method]['fid'])}"
            for s in sets
        ]
        lines.append(f"| {label} | {size} | " + " | ".join(cells) + " | - | - |")
    for method, gray, colour in PUBLISHED_DENOISE:
        blanks = " | ".join("- | -" for _ in sets)
        lines.append(f"| {method} (published) | - | {blanks} | {_show('psnr', gray)} | {_show('psnr', colour)} |")
    return "\n".join(lines)


def gray_denoise_table(part: dict[str, Any]) -> str:
    """The published gray protocol: our rows measured here, BM3D and DnCNN-S as published (ANCHORS.md)."""
    lines = _measured_rows(part, DENOISE_BASELINES)
    for method, published in PUBLISHED_GRAY:
        cells = [f"{_show('psnr', published[s])} / - | -" if s in published else "- | -" for s in part["sets"]]
        lines.append(f"| {method} (published) | - | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def training_table(parts: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| part | model | generator params | train set: images | steps (warm-up) | train wall time | train CPU time "
        "| s/step | final val PSNR |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, part in parts.items():
        t = part["training"]
        cpu = t.get("train_cpu_seconds")  # absent from reports written before it was measured
        lines.append(
            f"| {name} | {t['model']} | {t['generator_params']:,} | {TRAIN_SETS[name]}: {t['train_images']} "
            f"| {t['steps']} "
            f"({t['warmup_steps']}) | {t['train_seconds']:.0f} s ({t['train_seconds'] / 60:.1f} min) | "
            f"{'-' if cpu is None else f'{cpu / 60:.1f} min'} | "
            f"{t['seconds_per_step']:.3f} | {_show('psnr', t['final_val_psnr'])} dB |"
        )
    return "\n".join(lines)


def render(parts: dict[str, dict[str, Any]], info: dict[str, Any], args: argparse.Namespace) -> str:
    out = [
        "# Quality benchmark",
        "",
        f"{machine_line(info)}. Training sets: the train split of the project's prepare stage. "
        f"FID/KID: {args.fid_crops} seeded crops of {args.fid_crop_size} px per set and method (Inception pool "
        "features); at such counts FID is strongly biased upwards, so compare it only within this protocol.",
        "",
        "## Training",
        "",
        training_table(parts),
    ]
    evaluated = {part: result["evaluated"] for part, result in parts.items()}
    if len(set(evaluated.values())) > 1:
        out[3:3] = ["", "Evaluated: " + ", ".join(f"{part} {when}" for part, when in evaluated.items()) + "."]
    if "sr" in parts:
        out += [
            "",
            "## x4 super-resolution (PSNR/SSIM on Y, border 4 cropped; LR by Pillow bicubic)",
            "",
            sr_table(parts["sr"]),
        ]
    if "denoise" in parts:
        out += [
            "",
            "## sigma=25 Gaussian denoising on Set12 (PSNR/SSIM on RGB)",
            "",
            "`Set12`: the pipeline's protocol, independent noise on each of the 3 (equal) channels. "
            f"`Set12 ({GRAY_PROTOCOL})`: one noise plane copied to the 3 channels, i.e. the gray protocol of the "
            "published numbers (the model was trained on both). Published columns are other test sets: "
            "orientation only. BSD68 is not evaluated: it is the grayscale of CBSD68, the training set.",
            "",
            denoise_table(parts["denoise"]),
        ]
    if "denoise_gray" in parts:
        out += [
            "",
            "## sigma=25 gray denoising, the published protocol (trained on Train400, gray noise; PSNR/SSIM on RGB)",
            "",
            "Gray images read as RGB with equal channels and one noise plane copied to the 3 channels, so PSNR on RGB "
            "equals PSNR on the gray image. Published rows: ANCHORS.md (DnCNN-S: 17 layers, trained on Train400).",
            "",
            gray_denoise_table(parts["denoise_gray"]),
        ]
    if "inpaint" in parts:
        out += [
            "",
            "## Free-form inpainting (seeded masks, hole ratio 10-40 %; PSNR/SSIM on RGB)",
            "",
            "`fills_mean` is the gated U-Net's own first stage (the even blend of its harmonic and biharmonic fills): "
            "what the network returns before training, so the model's gain over it is what training added.",
            "",
            inpaint_table(parts["inpaint"]),
        ]
    for name, part in parts.items():
        out += ["", f"### {name}: paired gains of the model (positive = better; 95 % intervals)", "", gains_table(part)]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Train with the project's pipeline and report x4 SR (CBSD68 -> Set5, Set14, Urban100), sigma=25 "
        "denoising (CBSD68 -> Set12), the gray protocol (Train400 -> Set12, BSD68) and inpainting (CBSD68 -> Set14, "
        "Urban100) beside the classical baselines and published numbers. Writes quality.md and quality.json into "
        "--out; data, models and grids go to --work.",
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=list(PARTS),
        default=["sr", "denoise", "inpaint"],
        help="what to run (default: %(default)s; denoise_gray is sized for a GPU: minutes there, hours here)",
    )
    parser.add_argument("--sr-steps", type=int, help="SR training steps (default: benchmarks/configs/sr_x4.yaml)")
    parser.add_argument(
        "--denoise-steps", type=int, help="denoising training steps (default: benchmarks/configs/denoise_s25.yaml)"
    )
    parser.add_argument(
        "--inpaint-steps", type=int, help="inpainting training steps (default: benchmarks/configs/inpaint_cbsd68.yaml)"
    )
    parser.add_argument(
        "--denoise-gray-steps",
        type=int,
        help="gray denoising steps (default: benchmarks/configs/denoise_s25_gray.yaml)",
    )
    parser.add_argument(
        "--datasets",
        type=Path,
        help="folder holding CBSD68, Train400, Set5, Set14, Urban100, Set12 and BSD68 "
        "(default: $GAN_ENHANCE_DATASETS, else <repo>/../shared/datasets)",
    )
    parser.add_argument(
        "--fid-crops", type=int, default=64, help="seeded crops per set for FID/KID (default: %(default)s)"
    )
    parser.add_argument(
        "--fid-crop-size", type=int, default=96, help="side of those crops in px (default: %(default)s)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads for training and evaluation (default: torch's choice, one per core); on a busy "
        "shared machine 1 is several times faster than 2",
    )
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--eval-only", action="store_true", help="evaluate the models already in --work, no training")
    only.add_argument(
        "--train-only", action="store_true", help="train, do not evaluate (e.g. on a GPU machine; then --eval-only)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="report folder (default: %(default)s)")
    parser.add_argument(
        "--work", type=Path, default=WORK, help="scratch folder for data, models, grids (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    disable_telemetry()
    if args.threads:
        torch.set_num_threads(args.threads)
    datasets = datasets_dir(args.datasets)
    info = machine()
    started = time.perf_counter()
    parts = {}
    for part in args.parts:
        result = run_part(part, datasets, args)
        if result:
            parts[part] = {**result, "evaluated": datetime.now(UTC).isoformat(timespec="seconds")}
    if args.train_only:
        print(f"trained {', '.join(args.parts)} in {args.work}; evaluate with --eval-only")
        return
    if not parts:
        raise SystemExit(f"nothing to report: no part could run with the data sets in {datasets}")
    protocol = {"datasets": str(datasets), "fid_crops": args.fid_crops, "fid_crop_size": args.fid_crop_size}
    earlier = earlier_parts(args.out / "quality.json", protocol)
    kept = {part: result for part, result in earlier.items() if part not in parts and "evaluated" in result}
    if kept:
        print(f"kept {', '.join(kept)} from the earlier report in {args.out} (same data sets and FID protocol)")
    merged = parts | kept
    parts = {part: merged[part] for part in PARTS if part in merged}
    info["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    info["wall_seconds"] = round(time.perf_counter() - started, 1)
    report = render(parts, info, args)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    published = {"sr_x4": PUBLISHED_SR, "denoise_sigma25_bsd68_gray_cbsd68_colour": PUBLISHED_DENOISE}
    payload = {"machine": info, "protocol": protocol, "parts": parts, "published": published}
    (args.out / "quality.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.out / "quality.md").write_text(report)
    print(f"wrote {args.out / 'quality.md'} and .json in {info['wall_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
