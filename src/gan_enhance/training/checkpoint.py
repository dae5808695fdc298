"""Checkpoints: everything needed to continue a run bit for bit (nets, optimizers, schedulers, every process's RNG
state, step).

Files are written to a temporary name and renamed, so a run killed mid-write keeps its previous checkpoint.
Only tensors and plain containers are stored, and they are loaded with weights_only=True.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

PREFIX = "step-"


def _numpy_state() -> tuple:
    name, key, pos, has_gauss, cached = np.random.get_state()
    return name, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(cached)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write `state` (which holds the RNG states) as the checkpoint of `step`; keep the newest `keep`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{PREFIX}{step:08d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save({**state, "step": step}, tmp)
    tmp.replace(path)
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob(f"{PREFIX}*.pt")) if Path(folder).is_dir() else []


def load_latest(folder: Path, map_location: torch.device | str = "cpu") -> dict[str, Any] | None:
    """Newest readable checkpoint, or None. A damaged newest file falls back to the one before."""
    for path in reversed(list_checkpoints(folder)):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:
            print(f"warning: checkpoint {path} is unreadable ({exc}); trying an older one")
    return None
