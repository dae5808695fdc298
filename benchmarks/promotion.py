"""Can the lifecycle tell? How noisy FID and KID are at the evaluation protocol, and how often the promotion rules
promote noise (false promotions) or miss a real improvement (power).

Three models, all evaluated by the project's own evaluation code on the default data's test split:
- `sr`: the default x4 SR model (params.yaml; the `dvc repro` model in models/generator, else trained here);
- `sr_short`: the same recipe trained 10x shorter (the power test's weaker model);
- `denoise`: the sigma=25 denoising model of benchmarks/configs/denoise_s25.yaml, trained here on the default data.
Each is evaluated with SEEDS crop seeds (evaluate.seed: the crop positions, and the noise for denoising); `sr` at
the largest crop count of COUNTS, whose smaller counts are prefixes of the same crops (crop_positions draws them in
order), so one Inception pass per (model, seed) serves every count; the others at params.yaml's evaluate.fid_crops.
Features are cached in benchmarks/results/work/promotion/evidence/.

  .venv/bin/python -m benchmarks.promotion                 # everything (features ~60 min, tables ~18 min on 2 cores)
  .venv/bin/python -m benchmarks.promotion --parts gate    # recompute one table from the cached features
  .venv/bin/python -m benchmarks.promotion --help
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import REPO, RESULTS, WORK, config_params, machine, machine_line
from gan_enhance.config import Params, PromoteParams, load_params
from gan_enhance.data.prepare import prepare
from gan_enhance.evaluation.evidence import Evidence
from gan_enhance.evaluation.metrics import inception_features
from gan_enhance.evaluation.paired import evaluation_evidence, measure_outputs, method_outputs
from gan_enhance.evaluation.report import MODEL
from gan_enhance.evaluation.testsets import crops, load_test_split
from gan_enhance.evaluation.uncertainty import Measured, difference, estimate
from gan_enhance.inference import Enhancer
from gan_enhance.lifecycle.promotion import Candidate, Policy, decide
from gan_enhance.metric_facts import CROP_METRICS, METRICS
from gan_enhance.tasks import build_task
from gan_enhance.training.stage import train

SEEDS = tuple(range(10))
COUNTS = (64, 128, 192, 256)
PROMOTION_WORK = WORK / "promotion"
SHORT_FACTOR = 10
MODELS = ("sr", "sr_short", "denoise")


def model_params(label: str, count: int = max(COUNTS), seed: int = 0) -> Params:
    """The params of each benchmark model, evaluated with `count` crops and crop seed `seed`."""
    evaluate = {"evaluate.fid_crops": count, "evaluate.seed": seed}
    if label == "sr":
        return load_params(REPO / "params.yaml", {"tracking.enabled": False, **evaluate})
    work = PROMOTION_WORK / label
    if label == "sr_short":
        default = load_params(REPO / "params.yaml")
        steps = default.train.steps // SHORT_FACTOR
        extra = {
            "train.steps": steps,
            "train.warmup_steps": round(steps * default.train.warmup_steps / default.train.steps),
        }
        return config_params("sr_x4", work, {**extra, "data.prepared_dir": "data/prepared", **evaluate})
    if label == "denoise":
        return config_params("denoise_s25", work, evaluate)
    raise ValueError(f"unknown model '{label}'")


def ensure_model(label: str) -> Path:
    """The model folder of `label`, trained here (from scratch) when it is missing."""
    params = model_params(label)
    model_dir = REPO / params.train.out_dir
    if (model_dir / "generator.safetensors").is_file():
        return model_dir
    print(f"[{label}] training {params.train.steps} steps", flush=True)
    shutil.rmtree(REPO / params.train.checkpoint_dir, ignore_errors=True)
    if label != "sr_short":  # sr_short trains on the default prepared data
        prepare(params.data, min_side=params.train.patch_size, base=REPO)
    train(params, base=REPO)
    return model_dir


def crop_count(label: str) -> int:
    """Crops evaluated per seed: the count curve's largest for the default model, the protocol's for the others."""
    return max(COUNTS) if label == "sr" else load_params(REPO / "params.yaml").evaluate.fid_crops


def seed_evidence(label: str, seed: int) -> Evidence:
    """The evaluation evidence (per-image values, crop features) of model `label` at crop seed `seed`, cached.
    sr_short's evidence is its own outputs' with sr's bicubic values and features (the same images and crops)."""
    count = crop_count(label)
    cache = PROMOTION_WORK / "evidence" / f"{label}-seed{seed}-n{count}.npz"
    if cache.is_file():
        return Evidence.load(cache)
    params = model_params(label, count, seed)
    task = build_task(params.task)
    ev = params.evaluate
    enhancer = Enhancer.from_dir(ensure_model(label), device="cpu", tile=ev.tile, tile_pad=ev.tile_overlap)
    test_set = load_test_split(params, task, REPO)
    started = time.perf_counter()
    if label == "sr_short":
        shared = truncated(seed_evidence("sr", seed), count)
        outputs = {MODEL: method_outputs(task, enhancer, test_set)[MODEL]}
        own = measure_outputs(params, task, test_set, outputs)[0]
        if not np.allclose(own.reference, shared.reference, atol=1e-4):
            raise RuntimeError(f"seed {seed}: sr_short's crops differ from sr's; the pairing would be wrong")
        evidence = Evidence(
            shared.images,
            {**shared.per_image, MODEL: own.per_image[MODEL]},
            shared.reference,
            {**shared.features, MODEL: own.features[MODEL]},
            shared.positions,
            shared.methods,
        )
    else:
        evidence = evaluation_evidence(params, task, enhancer, test_set)
    print(f"[{label}] seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    evidence.save(cache)
    return evidence


def grid_positions(shapes: list[tuple[int, int]], count: int, size: int, seed: int) -> list[tuple[int, int, int]]:
    """The alternative crop layout: non-overlapping cells of a grid with a seeded offset on each image, taken in a
    seeded order, one image after the other while it has cells left (so small images give all their cells and
    large ones the rest)."""
    rng = np.random.default_rng(seed)
    queues = []
    for i, (height, width) in enumerate(shapes):
        top, left = int(rng.integers(0, height % size + 1)), int(rng.integers(0, width % size + 1))
        cells = [(i, top + r * size, left + c * size) for r in range(height // size) for c in range(width // size)]
        queues.append([cells[k] for k in rng.permutation(len(cells))])
    picks: list[tuple[int, int, int]] = []
    while len(picks) < count and any(queues):
        for queue in queues:
            if queue and len(picks) < count:
                picks.append(queue.pop())
    return picks


def grid_evidence(seed: int) -> Evidence:
    """The default model's and bicubic's crop features at the protocol's count, in the grid layout (cached)."""
    count = load_params(REPO / "params.yaml").evaluate.fid_crops
    cache = PROMOTION_WORK / "evidence" / f"sr-grid-seed{seed}-n{count}.npz"
    if cache.is_file():
        return Evidence.load(cache)
    params = model_params("sr", count, seed)
    task, ev = build_task(params.task), params.evaluate
    enhancer = Enhancer.from_dir(ensure_model("sr"), device="cpu", tile=ev.tile, tile_pad=ev.tile_overlap)
    test_set = load_test_split(params, task, REPO)
    started = time.perf_counter()
    methods = method_outputs(task, enhancer, test_set)
    positions = grid_positions([t.target.shape[:2] for t in test_set], count, ev.fid_crop_size, seed)
    size = ev.fid_crop_size
    reference = inception_features(crops([t.target for t in test_set], positions, size))
    features = {method: inception_features(crops(outputs, positions, size)) for method, outputs in methods.items()}
    evidence = Evidence([t.sha256 for t in test_set], {}, reference, features, np.array(positions))
    print(f"[sr, grid layout] seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    evidence.save(cache)
    return evidence


def layout_rows(count: int, confidence: float, resamples: int) -> list[dict[str, Any]]:
    """The two crop layouts of the default model at `count` crops, over the seeds: the spread of FID/KID and of
    the gain over bicubic, and the mean width of the gain's interval."""
    layouts = {
        "random positions, equal count per image (the protocol)": lambda s: truncated(seed_evidence("sr", s), count),
        "non-overlapping grid cells, small images exhausted first": grid_evidence,
    }
    rows = []
    for layout, evidence_of in layouts.items():
        per_seed = [Measured.of(evidence_of(seed)) for seed in SEEDS]
        for name in CROP_METRICS:
            values = [m.crops.point(MODEL, name) for m in per_seed]
            diffs = [difference(m, MODEL, m, "bicubic", name, confidence, resamples, 0).interval for m in per_seed]
            rows.append(
                {
                    "layout": layout,
                    "metric": name,
                    "mean": float(np.mean(values)),
                    "std_over_seeds": float(np.std(values, ddof=1)),
                    "diff_mean": float(np.mean([d.value for d in diffs])),
                    "diff_std_over_seeds": float(np.std([d.value for d in diffs], ddof=1)),
                    "diff_mean_interval_width": float(np.mean([d.high - d.low for d in diffs])),
                }
            )
    return rows


def truncated(evidence: Evidence, count: int) -> Evidence:
    """The evidence of the same evaluation with `count` crops: the first ones (crop_positions draws them in order,
    so this is exactly what an evaluation with evaluate.fid_crops = count measures)."""
    return Evidence(
        evidence.images,
        evidence.per_image,
        evidence.reference[:count],
        {method: features[:count] for method, features in evidence.features.items()},
        evidence.positions[:count],
        evidence.methods,
    )


def stability(label: str, counts: tuple[int, ...], confidence: float, resamples: int) -> list[dict[str, Any]]:
    """Per crop count and crop metric: the model's value over the seeds (mean, std), its mean interval width, and
    the model-vs-classical-baseline difference over the seeds (mean, std, mean interval width, how often the
    paired test calls it significant)."""
    baseline = build_task(model_params(label).task).classical_baseline
    rows = []
    for count in counts:
        per_seed = [Measured.of(truncated(seed_evidence(label, seed), count)) for seed in SEEDS]
        for name in CROP_METRICS:
            values, widths, diffs, diff_widths, significant = [], [], [], [], 0
            for k, measured in enumerate(per_seed):
                value = estimate(measured, MODEL, name, confidence, resamples, k)
                diff = difference(measured, MODEL, measured, baseline, name, confidence, resamples, k)
                values.append(value.value)
                widths.append(value.high - value.low)
                diffs.append(diff.interval.value)
                diff_widths.append(diff.interval.high - diff.interval.low)
                significant += diff.interval.low > 0 or diff.interval.high < 0
            rows.append(
                {
                    "model": label,
                    "crops": count,
                    "metric": name,
                    "baseline": baseline,
                    "mean": float(np.mean(values)),
                    "std_over_seeds": float(np.std(values, ddof=1)),
                    "mean_interval_width": float(np.mean(widths)),
                    "diff_mean": float(np.mean(diffs)),
                    "diff_std_over_seeds": float(np.std(diffs, ddof=1)),
                    "diff_mean_interval_width": float(np.mean(diff_widths)),
                    "diff_significant": significant,
                    "seeds": len(SEEDS),
                }
            )
    return rows


def old_rule(challenger: Evidence, champion: Evidence, primary: str, rules: PromoteParams) -> bool:
    """The point-estimate rule this project used before: better primary value, guard loss within tolerance."""
    ours, theirs = Measured.of(challenger), Measured.of(champion)
    m, guard = METRICS[primary], METRICS[rules.guard_metric]
    if not m.better(_point(ours, primary), _point(theirs, primary)):
        return False
    loss = -guard.gain(_point(ours, guard.name), _point(theirs, guard.name))
    return loss <= rules.guard_tolerance + 1e-12


def _point(measured: Measured, name: str) -> float:
    if METRICS[name].per == "image":
        return float(np.mean(measured.evidence.per_image[MODEL][name]))
    return measured.crops.point(MODEL, name)


def rule_rates(count: int, rules: PromoteParams, resamples: int) -> list[dict[str, Any]]:
    """False promotions (the default model re-evaluated with another crop seed: every ordered pair of seeds) and
    power (the model trained 10x longer against the short one, same seed), for the old rule with FID and KID
    and for the new policy."""
    policy = Policy(rules.model_copy(update={"require_baseline_win": False}), "bicubic", resamples)

    def candidate(label: str, seed: int) -> Candidate:
        protocol = {"fid_crops": count, "seed": seed}
        return Candidate(f"{label}@{seed}", protocol, truncated(seed_evidence(label, seed), count))

    same = [(candidate("sr", a), candidate("sr", b)) for a in SEEDS for b in SEEDS if a != b]
    longer = [(candidate("sr", s), candidate("sr_short", s)) for s in SEEDS]
    rows = []
    situations = (("same model, other crop seed", same, False), ("10x longer vs short", longer, True))
    for situation, pairs, should in situations:
        for name in CROP_METRICS:
            label = METRICS[name].label
            tested = Policy(policy.rules.model_copy(update={"primary_metric": name}), "bicubic", resamples)
            outcomes = {
                f"old rule (point estimates), {label}": [
                    old_rule(a.evidence, b.evidence, name, rules) for a, b in pairs
                ],
                f"paired test ({rules.confidence:.0%}), {label}": [decide(a, b, tested).promote for a, b in pairs],
            }
            for rule, promoted in outcomes.items():
                row = {"situation": situation, "rule": rule, "pairs": len(pairs), "promoted": int(sum(promoted))}
                rows.append({**row, "should": should})
    return rows


def gate_rows(count: int, rules: PromoteParams, resamples: int) -> list[dict[str, Any]]:
    """How often each model passes the baseline gate over the seeds."""
    rows = []
    for label in MODELS:
        task = build_task(model_params(label).task)
        primary = rules.primary_metric
        passed = []
        for seed in SEEDS:
            measured = Measured.of(truncated(seed_evidence(label, seed), count))
            diff = difference(
                measured, MODEL, measured, task.classical_baseline, primary, rules.confidence, resamples, 0
            )
            passed.append(diff.significantly_better)
        row = {"model": label, "baseline": task.classical_baseline, "metric": METRICS[primary].label}
        rows.append({**row, "seeds": len(SEEDS), "beats_baseline": int(sum(passed))})
    return rows


def render(report: dict[str, Any]) -> str:
    """Markdown tables of the report."""
    lines = [f"Machine: {machine_line(report['machine'])}", ""]
    lines += [
        f"### FID and KID over {len(SEEDS)} crop seeds (the same model; interval: {report['confidence']:.0%})",
        "",
        "| model | crops | metric | mean over seeds | std over seeds | mean interval width | "
        "model - baseline: mean | std | interval width | significant |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["stability"]:
        fmt = METRICS[r["metric"]].fmt
        lines.append(
            f"| {r['model']} | {r['crops']} | {METRICS[r['metric']].label} | {r['mean']:{fmt}} | "
            f"{r['std_over_seeds']:{fmt}} | {r['mean_interval_width']:{fmt}} | {r['diff_mean']:+{fmt}} vs "
            f"{r['baseline']} | {r['diff_std_over_seeds']:{fmt}} | {r['diff_mean_interval_width']:{fmt}} | "
            f"{r['diff_significant']}/{r['seeds']} |"
        )
    lines += [
        "",
        f"### Promotion rules at {report['count']} crops",
        "",
        "| situation | rule | pairs | promoted | rate |",
        "|---|---|---|---|---|",
    ]
    for r in report["rules"]:
        wanted = "power" if r["should"] else "false promotions"
        lines.append(
            f"| {r['situation']} | {r['rule']} | {r['pairs']} | {r['promoted']} | "
            f"{r['promoted'] / r['pairs']:.0%} ({wanted}) |"
        )
    lines += [
        "",
        f"### Crop layouts at {report['count']} crops (the default model, {len(SEEDS)} seeds)",
        "",
        "| layout | metric | mean | std over seeds | model - bicubic: mean | std | interval width |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["layouts"]:
        fmt = METRICS[r["metric"]].fmt
        lines.append(
            f"| {r['layout']} | {METRICS[r['metric']].label} | {r['mean']:{fmt}} | {r['std_over_seeds']:{fmt}} | "
            f"{r['diff_mean']:+{fmt}} | {r['diff_std_over_seeds']:{fmt}} | {r['diff_mean_interval_width']:{fmt}} |"
        )
    lines += [
        "",
        "### Baseline gate",
        "",
        "| model | baseline | primary metric | beats it (seeds) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['baseline']} | {r['metric']} | {r['beats_baseline']}/{r['seeds']} |"
        for r in report["gate"]
    ]
    return "\n".join(lines) + "\n"


PARTS = ("stability", "rules", "gate", "layouts")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS, help="models to evaluate")
    parser.add_argument("--features-only", action="store_true", help="compute and cache the evidence, no tables")
    parser.add_argument(
        "--parts",
        nargs="*",
        default=list(PARTS),
        choices=PARTS,
        help="tables to (re)compute; the others are kept "
        "from benchmarks/results/promotion.json (none: render it again; the stability table alone takes ~15 min)",
    )
    args = parser.parse_args(argv)
    info = machine()
    for label in args.models:
        for seed in SEEDS:
            seed_evidence(label, seed)
    for seed in SEEDS:
        grid_evidence(seed)
    if args.features_only:
        return
    params = load_params(REPO / "params.yaml")
    rules, ev = params.promote, params.evaluate
    parts = {
        "stability": lambda: [
            row
            for label in ("sr", "denoise")
            for row in stability(label, COUNTS if label == "sr" else (ev.fid_crops,), ev.confidence, ev.bootstrap)
        ],
        "rules": lambda: rule_rates(ev.fid_crops, rules, ev.bootstrap),
        "gate": lambda: gate_rows(ev.fid_crops, rules, ev.bootstrap),
        "layouts": lambda: layout_rows(ev.fid_crops, ev.confidence, ev.bootstrap),
    }
    saved = RESULTS / "promotion.json"
    report = json.loads(saved.read_text()) if saved.is_file() else {}
    report.update({"count": ev.fid_crops, "confidence": ev.confidence, "resamples": ev.bootstrap})
    for part in args.parts:
        report[part] = parts[part]()
    missing = [part for part in PARTS if part not in report]
    if missing:
        raise SystemExit(f"no saved {', '.join(missing)} in {saved}; run with --parts {' '.join(missing)}")
    if args.parts:  # the machine the tables were computed on
        info["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
        report["machine"] = info
    markdown = render(report)
    print(markdown)
    RESULTS.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "promotion.md").write_text("# Promotion on evidence\n\n" + markdown)


if __name__ == "__main__":
    main()
