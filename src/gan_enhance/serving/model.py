"""The served model: its BentoML store name, its files inside an imported model, the body of GET /model, which
APIs fit it (as its inference class declares), and the OpenAPI document that shows it."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from gan_enhance.inference import Enhancer
from gan_enhance.models.artifact import ModelCard
from gan_enhance.serving.errors import CURL_HINT, GENERATE_HINT, MASK_HINT, RequestError

BENTO_MODEL = "gan-enhance-champion"  # the BentoML model store name the service loads (label: which registry version)


def generator_dir(model_path: Path) -> Path:
    """The generator folder (generator.safetensors + card.json) inside an imported BentoML mlflow model."""
    folder = Path(model_path) / "mlflow_model" / "artifacts" / "generator"
    if not (folder / "card.json").is_file():
        raise FileNotFoundError(
            f"no generator/card.json in the BentoML model at {model_path}; re-import the champion (`make bento`)"
        )
    return folder


def model_config(model_path: Path) -> dict[str, Any]:
    """The pyfunc model config (device, tile, tile_pad) the version was registered with; {} when absent."""
    import yaml

    mlmodel = Path(model_path) / "mlflow_model" / "MLmodel"
    if not mlmodel.is_file():
        return {}
    flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {})
    return dict(flavors.get("python_function", {}).get("config") or {})


def check_request_kind(card: ModelCard, api: str, mask_sent: bool = False) -> None:
    """RequestError (400) when `api` does not fit the served model, whose inference class declares the APIs it
    offers (`apis`) and whether it needs a mask: /enhance and /enhance_batch take images (inpainting models:
    /enhance with a mask), /generate is for models that make images from noise."""
    model = Enhancer.class_for(card)
    if api not in model.apis:
        if not model.takes_images:
            raise RequestError(
                400, f"the served '{card.task}' model makes images from noise; it enhances no uploads", GENERATE_HINT
            )
        if api == "/generate":
            raise RequestError(
                400,
                f"the served '{card.task}' model enhances images; it does not sample",
                f"POST /enhance; {CURL_HINT}",
            )
        raise RequestError(400, "the served inpainting model needs a mask per image", f"POST /enhance; {MASK_HINT}")
    if model.takes_mask and not mask_sent:
        raise RequestError(400, "field 'mask' is missing: the served inpainting model fills in a mask", MASK_HINT)
    if not model.takes_mask and mask_sent:
        raise RequestError(400, f"the served '{card.task}' model takes no mask", f"leave out field 'mask'; {CURL_HINT}")


def describe_model(
    labels: Mapping[str, str], metadata: Mapping[str, Any], card: ModelCard, bento_tag: str, serving: Mapping[str, Any]
) -> dict[str, Any]:
    """The body of GET /model: which registry version this is, what it does, how well, and how it is served. Not
    the tracking URI the model was imported from: a path on the build machine, of no use to a caller."""
    return {
        "registered_model": labels.get("registered_model"),
        "version": labels.get("registered_version"),
        "alias": labels.get("alias"),
        "task": card.task,
        "scale": card.scale,
        "arch": card.arch,
        "metrics": dict(metadata.get("metrics") or {}),
        "run_id": metadata.get("run_id"),
        "imported_at": metadata.get("imported_at"),
        "bento_model": bento_tag,
        "serving": dict(serving),
    }


def openapi_description(model: Mapping[str, Any], apis: Collection[str]) -> str:
    """The OpenAPI document's description (the top of the Swagger page): what the service does, the served model
    (a GET /model body) and the APIs it offers, and where to read more, in a few lines."""
    return (
        f"GAN image enhancement with the MLflow registry's **{model.get('registered_model')}** version "
        f"{model.get('version')} (alias `{model.get('alias')}`): a `{model.get('task')}` model, "
        f"served at {', '.join(f'`POST {api}`' for api in apis)}.\n\n"
        "`GET /model` gives its metrics and serving settings. A refused request gets a 4xx JSON body "
        '`{"error": ..., "fix": ...}`. More in the project\'s serving/README.md.'
    )


def served_openapi(
    spec: Mapping[str, Any], model: Mapping[str, Any], apis: Collection[str], api_routes: Collection[str]
) -> dict[str, Any]:
    """The service's OpenAPI document (`spec`, as BentoML builds it: its description is the bento's README, or
    BentoML's own when served from the source tree) for the served model: a short description naming the model
    (`model`, a GET /model body), and of the service's `api_routes` only those the model offers (`apis`)."""
    hidden = set(api_routes) - set(apis)
    paths = {path: item for path, item in (spec.get("paths") or {}).items() if path not in hidden}
    info = {
        **(spec.get("info") or {}),
        "title": f"gan-enhance: {model.get('registered_model')}",
        "version": f"model version {model.get('version')}",  # BentoML leaves None outside a built bento
        "description": openapi_description(model, apis),
    }
    return {**spec, "info": info, "paths": paths}
