"""The register stage: the evaluated EMA generator becomes a version of the task's registered model, alias challenger.

The version is a pyfunc "model from code" (model_code.py) whose artifacts are the generator folder
(generator.safetensors + card.json) and its lineage (metrics.json, params.yaml, dvc.lock); its tags carry the
metrics, the evaluation protocol, the git commit, the DVC hash of the prepared data and a registration key
(hash of weights, card and metrics.json). A model whose key is already registered is not registered again.
The pyfunc model is logged in a run of its own, nested under the training run named by the card.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, Literal

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

import gan_enhance
from gan_enhance.config import Params
from gan_enhance.evaluation.evidence import EVIDENCE_FILE
from gan_enhance.evaluation.report import METRICS_FILE
from gan_enhance.lifecycle import pyfunc_model
from gan_enhance.lifecycle.errors import RegistryError
from gan_enhance.lifecycle.registry import (
    CHALLENGER,
    CHAMPION,
    METRIC_PREFIX,
    PROTOCOL_TAG,
    check_artifacts,
    client_for,
    registered_model_name,
)
from gan_enhance.metric_facts import present
from gan_enhance.models.artifact import CARD_FILE, WEIGHTS_FILE, ArtifactError, ModelCard, load_card
from gan_enhance.tasks import build_task
from gan_enhance.tracking import ExperimentError, ensure_experiment, experiment_name, flatten, lineage_tags

KEY_TAG = "registration_key"
DVC_LOCK = Path("dvc.lock")
MODEL_CODE = Path(pyfunc_model.__file__).with_name("model_code.py")
RUNTIME_PACKAGES = ("torch", "numpy", "safetensors", "pillow")


ALIAS_ATTEMPTS = 4
# The tracking server or its database away (a restart): MLflow's client retries each request with back-off for
# minutes first; then the whole registration, which is idempotent, is tried again before it fails.
REGISTER_ATTEMPTS = 3
RETRY_DELAY_S = 2.0
TRANSIENT_ERRORS = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}


@dataclass(frozen=True)
class Registration:
    """What the stage did: 'registered' a new version, found the model 'unchanged', or 'skipped' (tracking off)."""

    status: Literal["registered", "unchanged", "skipped"]
    model_name: str
    version: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class Submission:
    """The evaluated model and everything its version will carry."""

    model_dir: Path
    metrics_file: Path
    card: ModelCard
    metrics: dict[str, Any]
    key: str
    data_dvc_hash: str | None


def registration_key(model_dir: Path, metrics_file: Path) -> str:
    """Hash of weights, card and evaluation: equal keys mean the same model, evaluated the same way."""
    digest = hashlib.sha256()
    for path in (model_dir / WEIGHTS_FILE, model_dir / CARD_FILE, metrics_file):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:32]


def dvc_data_hash(lock_file: Path, prepared_dir: Path) -> str | None:
    """DVC's hash of the prepared data the model was trained on (train's dependency, else prepare's output)."""
    if not lock_file.is_file():
        return None
    stages = (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {})
    wanted = prepared_dir.as_posix()
    for stage, kind in (("train", "deps"), ("prepare", "outs")):
        for entry in stages.get(stage, {}).get(kind, []):
            if Path(entry.get("path", "")).as_posix() == wanted and entry.get("md5"):
                return str(entry["md5"])
    return None


