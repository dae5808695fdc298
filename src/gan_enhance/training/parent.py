"""Fine-tuning: the generator (and optionally the discriminator) a run starts from (`train.init_from`).

The parent is a model folder (trained or imported) or a registered version (`models:/NAME@ALIAS`,
`models:/NAME/VERSION`). Its card must describe the network params.model.generator builds (same architecture and
options) for the same task and scale; its weights and their hash become the run's lineage (the card's `parent`,
the registered version's tags) and part of the checkpoint fingerprint, so a checkpoint never resumes onto another
parent.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from gan_enhance.config import Params
from gan_enhance.errors import GanEnhanceError
from gan_enhance.models.artifact import WEIGHTS_FILE, ModelCard, load_card
from gan_enhance.tasks import build_task


class ParentError(GanEnhanceError, ValueError):
    """train.init_from / train.init_discriminator name weights that cannot start this run; the message says why."""


@dataclass(frozen=True)
class Parent:
    """The weights a run starts from, and what identifies them."""

    state: dict[str, torch.Tensor]
    card: ModelCard
    lineage: dict[str, Any]


def _read_folder(folder: Path, source: str, registered: dict[str, str] | None) -> Parent:
    card = load_card(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ParentError(f"train.init_from={source}: no {WEIGHTS_FILE} in {folder}")
    lineage = {
        "source": source,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "arch": card.arch,
        "kind": "imported" if card.imported else "trained",
        **({"imported": card.imported.get("name"), "license": card.imported.get("license")} if card.imported else {}),
        **({"training_run_id": card.mlflow_run_id} if card.mlflow_run_id else {}),
        **({"registered_model": registered["name"], "version": registered["version"]} if registered else {}),
    }
    return Parent(load_file(str(weights)), card, lineage)


def load_parent(source: str, params: Params, base: Path = Path(".")) -> Parent:
    """The parent `source` names, checked against the network and task the params build."""
    if source.startswith("models:/"):
        from gan_enhance.lifecycle.registry import (
            client_for,
            fetch_generator,
            get_version,
            parse_model_uri,
            require_alias,
        )

        try:
            name, alias, version = parse_model_uri(source)
        except ValueError as exc:
            raise ParentError(f"train.init_from: {exc}") from None
        client = client_for(params.tracking.uri, base)
        found = get_version(client, name, version) if version else require_alias(client, name, alias or "")
        with fetch_generator(client, name, str(found.version)) as folder:
            parent = _read_folder(folder, source, {"name": name, "version": str(found.version)})
    else:
        folder = base / source
        if not folder.is_dir():
            raise ParentError(
                f"train.init_from={source}: no model folder there; give a folder with card.json and "
                f"{WEIGHTS_FILE} (a trained model, or one made by `gan-enhance import`) or models:/NAME@ALIAS"
            )
        parent = _read_folder(folder, source, None)
    _check_fits(parent.card, params, source)
    return parent


def _check_fits(card: ModelCard, params: Params, source: str) -> None:
    wanted = params.model.generator
    differences = []
    if card.arch != wanted.name or card.arch_kwargs != wanted.kwargs:
        differences.append(
            f"it is {card.arch} {json.dumps(card.arch_kwargs)}, model.generator is {wanted.name} "
            f"{json.dumps(wanted.kwargs)}; set model.generator to the parent's (e.g. "
            f"-S 'model.generator={json.dumps({'name': card.arch, **card.arch_kwargs})}')"
        )
    task = build_task(params.task)
    if (card.task, card.scale) != (task.name, task.scale):
        differences.append(f"it is for {card.task} x{card.scale}, params ask for {task.name} x{task.scale}")
    if differences:
        raise ParentError(f"train.init_from={source} does not fit this run: " + "; ".join(differences))


def load_discriminator_state(path: Path, net: torch.nn.Module) -> str:
    """Load a discriminator state dict (safetensors, or a .pth read as `gan-enhance import` reads one) into `net`,
    every tensor checked; returns the file's sha256."""
    from gan_enhance.models.importer import ImportWeightsError, read_state_dict

    if not path.is_file():
        raise ParentError(f"train.init_discriminator={path} does not exist")
    try:
        state = load_file(str(path)) if path.suffix == ".safetensors" else read_state_dict(path)[0]
    except ImportWeightsError as exc:
        raise ParentError(f"train.init_discriminator: {exc}") from None
    own = net.state_dict()
    if set(state) != set(own) or any(state[k].shape != v.shape for k, v in own.items()):
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise ParentError(
            f"train.init_discriminator={path} does not fit model.discriminator: missing {missing[:3]}, "
            f"unknown {extra[:3]}; shapes must match too"
        )
    net.load_state_dict(state)
    return hashlib.sha256(path.read_bytes()).hexdigest()
