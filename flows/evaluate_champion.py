"""The `evaluate_champion` flow: re-evaluate the registry's champion on a benchmark folder (e.g. Set14) with the
evaluate stage's code and protocol, and log the result to MLflow.

The result goes to a new MLflow run named `evaluate-champion-<benchmark>-v<version>`, nested under the run that
registered the champion (same experiment; tags name the registered model, version, alias and benchmark), with the
metrics of the model and of the classical baseline (`<method>_<metric>`, e.g. model_psnr, bicubic_psnr), the
model's gain, and metrics.json, per_image.csv and comparison.png as artifacts. The version itself is tagged
`benchmark.<name>.run_id` and `benchmark.<name>.<metric>` so the registry UI shows where it was measured (these
are not `metric.*` tags: the promotion policy keeps comparing on the evaluate stage's protocol). A Prefect
markdown artifact shows the table.

    python -m flows.evaluate_champion --benchmark ../shared/datasets/Set14
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from flows.support import command_line_api, repo_params, retry_if_transient, run_step, use_registry
from gan_enhance.device import disable_telemetry

disable_telemetry()

DEFAULT_BENCHMARK = "../shared/datasets/Set14"
METRIC_ORDER = ("psnr", "ssim", "psnr_hole", "ssim_hole", "fid", "kid", "kid_std")


def benchmark_name(folder: Path) -> str:
    """A key-safe name for the benchmark folder (Set14, CBSD68, ...)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", folder.resolve().name) or "benchmark"


@task(name="evaluate on benchmark", cache_policy=NO_CACHE, timeout_seconds=3 * 3600)
def evaluate_on_benchmark(
    repo: Path, folder: Path, out_dir: Path, alias: str, model_name: str | None, device: str
) -> dict[str, Any]:
    """Load the version holding `alias` and run the evaluate stage's code over every image of `folder`; writes
    metrics.json, per_image.csv and comparison.png into `out_dir`."""
    from gan_enhance.evaluation.stage import evaluate_folder
    from gan_enhance.lifecycle.registry import client_for, load_enhancer, registered_model_name, require_alias

    log = get_run_logger()
    params = repo_params(repo)
    use_registry(params.tracking.uri)
    name = model_name or registered_model_name(params)
    version = require_alias(client_for(params.tracking.uri), name, alias)
    ev = params.evaluate
    enhancer = load_enhancer(
        name, alias, tracking_uri=params.tracking.uri, device=device, tile=ev.tile, tile_pad=ev.tile_overlap
    )
    log.info(f"evaluating {name} version {version.version} (@{alias}) on the images of {folder}")
    where = f"models:/{name}@{alias} (version {version.version})"
    evaluated = evaluate_folder(params, enhancer, folder, out_dir, where)
    result, test_set = evaluated.result, evaluated.test_set
    return {
        "model_name": name,
        "version": str(version.version),
        "registration_run_id": version.run_id,
        "result": result,
        "images": len(test_set),
    }


