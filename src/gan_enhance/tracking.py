"""MLflow tracking set-up shared by every stage: absolute URI, experiment, lineage tags. MLflow itself is imported
only where it is used, so that importing this module stays cheap."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gan_enhance.config import TrackingParams
from gan_enhance.errors import GanEnhanceError

if TYPE_CHECKING:
    from mlflow import MlflowClient

DVC_TAGS = ("DVC_EXP_NAME", "DVC_STAGE", "DVC_ROOT")
# the experiment kind MLflow's UI opens an experiment in: model development (runs, metrics, models), not GenAI
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_DEVELOPMENT = "custom_model_development"


def tracking_uri(tracking: TrackingParams, base: Path = Path(".")) -> str:
    """params > $MLFLOW_TRACKING_URI > sqlite at <base>/mlflow.db, always absolute (DVC experiments run
    in temporary copies, where a relative URI would silently lose their runs)."""
    uri = tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{(base / 'mlflow.db').resolve()}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps artifacts: beside a SQLite store (MLflow's default, ./mlruns of whatever
    directory is current, would strand them in a DVC experiment's temporary copy); None lets a server decide."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


class ExperimentError(GanEnhanceError, RuntimeError):
    """An MLflow experiment that can be neither found nor created."""


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The id of the experiment `name` in the client's store, created when missing with its artifacts where
    `artifact_location` puts them; one created by a concurrent process in the meantime is found instead. The
    experiment is marked as model development, so MLflow's UI opens it on runs and models rather than in its GenAI
    mode. ExperimentError when it can be neither found nor created."""
    from mlflow.exceptions import MlflowException

    for _ in range(2):  # a concurrent process may create the experiment between get and create
        experiment = client.get_experiment_by_name(name)
        if experiment:
            if experiment.tags.get(EXPERIMENT_KIND_TAG) != MODEL_DEVELOPMENT:
                client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT)
            return experiment.experiment_id
        try:
            return client.create_experiment(
                name,
                artifact_location=artifact_location(client.tracking_uri),
                tags={EXPERIMENT_KIND_TAG: MODEL_DEVELOPMENT},
            )
        except MlflowException:
            continue
    raise ExperimentError(f"could not create or find the MLflow experiment '{name}' at {client.tracking_uri}")


def git_commit(base: Path = Path(".")) -> str | None:
    """HEAD's commit, suffixed '-dirty' when tracked files differ; None outside a git repository."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=base, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=base, capture_output=True).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


def lineage_tags(base: Path = Path(".")) -> dict[str, str]:
    tags = {key.lower(): os.environ[key] for key in DVC_TAGS if os.environ.get(key)}
    commit = git_commit(base)
    if commit:
        tags["git_commit"] = commit
    return tags


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}, for log_params."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def experiment_name(tracking: TrackingParams, task: str) -> str:
    return tracking.experiment or f"gan-enhance-{task}"
