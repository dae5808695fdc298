"""MLflow logging for a training run. Tracking trouble never costs the training: it warns and goes on."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from PIL import Image

from gan_enhance.config import Params
from gan_enhance.tracking import ensure_experiment, experiment_name, flatten, lineage_tags, tracking_uri


class RunTracker:
    def __init__(self, uri: str | None, experiment: str, base: Path = Path(".")) -> None:
        self.uri = uri
        self.experiment = experiment
        self.base = base
        self.run_id: str | None = None
        self._resume_id: str | None = None
        self._mlflow: Any = None

    @classmethod
    def from_params(cls, params: Params, base: Path = Path(".")) -> RunTracker:
        uri = tracking_uri(params.tracking, base) if params.tracking.enabled else None
        return cls(uri, experiment_name(params.tracking, params.task.name), base)

    @property
    def active(self) -> bool:
        return self._mlflow is not None

    def resume(self, run_id: str | None) -> None:
        self._resume_id = run_id

    def _guard(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.active:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            warnings.warn(f"MLflow {what} failed ({exc}); training goes on without tracking", stacklevel=2)
            self._mlflow = None
            return None

    def start(self, params: Params, data_hash: str) -> None:
        if self.uri is None:
            return
        import mlflow

        self._mlflow = mlflow

        def _start() -> None:
            mlflow.set_tracking_uri(self.uri)
            if self._resume_id:
                try:
                    run = mlflow.start_run(run_id=self._resume_id)
                    self.run_id = run.info.run_id
                    return
                except Exception:
                    pass  # the run is gone (another store?): start a new one
            experiment_id = ensure_experiment(mlflow.MlflowClient(self.uri), self.experiment)
            mlflow.set_experiment(experiment_id=experiment_id)
            run = mlflow.start_run(run_name=f"train-{params.task.name}")
            self.run_id = run.info.run_id
            mlflow.log_params(flatten(params.model_dump(mode="json")))
            mlflow.set_tags({**lineage_tags(self.base), "data_hash": data_hash, "stage": "train"})

        self._guard("start", _start)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._guard("log_metrics", lambda: self._mlflow.log_metrics(metrics, step=step))

    def log_image(self, image: Image.Image, artifact_file: str) -> None:
        self._guard("log_image", lambda: self._mlflow.log_image(image, artifact_file=artifact_file))

    def finish(self, model_dir: Path, report_dir: Path, metrics: dict[str, float]) -> None:
        def _finish() -> None:
            self._mlflow.log_metrics({f"final_{k}": v for k, v in metrics.items()})
            self._mlflow.log_artifacts(str(model_dir), artifact_path="generator")
            if report_dir.is_dir():
                self._mlflow.log_artifacts(str(report_dir), artifact_path="train_report")
            self._mlflow.end_run()

        self._guard("finish", _finish)
