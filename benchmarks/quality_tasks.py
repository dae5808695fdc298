"""Quality benchmark for the tasks beyond SR and denoising: each trained and evaluated with the project's own stages
on data shipped with the installed packages, beside its baseline.

(a) inpainting on the embedded photos (test split, seeded strokes-and-boxes masks): PSNR/SSIM inside the holes
    and over the image, FID/KID on crops, for the gated U-Net and scikit-image's biharmonic inpainting;
(b) unpaired translation photos -> 'warm film' (the demonstration pair): FID/KID of the translated test photos to
    the graded test photos of the other half, against the untouched photos (identity);
(c) DCGAN on scikit-learn's digits (32x32): FID/KID of samples against test digits, against uniform noise.

Prepared data, models and grids go to the work folder (git-ignored); the report (quality_tasks.md + .json) goes to
--out, and its tables replace the `## More tasks` section of docs/benchmarks.md (appended when absent). A run of
some --parts keeps the other parts of the report already in --out, each table under the line of the run that
measured it.

    .venv/bin/python -m benchmarks.quality_tasks                     # all three parts
    .venv/bin/python -m benchmarks.quality_tasks --parts generate --steps 300
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

if not __package__:  # run as `python benchmarks/quality_tasks.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    REPO,
    RESULTS,
    WORK,
    config_params,
    describe_model,
    earlier_parts,
    machine,
    machine_line,
    shown_path,
)
from gan_enhance.data.prepare import prepare_stage
from gan_enhance.device import disable_telemetry
from gan_enhance.evaluation.report import MODEL
from gan_enhance.evaluation.stage import evaluate
from gan_enhance.inference import Enhancer
from gan_enhance.metric_facts import present
from gan_enhance.training.stage import train

PARTS = {"inpaint": "inpaint", "translate": "translate_warm_film", "generate": "generate_digits"}
DOCS = REPO / "docs" / "benchmarks.md"
SECTION = "## More tasks"
TITLES = {
    "inpaint": "Inpainting, embedded photos (test split at full size, seeded masks, hole ratio 10-40%)",
    "translate": "Unpaired translation photos -> warm film (demonstration pair; FID to the graded test photos)",
    "generate": "DCGAN on scikit-learn's digits, 32x32 (FID of samples against test digits)",
}


def run_part(part: str, args: argparse.Namespace) -> dict[str, Any]:
    """prepare -> train from scratch -> evaluate one part in its work folder; returns timings and metrics."""
    work = (args.work / f"tasks-{part}").resolve()
    extra: dict[str, Any] = {}
    if args.steps:
        base = config_params(PARTS[part], work)
        extra = {
            "train.steps": args.steps,
            "train.warmup_steps": round(args.steps * base.train.warmup_steps / base.train.steps),
        }
    params = config_params(PARTS[part], work, extra)
    shutil.rmtree(params.train.checkpoint_dir, ignore_errors=True)
    rows = prepare_stage(params)
    print(f"[{part}] training {describe_model(params)} for {params.train.steps} steps")
    result = train(params, base=REPO)
    started = time.perf_counter()
    metrics = evaluate(params, base=REPO)
    enhancer = Enhancer.from_dir(params.train.out_dir, device="cpu")
    return {
        "config": PARTS[part],
        "model": describe_model(params),
        "generator": params.model.generator.name,
        "generator_params": sum(p.numel() for p in enhancer.net.parameters()),
        "images": len(rows),
        "steps": params.train.steps,
        "train_seconds": result.metrics["train_seconds"],
        "eval_seconds": time.perf_counter() - started,
        "metrics": metrics,
        "grid": str(shown_path(work / "eval" / "comparison.png")),
    }


def table(part: str, outcome: dict[str, Any]) -> str:
    metrics = outcome["metrics"]
    methods = [m for m in metrics if m not in ("gain", "protocol")]
    columns = present(metrics[MODEL])
    lines = [
        "| method | " + " | ".join(m.label for m in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for method in methods:
        label = (
            f"**{outcome['generator']}** ({outcome['steps']} steps, "
            f"{outcome['train_seconds'] / 60:.1f} min, {outcome['generator_params'] / 1000:.0f}K params)"
            if method == MODEL
            else method
        )
        cells = [m.show(metrics[method][m.name]) for m in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    protocol = metrics["protocol"]
    note = f"{protocol['test_images']} test images; FID/KID on {protocol['fid_crops']} "
    note += "samples" if part == "generate" else f"seeded crops of {protocol['fid_crop_size']} px"
    return "\n".join([f"### {TITLES[part]}", "", note + f". Grid: `{outcome['grid']}`.", "", *lines])


def render(parts: dict[str, dict[str, Any]]) -> str:
    out = [
        SECTION,
        "",
        "Each model trained from scratch by `benchmarks/quality_tasks.py` with the configs in `benchmarks/configs/` "
        "(short CPU runs), evaluated by the evaluate stage. FID at these sample counts is biased upwards: compare it "
        "only within a table.",
    ]
    for part, outcome in parts.items():
        out += ["", table(part, outcome), "", f"Measured {machine_line(outcome['machine'])}."]
    return "\n".join(out) + "\n"


def update_docs(section: str) -> None:
    """Replace the `## More tasks` section of docs/benchmarks.md (up to the next `## ` heading), or append it."""
    text = DOCS.read_text() if DOCS.is_file() else "# Benchmarks\n"
    start = text.find(SECTION + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + (text[end + 1 :] if end >= 0 else "")
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Train and evaluate inpainting, unpaired translation and DCGAN generation with the project's "
        "stages; write quality_tasks.md/.json into --out and the `## More tasks` section of docs/benchmarks.md.",
    )
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS), help="default: all")
    parser.add_argument("--steps", type=int, help="training steps for every part (default: each config's)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="report folder (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=WORK, help="scratch folder (default: %(default)s)")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    args = parser.parse_args(argv)
    disable_telemetry()
    info = machine()
    started = time.perf_counter()
    measured = {part: run_part(part, args) for part in args.parts}
    info["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    info["wall_seconds"] = round(time.perf_counter() - started, 1)
    earlier = earlier_parts(args.out / "quality_tasks.json")
    parts = {**earlier, **{part: {"machine": info, **outcome} for part, outcome in measured.items()}}
    parts = {part: parts[part] for part in PARTS if part in parts}
    report = render(parts)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality_tasks.json").write_text(json.dumps({"parts": parts}, indent=2) + "\n")
    (args.out / "quality_tasks.md").write_text(report)
    if not args.no_docs:
        update_docs(report)
    print(f"wrote {args.out / 'quality_tasks.md'} and .json in {info['wall_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
