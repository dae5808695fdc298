"""Registry access shared by registration, promotion and loading: names, aliases, version evidence, artifacts."""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from gan_enhance.config import Params, TrackingParams
from gan_enhance.lifecycle.errors import RegistryError
from gan_enhance.lifecycle.pyfunc_model import GENERATOR_ARTIFACT, LINEAGE_ARTIFACT
from gan_enhance.models.artifact import ArtifactError, load_generator
from gan_enhance.tasks import build_task
from gan_enhance.tracking import tracking_uri

if TYPE_CHECKING:
    from gan_enhance.evaluation.evidence import Evidence
    from gan_enhance.inference import Enhancer

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"  # on the registered model: JSON list of versions that held champion, oldest first
METRIC_PREFIX = "metric."
PROTOCOL_TAG = "protocol"
DECISION_TAG = "promotion.decision"
REASON_TAG = "promotion.reason"
DESCRIPTION_LIMIT = 5000  # the registry's column size for a version's description
ROLLED_BACK = "rolled_back"
ROLLED_BACK_TAG = "promotion.rolled_back"  # stays on a version rolled back from champion until a forced promotion

_HINTS = {
    CHAMPION: "promote one with `gan-enhance promote`, or set the alias 'champion' on a version in the MLflow UI",
    CHALLENGER: "register one with `gan-enhance register` (or `dvc repro`)",
}


def registered_model_name(params: Params) -> str:
    """params.registry.model_name, else one name per task variant: gan-enhance-sr-x4, gan-enhance-denoise,
    gan-enhance-inpaint, gan-enhance-translate-a2b (or -b2a), gan-enhance-generate."""
    if params.registry.model_name:
        return params.registry.model_name
    return f"gan-enhance-{build_task(params.task).variant}"


def client_for(uri: str | None, base: Path = Path(".")) -> MlflowClient:
    """A client for tracking and registry at `uri` (None: $MLFLOW_TRACKING_URI, else <base>/mlflow.db), absolute."""
    resolved = tracking_uri(TrackingParams(uri=uri), base)
    return MlflowClient(tracking_uri=resolved, registry_uri=resolved)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version holding `alias`, None when no version holds it; RegistryError when the model is unknown."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(
                f"no registered model '{name}' at {client.tracking_uri}; {_HINTS[CHALLENGER]}"
            ) from None
        if exc.error_code == "INVALID_PARAMETER_VALUE" and "alias" in exc.message:
            return None
        raise


def require_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion:
    version = version_by_alias(client, name, alias)
    if version is None:
        hint = _HINTS.get(alias, f"set the alias '{alias}' on a version")
        raise RegistryError(f"registered model '{name}' has no version with alias '{alias}'; {hint}")
    return version


def get_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(
                f"registered model '{name}' has no version {version} at {client.tracking_uri}"
            ) from None
        raise


def version_metrics(version: ModelVersion) -> dict[str, float]:
    """The evaluation metrics a version carries (tags metric.<name>)."""
    return {k.removeprefix(METRIC_PREFIX): float(v) for k, v in version.tags.items() if k.startswith(METRIC_PREFIX)}


def version_protocol(version: ModelVersion) -> dict[str, Any] | None:
    raw = version.tags.get(PROTOCOL_TAG)
    return json.loads(raw) if raw else None


def champion_history(client: MlflowClient, name: str) -> list[str]:
    return json.loads(client.get_registered_model(name).tags.get(HISTORY_TAG, "[]"))


def record_decision(client: MlflowClient, version: ModelVersion, decision: str, reason: str) -> None:
    """Tag the version with the decision and add it, dated, to its description. The same decision for the same
    reason is recorded once (a scheduled `promote` refusing daily adds nothing); the oldest decision lines give
    way when the description would outgrow the registry's column."""
    current = client.get_model_version(version.name, version.version)
    if (current.tags.get(DECISION_TAG), current.tags.get(REASON_TAG)) == (decision, reason):
        return
    stamp = now()
    for key, value in ((DECISION_TAG, decision), (REASON_TAG, reason), ("promotion.at", stamp)):
        client.set_model_version_tag(version.name, version.version, key, value)
    parts = [p for p in (current.description or "").split("\n\n") if p] + [f"{stamp} {decision}: {reason}"]
    while len("\n\n".join(parts)) > DESCRIPTION_LIMIT and len(parts) > 2:
        parts.pop(1)  # parts[0] is the registration summary
    description = "\n\n".join(parts)[-DESCRIPTION_LIMIT:]
    client.update_model_version(version.name, version.version, description=description)


