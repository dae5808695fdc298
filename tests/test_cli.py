"""The command line as a newcomer meets it: outputs that never overwrite each other, a clear error for a taken UI
port, registered models listed and used by their models:/ URI, experiments opened as model development."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from gan_enhance.models.artifact import ModelCard, save_generator
from gan_enhance.tracking import EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT

from .conftest import photo_crops, tiny_params_tree

CLI = [sys.executable, "-m", "gan_enhance.cli"]


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd)


def test_enhance_keeps_every_output_when_names_collide(tmp_path: Path):
    card = ModelCard(arch="srvgg", arch_kwargs={"num_feat": 8, "num_conv": 2}, task="sr", scale=2)
    torch.manual_seed(0)
    save_generator(card.build_network(), card, tmp_path / "model")
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    photos = photo_crops(3, size=32)
    Image.fromarray(photos[0]).save(inputs / "x.png")
    Image.fromarray(photos[1]).save(inputs / "x.jpg", quality=95)
    Image.fromarray(photos[2]).save(inputs / "sub" / "x.png")
    result = _cli("enhance", str(inputs), "-m", str(tmp_path / "model"), "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "enhanced 3 of 3" in result.stdout and "x_jpg.png" in result.stdout
    written = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.png"))
    assert written == ["sub/x.png", "x_jpg.png", "x_png.png"]
    outputs = [np.asarray(Image.open(tmp_path / "out" / name)) for name in written]
    assert not np.array_equal(outputs[1], outputs[2])  # three different results, none overwritten


def test_ui_on_a_taken_port_fails_and_says_what_to_do(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _cli("ui", "--port", str(port), "-S", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}")
    assert result.returncode == 2
    assert f"port {port}" in result.stderr and "already in use" in result.stderr and "--port" in result.stderr


@pytest.mark.slow
def test_registered_models_are_listed_and_used_by_uri(tmp_path: Path, tiny_source: Path):
    from gan_enhance.serving.local import register_champion

    champion = register_champion(tmp_path, tiny_params_tree(tiny_source, tmp_path))
    name, uri = champion["model_name"], champion["tracking_uri"]
    params_file = str(champion["params_file"])

    listing = _cli("models", "-p", params_file)
    assert listing.returncode == 0, listing.stderr
    header, row = listing.stdout.splitlines()[:2]
    assert header.split()[:3] == ["MODEL", "VERSION", "ALIASES"] and "PSNR" in header and "FID" in header
    assert row.split()[:3] == [name, "1", "champion"] and "30.00" in row and "promoted" in row
    unknown = _cli("models", "-p", params_file, "--name", "no-such-model")
    assert unknown.returncode == 2 and "no registered model 'no-such-model'" in unknown.stderr

    image = tmp_path / "photo.png"
    Image.fromarray(photo_crops(1, size=32)[0]).save(image)
    for model_uri in (f"models:/{name}@champion", f"models:/{name}/1"):
        out = tmp_path / model_uri.replace(":", "").replace("/", "_").replace("@", "_")
        result = _cli("enhance", str(image), "-m", model_uri, "--tracking-uri", uri, "-o", str(out))
        assert result.returncode == 0, result.stderr
        assert Image.open(out / "photo.png").size == (64, 64)
    waiting = _cli("enhance", str(image), "-m", f"models:/{name}@challenger", "--tracking-uri", uri)
    assert waiting.returncode == 2 and "no version with alias 'challenger'" in waiting.stderr  # promotion cleared it
    malformed = _cli("enhance", str(image), "-m", f"models:/{name}", "--tracking-uri", uri)
    assert malformed.returncode == 2 and "models:/NAME@champion" in malformed.stderr

    experiment = mlflow.MlflowClient(uri).get_experiment_by_name("gan-enhance-sr")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_DEVELOPMENT
    assert yaml.safe_load(Path(params_file).read_text())["task"]["name"] == "sr"
