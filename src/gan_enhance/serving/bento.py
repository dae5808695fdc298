"""The deployable bento, built from the MLflow champion (what `make bento` runs).

1. import: the version of the task's registered model that holds `champion` goes from the MLflow registry into
   the BentoML model store as `gan-enhance-champion:<registered name>-v<version>`, labelled with the registered
   name, version and alias, with its metrics as metadata; the generator is loaded once to prove it works.
2. build: `bentoml build` with serving/bentofile.yaml (the service resolves `gan-enhance-champion:latest`, the
   import just made).
3. export: `bentoml export` to <out>/<bento name>-<bento version>.bento.
4. check: the Containerfile `bentoml containerize` would use (written to <out>/Containerfile) and the bento's
   Python requirements are checked. `make container` (gan_enhance.serving.container) builds and runs the image.

    .venv/bin/python -m gan_enhance.serving.bento [--params params.yaml] [--out dist]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gan_enhance.device import disable_telemetry
from gan_enhance.serving.model import BENTO_MODEL, generator_dir

BENTOFILE = Path("serving/bentofile.yaml")
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"  # serving/bentofile.yaml's UV_EXTRA_INDEX_URL


CONTAINERFILE_PROBLEMS = 3  # built and exported, but the Containerfile check found problems (1 is a crash)


def bento_model_tag(registered_model: str, version: str) -> str:
    """The BentoML model tag a registered version is imported as."""
    return f"{BENTO_MODEL}:{registered_model.lower()}-v{version}"


def import_champion(registered_model: str, tracking_uri: str | None = None, alias: str = "champion") -> Any:
    """Import the version holding `alias` into the BentoML model store (re-imported when already there, so that
    it is `latest`); returns the bentoml.Model. RegistryError when no version holds the alias."""
    import bentoml
    import mlflow

    from gan_enhance.lifecycle.registry import client_for, require_alias, version_metrics
    from gan_enhance.models.artifact import load_generator

    client = client_for(tracking_uri)
    version = require_alias(client, registered_model, alias)
    tag = bento_model_tag(registered_model, version.version)
    with contextlib.suppress(bentoml.exceptions.NotFound):
        bentoml.models.delete(tag)  # a rollback may bring back a version imported before: make it latest again
    mlflow.set_tracking_uri(client.tracking_uri)
    mlflow.set_registry_uri(client.tracking_uri)
    labels = {
        "registered_model": registered_model,
        "registered_version": str(version.version),
        "alias": alias,
        "task": version.tags.get("task", ""),
        "scale": version.tags.get("scale", ""),
    }
    metadata = {
        "metrics": version_metrics(version),
        "run_id": version.run_id,
        "tracking_uri": client.tracking_uri,
        "source": f"models:/{registered_model}/{version.version}",
        "imported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    model = bentoml.mlflow.import_model(
        tag, f"models:/{registered_model}/{version.version}", labels=labels, metadata=metadata
    )
    try:
        load_generator(generator_dir(Path(bentoml.models.get(tag).path)))
    except Exception:
        bentoml.models.delete(tag)
        raise
    return model


def build(bentofile: Path = BENTOFILE, context: Path = Path(".")) -> Any:
    """`bentoml build -f bentofile context`, run inside `context`; returns the Bento."""
    import bentoml

    bentofile, context = bentofile.absolute(), context.absolute()
    # BentoML reads the bentofile's `description: file:...` only from inside the current directory
    with contextlib.chdir(context):
        return bentoml.bentos.build_bentofile(str(bentofile), build_ctx=str(context))


def export(bento: Any, out_dir: Path) -> Path:
    """`bentoml export` to <out_dir>/<name>-<version>.bento."""
    import bentoml

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{bento.tag.name}-{bento.tag.version}.bento"
    return Path(bentoml.export_bento(bento.tag, str(target)))


@dataclass(frozen=True)
class ContainerCheck:
    """The Containerfile written, the expectations it missed and those it met."""

    containerfile: Path
    problems: list[str]
    facts: list[str]


def archive_members(archive: Path) -> list[str]:
    """File names inside an exported .bento (a tar archive, xz-compressed by default)."""
    import tarfile

    with tarfile.open(archive) as tar:
        return tar.getnames()


def check_container(bento: Any, out_dir: Path, archive: Path | None = None) -> ContainerCheck:
    """Write the Containerfile `bentoml containerize` would build from and check it and the bento's environment:
    a Python 3.11 base, the bento's requirements installed, no lock file (it would pin CUDA torch), CPU torch,
    port 3000 exposed, the bento's entry point, the service and package sources inside, and (given the exported
    archive) the model weights inside the archive."""
    import bentoml

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "Containerfile"
    bentoml.container.get_containerfile(bento.tag, output_path=str(path))
    text = path.read_text()
    root = Path(bento.path)
    requirements = (root / "env/python/requirements.txt").read_text().splitlines()
    models = [m["tag"] for s in bento.info.to_dict().get("services", []) for m in s.get("models", [])]
    expectations = {
        "a Python 3.11 base image": "FROM python:3.11" in text,
        "the requirements installed with uv": "pip install -r $BENTO_PATH/env/python/requirements.txt" in text,
        "uv picks the best match across indexes (ENV UV_INDEX_STRATEGY)": "UV_INDEX_STRATEGY" in text,
        "telemetry off in the image (ENV DO_NOT_TRACK)": "DO_NOT_TRACK" in text,
        "port 3000 exposed": "EXPOSE 3000" in text,
        "the entry point starts the bento": "ENTRYPOINT" in text and "entrypoint.sh" in text,
        "torch pinned": any(line.startswith("torch==") for line in requirements),
        # a build argument rather than a requirements.txt line, so that a build can swap in a local wheel folder
        "the CPU torch index (ARG UV_EXTRA_INDEX_URL)": f"ARG UV_EXTRA_INDEX_URL={CPU_TORCH_INDEX}" in text,
        "a wheel folder can stand in for it (ARG UV_FIND_LINKS)": "ARG UV_FIND_LINKS" in text,
        "no mlflow, dvc or prefect in the image": not any(
            line.startswith(("mlflow", "dvc", "prefect")) for line in requirements
        ),
        "no requirements.lock.txt (locking would pick CUDA torch)": not (
            root / "env/python/requirements.lock.txt"
        ).exists(),
        "serving/service.py inside the bento": (root / "src/serving/service.py").is_file(),
        "gan_enhance inside the bento": (root / "src/gan_enhance/__init__.py").is_file(),
        f"the champion model referenced ({', '.join(models) or 'none'})": any(
            tag.startswith(f"{BENTO_MODEL}:") for tag in models
        ),
    }
    if archive is not None:
        names = archive_members(archive)
        expectations["the exported archive holds the generator weights"] = any(
            name.startswith(f"./models/{BENTO_MODEL}/") and name.endswith("generator.safetensors") for name in names
        )
    problems = [name for name, ok in expectations.items() if not ok]
    facts = [name for name, ok in expectations.items() if ok]
    return ContainerCheck(path, problems, facts)


def export_and_check(bento: Any, out_dir: Path) -> ContainerCheck:
    """Export the bento to out_dir and check its Containerfile; a failure (an exception, not problems found)
    deletes the bento from the store, so that no bento without its archive stays behind."""
    import bentoml

    try:
        archive = export(bento, out_dir)
        print(f"exported {archive} ({archive.stat().st_size / 2**20:.1f} MiB)")
        return check_container(bento, out_dir, archive)
    except BaseException:
        bentoml.bentos.delete(bento.tag)
        raise


def main(argv: list[str] | None = None) -> int:
    """Import, build, export and check; 0, 2 (bad params or no champion) or CONTAINERFILE_PROBLEMS."""
    disable_telemetry()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="names the registered model")
    parser.add_argument("--model-name", help="registered model name (default: from params, e.g. gan-enhance-sr-x4)")
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--bentofile", type=Path, default=BENTOFILE)
    parser.add_argument("--context", type=Path, default=Path("."), help="build context (the repository root)")
    parser.add_argument("--out", type=Path, default=Path("dist"), help="where the .bento and Containerfile go")
    args = parser.parse_args(argv)
    # relative to the current directory, whatever BentoML would take them relative to (it exports a relative
    # path under /, and the build runs inside the context)
    args.out, args.context, args.bentofile = (path.absolute() for path in (args.out, args.context, args.bentofile))

    from gan_enhance.config import ParamsError, load_params
    from gan_enhance.lifecycle.errors import RegistryError
    from gan_enhance.lifecycle.registry import registered_model_name

    try:
        params = load_params(args.params)
        name = args.model_name or registered_model_name(params)
        model = import_champion(name, params.tracking.uri, args.alias)
        print(
            f"imported {model.info.labels['registered_model']} version {model.info.labels['registered_version']} "
            f"(alias {args.alias}) as {model.tag}"
        )
        bento = build(args.bentofile, args.context)
        print(f"built bento {bento.tag} at {bento.path}")
        check = export_and_check(bento, args.out)
    except (ParamsError, RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for fact in check.facts:
        print(f"  ok: {fact}")
    for problem in check.problems:
        print(f"  MISSING: {problem}", file=sys.stderr)
    print(f"Containerfile: {check.containerfile} (`make container` builds, runs and checks the image)")
    return CONTAINERFILE_PROBLEMS if check.problems else 0


if __name__ == "__main__":
    sys.exit(main())
