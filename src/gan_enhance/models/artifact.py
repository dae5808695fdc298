"""A model is weights + a card: safetensors for the tensors, JSON for everything needed to rebuild it.

Loading builds the architecture named in the card and fills it with the weights; no code is unpickled.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from gan_enhance.errors import GanEnhanceError
from gan_enhance.models.registry import build

WEIGHTS_FILE = "generator.safetensors"
CARD_FILE = "card.json"
CARD_VERSION = 1
PIXEL_TWIN = "pixel_only"  # subfolder of a GAN model: its generator when the pixel-loss phase ended (a baseline)
PARENT_TWIN = "parent"  # a fine-tuned model's starting weights (train.init_from), scored as a baseline


class ArtifactError(GanEnhanceError, RuntimeError):
    """A model folder that cannot be loaded; the message says which file and what to do."""


@dataclass
class ModelCard:
    arch: str
    arch_kwargs: dict[str, Any]
    task: str
    scale: int = 1
    in_channels: int = 3
    inputs: str = "image"  # image | image+mask (channel 4 = hole mask) | latent (noise in, see latent_dim)
    latent_dim: int | None = None  # unconditional generators: length of the N(0, 1) latent vector
    image_size: int | None = None  # unconditional generators: side of the images they make
    direction: str | None = None  # unpaired translation: a2b or b2a
    value_range: tuple[float, float] = (0.0, 1.0)
    task_params: dict[str, Any] = field(default_factory=dict)
    data_hash: str | None = None
    git_commit: str | None = None
    mlflow_run_id: str | None = None
    params_fingerprint: str | None = None
    steps: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    losses: dict[str, Any] = field(default_factory=dict)  # the generator's loss terms and their settings
    imported: dict[str, Any] | None = None  # a published generator (gan-enhance import): file, sha256, license
    parent: dict[str, Any] | None = None  # the model a run fine-tuned (train.init_from): where, and its identity
    created: str | None = None
    gan_enhance_version: str | None = None
    card_version: int = CARD_VERSION

    def build_network(self) -> nn.Module:
        context = {"image_size": self.image_size} if self.image_size else {}
        return build(
            "generator", self.arch, scale=self.scale, in_channels=self.in_channels, **context, **self.arch_kwargs
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "value_range" in known:
            known["value_range"] = tuple(known["value_range"])
        return cls(**known)


def save_generator(net: nn.Module, card: ModelCard, folder: Path) -> Path:
    """Write weights and card into `folder` (created); both files are replaced atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    tmp_weights, tmp_card = folder / (WEIGHTS_FILE + ".tmp"), folder / (CARD_FILE + ".tmp")
    save_file(state, str(tmp_weights), metadata={"arch": card.arch, "task": card.task})
    tmp_card.write_text(card.to_json() + "\n")
    tmp_weights.replace(folder / WEIGHTS_FILE)
    tmp_card.replace(folder / CARD_FILE)
    return folder


def load_card(folder: Path) -> ModelCard:
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        raise ArtifactError(f"no model card at '{path}'; train a model first (`gan-enhance train` or `dvc repro`)")
    try:
        return ModelCard.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ArtifactError(f"model card '{path}' is damaged ({exc}); re-run training to rewrite it") from exc


def twin_dirs(folder: Path) -> dict[str, Path]:
    """The twins exported inside a model folder (name -> folder), e.g. its pixel-loss-only state (PIXEL_TWIN)."""
    folder = Path(folder)
    return {p.name: p for p in sorted(folder.iterdir()) if (p / CARD_FILE).is_file()} if folder.is_dir() else {}


def load_generator(folder: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, ModelCard]:
    """Rebuild the generator named in the card and load its weights (strictly: every tensor must match)."""
    folder = Path(folder)
    card = load_card(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ArtifactError(f"weights '{weights}' are missing; the model folder is incomplete, re-run training")
    net = card.build_network()
    try:
        state = load_file(str(weights), device=str(device))
        net.load_state_dict(state, strict=True)
    except Exception as exc:
        raise ArtifactError(f"weights '{weights}' do not fit the card's '{card.arch}' network: {exc}") from exc
    return net.to(device).eval(), card
