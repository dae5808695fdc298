"""The evaluate stage and `evaluate_folder`: which evaluation fits the task's kind (gan_enhance.kinds), whether
the model fits the task, and logging the result to the model's training run.

The parts live beside this module: testsets.py (test split, folders, crops), report.py (metrics.json, per-image
CSV, grid), paired.py, translation.py and generation.py (one evaluation per kind)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gan_enhance.config import Params
from gan_enhance.evaluation.paired import evaluate_test_set
from gan_enhance.evaluation.report import write_report
from gan_enhance.evaluation.testsets import EvaluationError, TestImage, load_test_folder
from gan_enhance.inference import Enhancer
from gan_enhance.kinds import KINDS
from gan_enhance.tasks import Task, build_task


def check_fits(enhancer: Enhancer, task: Task, where: str) -> None:
    """The model's card must say what the task needs (task, scale, inputs, direction, image size)."""
    card = enhancer.card
    wanted = task.card_fields()
    differences = [
        f"{key} {getattr(card, key)} vs {value}" for key, value in wanted.items() if getattr(card, key) != value
    ]
    if differences:
        raise EvaluationError(
            f"the model in {where} was trained for task '{card.task}' x{card.scale}, but params ask "
            f"for '{task.name}' x{task.scale} ({'; '.join(differences)}); retrain (`dvc repro`) or set task.* "
            "to match the model"
        )


def evaluate(params: Params, base: Path = Path(".")) -> dict[str, Any]:
    """The evaluate stage; returns what it writes to metrics.json."""
    task = build_task(params.task)
    ev = params.evaluate
    enhancer = Enhancer.from_dir(
        base / params.train.out_dir, device=params.train.device, tile=ev.tile, tile_pad=ev.tile_overlap
    )
    check_fits(enhancer, task, str(params.train.out_dir))
    evaluation = KINDS[task.kind].load_evaluation()(params, task, enhancer, base)
    out = base / ev.out_dir
    write_report(out, evaluation)
    _log_to_training_run(params, base, enhancer.card.mlflow_run_id, evaluation.result, out)
    return evaluation.result


@dataclass
class FolderEvaluation:
    result: dict[str, Any]  # metrics.json content
    rows: list[dict[str, Any]]  # per-image metrics
    test_set: list[TestImage]


def evaluate_folder(
    params: Params,
    enhancer: Enhancer,
    folder: Path,
    out: Path,
    where: str,
    twins: Mapping[str, Enhancer] | None = None,
) -> FolderEvaluation:
    """Evaluate `enhancer` (described as `where` in errors) and its `twins` (scored as baselines) on every image of
    `folder` (a benchmark set such as Set14) with the params' task and evaluation settings; metrics.json,
    per_image.csv and comparison.png go into `out`. Kinds whose evaluation needs the prepared data (two domains,
    generation) are refused."""
    task = build_task(params.task)
    if not KINDS[task.kind].evaluates_folders:
        raise EvaluationError(
            f"task '{task.name}' is {task.kind}: its evaluation needs the prepared data (`dvc repro evaluate`), "
            "not a folder of test images"
        )
    check_fits(enhancer, task, where)
    test_set = load_test_folder(folder, task, params.evaluate.seed, params.data.max_pixels)
    evaluation = evaluate_test_set(params, task, enhancer, test_set, out, twins)
    return FolderEvaluation(evaluation.result, evaluation.rows, test_set)


def _log_to_training_run(params: Params, base: Path, run_id: str | None, result: dict[str, Any], out: Path) -> None:
    if not (params.tracking.enabled and run_id):
        return
    import mlflow

    from gan_enhance.tracking import tracking_uri

    try:
        client = mlflow.MlflowClient(tracking_uri(params.tracking, base))
        for method, values in result.items():
            for key, value in values.items():
                if method != "protocol" and isinstance(value, int | float) and math.isfinite(value):
                    client.log_metric(run_id, f"eval_{method}_{key}", value)
        client.log_artifacts(run_id, str(out), artifact_path="evaluation")
    except Exception as exc:
        print(f"warning: could not log evaluation to MLflow run {run_id} ({exc}); metrics.json is written")
