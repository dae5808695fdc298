"""The `evaluate_champion` flow: re-evaluate the registry's champion on a benchmark folder (e.g. Set14) with the
evaluate stage's code and protocol, and log the result to MLflow.

The result goes to a new MLflow run named `evaluate-champion-<benchmark>-v<version>`, nested under the run that
registered the champion (same experiment; tags name the registered model, version, alias and benchmark), with the
metrics of the model and of the classical baselines (`<method>_<metric>`, e.g. model_psnr, bicubic_psnr, with
their intervals: model_psnr_low, ...), the model's gain over each baseline, and metrics.json, per_image.csv and
comparison.png as artifacts. The version itself is tagged `benchmark.<name>.run_id` and `benchmark.<name>.<metric>`
so the registry UI shows where it was measured (these are not `metric.*` tags: the promotion policy keeps comparing
on the evaluate stage's protocol). The flow prints the table of the model's and the baselines' metrics and the
gains, each with its interval (a Prefect markdown artifact shows it too) and keeps the report files in
reports/benchmarks/<benchmark>/ (or `--out`).

    python -m flows.evaluate_champion --benchmark ../shared/datasets/Set14
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Cancelled, State
from prefect.tasks import exponential_backoff

from flows.support import (
    Interrupted,
    interruptible,
    repo_params,
    retry_if_transient,
    run_from_command_line,
    run_step,
    use_registry,
)
from gan_enhance.device import disable_telemetry
from gan_enhance.metric_facts import INTERVAL_SUFFIXES, Metric, present, samples_note

disable_telemetry()

DEFAULT_BENCHMARK = "../shared/datasets/Set14"
REPORTS_DIR = "reports/benchmarks"  # <repo>/reports/benchmarks/<benchmark>: the report files, unless out_dir is given


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
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
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
    for m in present(result["model"]):
        client.set_model_version_tag(name, version, f"benchmark.{bench}.{m.name}", repr(float(result["model"][m.name])))
    get_run_logger().info(f"logged to MLflow run {run_id} (experiment {experiment_id}, parent run {parent})")
    return run_id


Row = tuple[str, dict[str, Any], bool]  # label, values (<metric>, <metric>_low, ...), whether they are gains


def metric_table(result: dict[str, Any]) -> tuple[list[Metric], list[Row]]:
    """The columns (the metrics the model has) and the rows: the model, each baseline, and the model's gain over
    each baseline (positive = better), each metric with its interval."""
    columns = present(result["model"])
    methods = [method for method in result if method not in ("gain", "protocol")]
    rows: list[Row] = [(method, result[method], False) for method in methods]
    gain = result.get("gain", {})
    for baseline in (method for method in methods if method != "model"):
        values = {
            m.name + suffix: gain[f"{m.name}_vs_{baseline}{suffix}"]
            for m in columns
            for suffix in ("", *INTERVAL_SUFFIXES)
            if f"{m.name}_vs_{baseline}{suffix}" in gain
        }
        if values:
            rows.append((f"gain vs {baseline}", values, True))
    return columns, rows


def render(evaluation: dict[str, Any], folder: Path, run_id: str, alias: str, out: Path) -> str:
    """Markdown: the metric table of the model, the baselines and the gains, where the report and the run are."""
    result = evaluation["result"]
    columns, rows = metric_table(result)
    lines = [
        f"# `{evaluation['model_name']}` version {evaluation['version']} (@{alias}) on {benchmark_name(folder)}",
        "",
        f"{evaluation['images']} images from `{folder}`; report in `{out}`; MLflow run `{run_id}`.",
        "",
        "| method | " + " | ".join(m.name for m in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    lines += [
        f"| {label} | " + " | ".join(m.show_interval(values, signed) for m in columns) + " |"
        for label, values, signed in rows
    ]
    lines += ["", samples_note(result["model"], columns, result["protocol"].get("confidence"))]
    return "\n".join(lines) + "\n"


def render_text(evaluation: dict[str, Any], folder: Path, alias: str) -> str:
    """The same table as plain text, for the console."""
    result = evaluation["result"]
    columns, rows = metric_table(result)
    table = [["method", *(m.name for m in columns)]]
    table += [[label, *(m.show_interval(values, signed) for m in columns)] for label, values, signed in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [
        f"{evaluation['model_name']} version {evaluation['version']} (@{alias}) on {benchmark_name(folder)} "
        f"({evaluation['images']} images):"
    ]
    lines += [
        "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
        for row in table
    ]
    lines.append(samples_note(result["model"], columns, result["protocol"].get("confidence")))
    return "\n".join(lines)


def default_out(root: Path, folder: Path) -> Path:
    """Where the report goes unless `out_dir` is given: <repo>/reports/benchmarks/<benchmark name>."""
    return root / REPORTS_DIR / benchmark_name(folder)


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
) -> dict[str, Any] | State:
    """Re-evaluate the version holding `alias` (default: the champion) on a benchmark folder, print the metric table,
    keep the report and log it to MLflow. A command-line run stopped by SIGINT or SIGTERM ends Cancelled.

    Args:
        benchmark: a folder of images (relative paths are taken from `repo`).
        repo: the project root (its params.yaml names the task, the registered model and the evaluation protocol).
        alias: which version to evaluate.
        model_name: the registered model (default: from params, e.g. gan-enhance-sr-x4).
        device: auto, cpu, cuda or mps.
        out_dir: where metrics.json, per_image.csv and comparison.png go (default: <repo>/reports/benchmarks/<name
            of the benchmark folder>); they are logged to the MLflow run as well.
    """
    root = Path(repo).resolve()
    folder = Path(benchmark) if Path(benchmark).is_absolute() else root / benchmark
    out = Path(out_dir).resolve() if out_dir else default_out(root, folder)
    retry = {
        "retries": retries,
        "retry_delay_seconds": exponential_backoff(retry_delay_s),
        "retry_condition_fn": retry_if_transient,
    }
    with interruptible():
        try:
            evaluate = evaluate_on_benchmark.with_options(**retry)
            evaluation = run_step(evaluate, root, folder, out, alias, model_name, device)
            run_id = run_step(log_evaluation.with_options(**retry), root, evaluation, folder, out, alias)
        except Interrupted as exc:
            return Cancelled(message=f"interrupted: {exc}")
    print(f"{render_text(evaluation, folder, alias)}\nreport: {out}")
    create_markdown_artifact(
        markdown=render(evaluation, folder, run_id, alias, out),
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
        "out_dir": str(out),
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.evaluate_champion`: one run; exit 0 when it completed, 1 when it failed, 128 + the signal's
    number when SIGINT or SIGTERM stopped it."""
    import argparse

    parser = argparse.ArgumentParser(description="Run the evaluate_champion flow once (see flows/README.md).")
    parser.add_argument("--benchmark", default=DEFAULT_BENCHMARK, help="folder of benchmark images")
    parser.add_argument("--repo", default=".", help="project root (default: the current directory)")
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--out", default=None, help=f"folder for the report files (default: {REPORTS_DIR}/<benchmark folder's name>)"
    )
    args = parser.parse_args(argv)
    state, interrupted = run_from_command_line(
        lambda: evaluate_champion(
            benchmark=args.benchmark,
            repo=args.repo,
            alias=args.alias,
            device=args.device,
            out_dir=args.out,
            return_state=True,
        )
    )
    if interrupted:
        return interrupted.exit_code
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