@task(name="log to MLflow", cache_policy=NO_CACHE, timeout_seconds=900)
def log_evaluation(repo: Path, evaluation: dict[str, Any], folder: Path, out_dir: Path, alias: str) -> str:
    """A new run nested under the champion's registration run, with metrics, tags and the report files; the
    version gets benchmark.<name>.* tags. Returns the run id."""
    import mlflow

    from gan_enhance.lifecycle.registry import client_for
    from gan_enhance.tracking import ensure_experiment, experiment_name, lineage_tags

    params = repo_params(repo)
    client = client_for(params.tracking.uri)
    name, version, bench = evaluation["model_name"], evaluation["version"], benchmark_name(folder)
    result = evaluation["result"]
    parent = evaluation["registration_run_id"]
    experiment_id = None
    if parent:
        try:
            experiment_id = client.get_run(parent).info.experiment_id
        except mlflow.exceptions.MlflowException:
            parent = None  # registered from another store: log into the task's experiment, unparented
    if experiment_id is None:
        experiment_id = ensure_experiment(client, experiment_name(params.tracking, params.task.name))
    tags = {
        **lineage_tags(repo),
        "stage": "evaluate_champion",
        "registered_model": name,
        "model_version": version,
        "alias": alias,
        "benchmark": bench,
        "benchmark_path": str(folder.resolve()),
        "test_set_hash": result["protocol"]["test_set_hash"],
    }
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(experiment_id, tags=tags, run_name=f"evaluate-champion-{bench}-v{version}")
    run_id = run.info.run_id
    try:
        metrics = {
            f"{method}_{key}": float(value)
            for method, values in result.items()
            if method != "protocol"
            for key, value in values.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        client.log_batch(
            run_id,
            metrics=[mlflow.entities.Metric(key, value, int(time.time() * 1000), 0) for key, value in metrics.items()],
            params=[mlflow.entities.Param("protocol", json.dumps(result["protocol"], sort_keys=True)[:6000])],
        )
        client.log_artifacts(run_id, str(out_dir), artifact_path="evaluation")
        client.set_terminated(run_id, "FINISHED")
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_model_version_tag(name, version, f"benchmark.{bench}.run_id", run_id)
    for key in ("psnr", "ssim", "fid"):
        if key in result["model"]:
            client.set_model_version_tag(name, version, f"benchmark.{bench}.{key}", repr(float(result["model"][key])))
    get_run_logger().info(f"logged to MLflow run {run_id} (experiment {experiment_id}, parent run {parent})")
    return run_id


def render(evaluation: dict[str, Any], folder: Path, run_id: str, alias: str) -> str:
    result = evaluation["result"]
    methods = [m for m in result if m not in ("gain", "protocol")]
    columns = [c for c in METRIC_ORDER if c in result["model"]]
    lines = [
        f"# `{evaluation['model_name']}` version {evaluation['version']} (@{alias}) on {benchmark_name(folder)}",
        "",
        f"{evaluation['images']} images from `{folder}`; MLflow run `{run_id}`.",
        "",
        "| method | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for method in methods:
        lines.append(
            f"| {method} | " + " | ".join(f"{result[method].get(c, float('nan')):.4g}" for c in columns) + " |"
        )
    return "\n".join(lines) + "\n"


@flow(name="evaluate-champion", log_prints=True)
def evaluate_champion(
    benchmark: str = DEFAULT_BENCHMARK,
    repo: str = ".",
    alias: str = "champion",
    model_name: str | None = None,
    device: str = "auto",
    out_dir: str | None = None,
    retries: int = 2,
    retry_delay_s: float = 10.0,
) -> dict[str, Any]:
    """Re-evaluate the version holding `alias` (default: the champion) on a benchmark folder and log it to MLflow.

    Args:
        benchmark: a folder of images (relative paths are taken from `repo`).
        repo: the project root (its params.yaml names the task, the registered model and the evaluation protocol).
        alias: which version to evaluate.
        model_name: the registered model (default: from params, e.g. gan-enhance-sr-x4).
        device: auto, cpu, cuda or mps.
        out_dir: where metrics.json, per_image.csv and comparison.png go (default: a temporary folder; they are
            logged to the MLflow run either way).
    """
    root = Path(repo).resolve()
    folder = Path(benchmark) if Path(benchmark).is_absolute() else root / benchmark
    retry = {
        "retries": retries,
        "retry_delay_seconds": exponential_backoff(retry_delay_s),
        "retry_condition_fn": retry_if_transient,
    }
    with tempfile.TemporaryDirectory(prefix="gan-enhance-evaluate-champion-") as tmp:
        out = Path(out_dir).resolve() if out_dir else Path(tmp)
        evaluate = evaluate_on_benchmark.with_options(**retry)
        evaluation = run_step(evaluate, root, folder, out, alias, model_name, device)
        run_id = run_step(log_evaluation.with_options(**retry), root, evaluation, folder, out, alias)
    create_markdown_artifact(
        markdown=render(evaluation, folder, run_id, alias),
        key=re.sub(r"[^a-z0-9-]+", "-", f"evaluate-{evaluation['model_name']}-{benchmark_name(folder)}".lower()),
        description=f"{evaluation['model_name']} v{evaluation['version']} on {benchmark_name(folder)}",
    )
    return {
        "model_name": evaluation["model_name"],
        "version": evaluation["version"],
        "benchmark": benchmark_name(folder),
        "images": evaluation["images"],
        "run_id": run_id,
        "metrics": evaluation["result"]["model"],
    }


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Run the evaluate_champion flow once (see flows/README.md).")
    parser.add_argument("--benchmark", default=DEFAULT_BENCHMARK, help="folder of benchmark images")
    parser.add_argument("--repo", default=".", help="project root (default: the current directory)")
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="also keep the report files here")
    args = parser.parse_args(argv)
    with command_line_api():
        state = evaluate_champion(
            benchmark=args.benchmark,
            repo=args.repo,
            alias=args.alias,
            device=args.device,
            out_dir=args.out,
            return_state=True,
        )
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