def gather_submission(params: Params, base: Path = Path(".")) -> Submission:
    """Read the model folder and its evaluation; refuse when they do not belong together or to these params."""
    model_dir = base / params.train.out_dir
    card = load_card(model_dir)
    if not (model_dir / WEIGHTS_FILE).is_file():
        raise ArtifactError(f"weights '{model_dir / WEIGHTS_FILE}' are missing; re-run training")
    task = build_task(params.task)
    if (card.task, card.scale) != (task.name, task.scale):
        raise RegistryError(
            f"the model in {model_dir} is for '{card.task}' x{card.scale}, but params ask for '{task.name}' "
            f"x{task.scale} (registered model '{registered_model_name(params)}'); set task.* to match the model"
        )
    metrics_file = base / params.evaluate.out_dir / METRICS_FILE
    if not metrics_file.is_file():
        raise RegistryError(f"no evaluation at {metrics_file}; run `gan-enhance evaluate` (or `dvc repro`) first")
    metrics = json.loads(metrics_file.read_text())
    evaluated = metrics.get("model", {})
    if (evaluated.get("mlflow_run_id"), evaluated.get("data_hash")) != (card.mlflow_run_id, card.data_hash):
        raise RegistryError(
            f"{metrics_file} evaluates another model (run {evaluated.get('mlflow_run_id')}) than the one in "
            f"{model_dir} (run {card.mlflow_run_id}); re-run `gan-enhance evaluate` (or `dvc repro`)"
        )
    if "protocol" not in metrics:
        raise RegistryError(f"{metrics_file} has no 'protocol' block; re-run `gan-enhance evaluate`")
    if not (metrics_file.parent / EVIDENCE_FILE).is_file():
        raise RegistryError(
            f"no {EVIDENCE_FILE} beside {metrics_file} (the per-image values and crop features promotion tests "
            "with); re-run `gan-enhance evaluate` (or `dvc repro`)"
        )
    return Submission(
        model_dir,
        metrics_file,
        card,
        metrics,
        registration_key(model_dir, metrics_file),
        dvc_data_hash(base / DVC_LOCK, params.data.prepared_dir),
    )


def version_tags(submission: Submission, base: Path = Path(".")) -> dict[str, str]:
    """Metrics, protocol and lineage as model version tags (the promotion policy reads metric.* and protocol)."""
    card, metrics = submission.card, submission.metrics
    lineage = lineage_tags(base)
    tags: dict[str, Any] = {
        KEY_TAG: submission.key,
        "task": card.task,
        "scale": card.scale,
        "arch": card.arch,
        "steps": card.steps,
        "training_run_id": card.mlflow_run_id,
        "data_hash": card.data_hash,
        "data_dvc_hash": submission.data_dvc_hash,
        "git_commit": card.git_commit or lineage.get("git_commit"),
        "dvc_exp_name": lineage.get("dvc_exp_name"),
        "params_fingerprint": card.params_fingerprint,
        "origin": origin(card),
        "imported": json.dumps(card.imported, sort_keys=True) if card.imported else None,
        "parent": json.dumps(card.parent, sort_keys=True) if card.parent else None,
        PROTOCOL_TAG: json.dumps(metrics["protocol"], sort_keys=True),
    }
    for name, value in metrics["model"].items():
        if isinstance(value, int | float):
            tags[METRIC_PREFIX + name] = repr(float(value))
    tags.update({f"gain.{name}": repr(float(value)) for name, value in metrics.get("gain", {}).items()})
    return {key: str(value) for key, value in tags.items() if value is not None}


def origin(card: ModelCard) -> str:
    """imported (a published generator, no training lineage), fine-tuned (trained from a parent) or trained."""
    return "imported" if card.imported else "fine-tuned" if card.parent else "trained"


def describe(submission: Submission) -> str:
    card, model = submission.card, submission.metrics["model"]
    shown = ", ".join(f"{m.label} {m.show(model[m.name])}{m.unit}" for m in present(model))
    if card.imported:
        i = card.imported
        return (
            f"{card.task} x{card.scale} {card.arch}, imported (no training lineage): {shown}. From {i['file']} "
            f"(sha256 {i['sha256'][:12]}), license {i['license']}."
        )
    parent = f" Fine-tuned from {card.parent['source']} (sha256 {card.parent['sha256'][:12]})." if card.parent else ""
    return (
        f"{card.task} x{card.scale} {card.arch}, {card.steps} steps: {shown}. Trained at commit "
        f"{card.git_commit or 'unknown'}, data {submission.data_dvc_hash or card.data_hash}, run {card.mlflow_run_id}."
        + parent
    )


