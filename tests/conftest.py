"""Shared fixtures: telemetry off, tiny images and tiny params that train in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from gan_enhance.device import TELEMETRY_OFF

for _key, _value in TELEMETRY_OFF.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"


@pytest.fixture(autouse=True)
def _mlflow_uris_restored():
    """Code under test (flows, bento import, loaders) may point MLflow's process-wide tracking and registry URIs,
    and their environment variables, at a test's store; each test starts from the URIs the session began with."""
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {key: os.environ.get(key) for key in keys}
    yield
    import mlflow

    mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])
    mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def photo_crops(count: int, size: int = 96, pairs: bool = False) -> list[np.ndarray]:
    """Deterministic crops of real photos shipped by scikit-image, cycling through the photos one crop at a time
    (or two: `pairs`)."""
    from skimage import data

    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    crops = []
    rng = np.random.default_rng(0)
    while len(crops) < count:
        image = sources[(len(crops) // (2 if pairs else 1)) % len(sources)]
        top = rng.integers(0, image.shape[0] - size)
        left = rng.integers(0, image.shape[1] - size)
        crops.append(np.ascontiguousarray(image[top : top + size, left : left + size]))
    return crops


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 12 small real-photo crops."""
    folder = tmp_path_factory.mktemp("source")
    for i, crop in enumerate(photo_crops(12)):
        Image.fromarray(crop).save(folder / f"photo_{i:02d}.png")
    return folder


def tiny_params_tree(source: Path, root: Path) -> dict:
    """params.yaml content (every key spelled out, as dvc.yaml's templating needs) for a run of seconds."""
    from gan_enhance.config import Params

    tree = {
        "seed": 0,
        "data": {
            "source": str(source),
            "prepared_dir": "data/prepared",
            "split": {"val": 0.15, "test": 0.25},
            "min_side": 32,
        },
        "task": {"name": "sr", "sr": {"scale": 2}},
        "model": {
            "generator": {"name": "srvgg", "num_feat": 8, "num_conv": 2},
            "discriminator": {"name": "patchgan", "num_feat": 8, "num_layers": 2},
        },
        "train": {
            "steps": 12,
            "warmup_steps": 6,
            "batch_size": 4,
            "patch_size": 32,
            "log_every": 2,
            "sample_every": 6,
            "checkpoint_every": 4,
            "ema_halflife_images": 20,
        },
        "evaluate": {
            "tile": 32,
            "tile_overlap": 8,
            "fid_crops": 6,
            "fid_crop_size": 32,
            "grid_images": 2,
            "bootstrap": 200,
        },
        "tracking": {"enabled": True, "uri": f"sqlite:///{root / 'mlflow.db'}"},
        # a 12-step network does not beat bicubic; the gate itself is tested in test_registry_policy.py and on a
        # real evaluation in test_registry_server.py
        "promote": {"require_baseline_win": False},
    }
    return Params.model_validate(tree).model_dump(mode="json")


@pytest.fixture
def tiny_project(tmp_path: Path, tiny_source: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with tiny params.yaml; the test runs inside it."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params_tree(tiny_source, tmp_path)))
    monkeypatch.chdir(tmp_path)
    return tmp_path