@contextmanager
def fetch_generator(client: MlflowClient, name: str, version: str) -> Iterator[Path]:
    """Download a version's generator artifact into a temporary folder (removed afterwards). An ArtifactError
    raised while the folder is in use (loading it) comes out as a RegistryError that names the version."""
    with tempfile.TemporaryDirectory(prefix="gan-enhance-") as tmp:
        try:
            # the version's own storage URI: a `models:/` URI would be resolved against the process-wide registry
            location = client.get_model_version_download_uri(name, version).rstrip("/")
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{location}/artifacts/{GENERATOR_ARTIFACT}",
                dst_path=tmp,
                tracking_uri=client.tracking_uri,
            )
        except Exception as exc:
            raise RegistryError(
                f"version {version} of '{name}': its generator artifact cannot be downloaded ({exc})"
            ) from exc
        try:
            yield Path(path)
        except ArtifactError as exc:
            raise RegistryError(f"version {version} of '{name}' has broken or missing artifacts: {exc}") from exc


def fetch_evidence(client: MlflowClient, name: str, version: str) -> Evidence | None:
    """A version's evaluation evidence (lineage/evidence.npz: per-image values and crop features), None when the
    version carries none (registered before evaluations wrote it)."""
    from gan_enhance.evaluation.evidence import EVIDENCE_FILE, Evidence

    location = client.get_model_version_download_uri(name, version).rstrip("/")
    with tempfile.TemporaryDirectory(prefix="gan-enhance-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{location}/artifacts/{LINEAGE_ARTIFACT}/{EVIDENCE_FILE}",
                dst_path=tmp,
                tracking_uri=client.tracking_uri,
            )
        except Exception:
            return None  # no such artifact: an older version
        return Evidence.load(Path(path))


def check_artifacts(client: MlflowClient, name: str, version: str) -> None:
    """Download a version's generator and rebuild it; RegistryError names the version when that fails."""
    with fetch_generator(client, name, version) as folder:
        load_generator(folder)


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION` -> (name, alias, version); ValueError naming the forms."""
    match = re.fullmatch(r"models:/([A-Za-z0-9][A-Za-z0-9._-]*)(?:@([A-Za-z0-9_-]+)|/(\d+))", uri)
    if not match:
        raise ValueError(
            f"'{uri}' is not a registry URI; use models:/NAME@champion, models:/NAME@challenger or models:/NAME/VERSION"
        )
    return match.group(1), match.group(2), match.group(3)


def load_enhancer(
    name: str,
    alias: str = CHAMPION,
    tracking_uri: str | None = None,
    device: str = "auto",
    version: str | None = None,
    **options: Any,
) -> Enhancer:
    """The Enhancer for the version of registered model `name` that holds `alias` (or number `version`), from an
    MLflow server or SQLite store (tracking_uri None: $MLFLOW_TRACKING_URI, else ./mlflow.db). Fails naming the
    model when no version holds the alias, and naming the version when its artifacts are broken. `options` are
    Enhancer.from_dir's (tile, tile_pad, precision, compile_net)."""
    from gan_enhance.inference import Enhancer

    client = client_for(tracking_uri)
    found = get_version(client, name, version) if version else require_alias(client, name, alias)
    with fetch_generator(client, name, str(found.version)) as folder:
        return Enhancer.from_dir(folder, device=device, **options)


@dataclass(frozen=True)
class VersionRow:
    """One registered version as `gan-enhance models` lists it."""

    model: str
    version: str
    aliases: tuple[str, ...]
    metrics: dict[str, float]
    created: str
    decision: str


def list_versions(client: MlflowClient, name: str | None = None, last: int = 5) -> list[VersionRow]:
    """The newest `last` versions of each registered model (or of `name`), plus every version holding an alias,
    newest first within each model."""
    try:
        models = [client.get_registered_model(name)] if name else client.search_registered_models()
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(
                f"no registered model '{name}' at {client.tracking_uri}; {_HINTS[CHALLENGER]}"
            ) from None
        raise
    rows = []
    for model in sorted(models, key=lambda m: m.name):
        # the registered model knows its aliases; versions from a search do not carry them
        aliases: dict[str, list[str]] = {}
        for alias, number in (model.aliases or {}).items():
            aliases.setdefault(str(number), []).append(alias)
        versions = sorted(
            client.search_model_versions(f"name = '{model.name}'"), key=lambda v: int(v.version), reverse=True
        )
        for i, version in enumerate(versions):
            held = tuple(sorted(aliases.get(str(version.version), [])))
            if i < last or held:
                created = datetime.fromtimestamp(version.creation_timestamp / 1000, UTC)
                rows.append(
                    VersionRow(
                        model.name,
                        str(version.version),
                        held,
                        version_metrics(version),
                        created.strftime("%Y-%m-%d %H:%M"),
                        version.tags.get(DECISION_TAG, ""),
                    )
                )
    return rows