def _same_model(client: MlflowClient, name: str, key: str) -> list[ModelVersion]:
    found = client.search_model_versions(f"name = '{name}' AND tags.{KEY_TAG} = '{key}'")
    return sorted(found, key=lambda v: int(v.version))


def _run_home(client: MlflowClient, params: Params, training_run_id: str | None) -> tuple[str, str | None]:
    """(experiment id, parent run id): the training run's experiment when that run is in this store."""
    if training_run_id:
        try:
            run = client.get_run(training_run_id)
            return run.info.experiment_id, run.info.run_id
        except MlflowException:
            pass  # trained against another store: register in the task's experiment, unparented
    try:
        return ensure_experiment(client, experiment_name(params.tracking, params.task.name)), None
    except ExperimentError as exc:
        raise RegistryError(str(exc)) from exc


def _stage_files(submission: Submission, params: Params, base: Path, folder: Path) -> dict[str, Path]:
    """Copy the generator, the lineage files and the package's code into `folder`, laid out for the version."""
    generator = folder / pyfunc_model.GENERATOR_ARTIFACT
    generator.mkdir()
    for name in (WEIGHTS_FILE, CARD_FILE):
        shutil.copy2(submission.model_dir / name, generator / name)
    lineage = folder / pyfunc_model.LINEAGE_ARTIFACT
    lineage.mkdir()
    shutil.copy2(submission.metrics_file, lineage / METRICS_FILE)
    shutil.copy2(submission.metrics_file.parent / EVIDENCE_FILE, lineage / EVIDENCE_FILE)
    (lineage / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    if (base / DVC_LOCK).is_file():
        shutil.copy2(base / DVC_LOCK, lineage / DVC_LOCK.name)
    code = folder / "code" / "gan_enhance"
    shutil.copytree(Path(gan_enhance.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return {"generator": generator, "lineage": lineage, "code": code}


def _log_model(client: MlflowClient, submission: Submission, params: Params, base: Path) -> ModelInfo:
    experiment_id, parent = _run_home(client, params, submission.card.mlflow_run_id)
    tags = {**lineage_tags(base), "stage": "register", "training_run_id": submission.card.mlflow_run_id or ""}
    if parent:
        tags[MLFLOW_PARENT_RUN_ID] = parent
    mlflow.set_tracking_uri(client.tracking_uri)
    with (
        tempfile.TemporaryDirectory(prefix="gan-enhance-register-") as tmp,
        mlflow.start_run(experiment_id=experiment_id, run_name="register", tags=tags),
    ):
        staged = _stage_files(submission, params, base, Path(tmp))
        mlflow.log_params(flatten(params.model_dump(mode="json")))
        model_metrics = submission.metrics["model"].items()
        mlflow.log_metrics({k: float(v) for k, v in model_metrics if isinstance(v, int | float)})
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={
                pyfunc_model.GENERATOR_ARTIFACT: str(staged["generator"]),
                pyfunc_model.LINEAGE_ARTIFACT: str(staged["lineage"]),
            },
            code_paths=[str(staged["code"])],
            signature=pyfunc_model.signature(submission.card.inputs),
            input_example=pyfunc_model.input_example(submission.card.inputs),
            model_config={
                **pyfunc_model.DEFAULT_CONFIG,
                "tile": params.evaluate.tile,
                "tile_pad": params.evaluate.tile_overlap,
            },
            pip_requirements=_requirements(),
        )


def _requirements() -> list[str]:
    """The inference path's packages, pinned without local labels (torch 2.13.0+cpu -> torch==2.13.0)."""
    return [f"{name}=={package_version(name).split('+')[0]}" for name in RUNTIME_PACKAGES]


def _create_version(
    client: MlflowClient, name: str, info: ModelInfo, submission: Submission, base: Path
) -> ModelVersion:
    try:
        client.create_registered_model(
            name, description=f"gan-enhance generators; consumers load models:/{name}@{CHAMPION}"
        )
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return client.create_model_version(
        name,
        source=info.model_uri,
        run_id=info.run_id,
        tags=version_tags(submission, base),
        description=describe(submission),
        model_id=info.model_id,
    )


def _make_challenger(client: MlflowClient, name: str, version: ModelVersion) -> None:
    """Point challenger at `version` once its artifacts load; a broken version leaves the alias where it was."""
    try:
        check_artifacts(client, name, version.version)
    except RegistryError as exc:
        client.set_model_version_tag(name, version.version, "artifact_check", "failed")
        raise RegistryError(f"{exc}; the alias '{CHALLENGER}' stays where it was") from exc
    for attempt in range(ALIAS_ATTEMPTS):
        try:
            client.set_registered_model_alias(name, CHALLENGER, version.version)
            return
        except MlflowException:
            # two registrations setting the alias at once: the registry's insert of one of them hits the other's
            # row (a unique-constraint error); the next attempt updates that row instead
            if attempt == ALIAS_ATTEMPTS - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Replace the registration record atomically (concurrent writers leave one whole file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as tmp:
        tmp.write(json.dumps(record, indent=2, sort_keys=True) + "\n")
    Path(tmp.name).replace(path)


def _register_version(
    client: MlflowClient, name: str, submission: Submission, params: Params, base: Path
) -> tuple[ModelVersion, Literal["registered", "unchanged"]]:
    """The version holding this model (logged and created unless its key is registered already), challenger unless
    it is champion. Idempotent: run again after a failure, it finds what the failed attempt made."""
    status: Literal["registered", "unchanged"] = "unchanged"
    existing = _same_model(client, name, submission.key)
    if existing:
        version = client.get_model_version(name, existing[0].version)
    else:
        info = _log_model(client, submission, params, base)
        version = _create_version(client, name, info, submission, base)
        status = "registered"
        first = _same_model(client, name, submission.key)[0]
        if str(first.version) != str(version.version):  # a concurrent registration of the same model got there first
            client.delete_model_version(name, version.version)
            version, status = client.get_model_version(name, first.version), "unchanged"
    if CHAMPION not in version.aliases:
        _make_challenger(client, name, version)
    return version, status


def register(params: Params, base: Path = Path(".")) -> Registration:
    """The register stage; writes params.registry.record and returns what it did."""
    name = registered_model_name(params)
    record_path = base / params.registry.record
    if not params.tracking.enabled:
        reason = "tracking.enabled is false, so there is no MLflow registry to register in"
        write_record(record_path, {"model_name": name, "version": None, "reason": reason})
        return Registration("skipped", name, reason=reason)
    submission = gather_submission(params, base)
    client = client_for(params.tracking.uri, base)
    for attempt in range(1, REGISTER_ATTEMPTS + 1):
        try:
            version, status = _register_version(client, name, submission, params, base)
            break
        except MlflowException as exc:
            if exc.error_code not in TRANSIENT_ERRORS:
                raise
            if attempt == REGISTER_ATTEMPTS:
                raise RegistryError(
                    f"registering '{name}' at {client.tracking_uri} failed {attempt} times, last: {str(exc)[:500]}; "
                    "nothing was promoted and the champion is unchanged; run the registration again once the server "
                    "and its database answer (a version already made for this model is reused, not duplicated)"
                ) from exc
            time.sleep(RETRY_DELAY_S * 2 ** (attempt - 1))
    write_record(
        record_path,
        {
            "model_name": name,
            "version": str(version.version),
            "model_uri": f"models:/{name}/{version.version}",
            "run_id": version.run_id,
            KEY_TAG: submission.key,
            "tracking_uri": client.tracking_uri,
        },
    )
    return Registration(status, name, str(version.version))
