"""A newcomer's first journeys, in the README's order, on a copy of the repository with tiny params: run the
pipeline, read the metrics, list and promote the registered model, enhance photos with the champion, build the
bento with `make bento`'s defaults, and find the make targets. Each step asserts what the user sees."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from gan_enhance.device import TELEMETRY_OFF

from .conftest import REPO, photo_crops, tiny_params_tree

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _copy_of_the_repository(target: Path) -> Path:
    """What a fresh clone holds (tracked and new, unignored files of this working tree), committed."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    for command in (["git", "init", "-q"], ["git", "add", "-A"]):
        subprocess.run(command, cwd=target, check=True)
    subprocess.run(
        ["git", "-c", "user.name=newcomer", "-c", "user.email=n@example.com", "commit", "-qm", "clone"],
        cwd=target,
        check=True,
    )
    return target


def test_readme_journeys_on_a_fresh_copy(tmp_path: Path, tiny_source: Path):
    repo = _copy_of_the_repository(tmp_path / "gan-enhance")
    tree = tiny_params_tree(tiny_source, repo)
    tree["tracking"]["uri"] = None  # the README's default: ./mlflow.db (made absolute)
    (repo / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    env = {
        **os.environ,
        **TELEMETRY_OFF,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(repo / "src"),  # the copy's code, with this environment's packages
        "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}",  # as the Makefile exports it
        "BENTOML_HOME": str(repo / "bentoml_home"),
        "GAN_ENHANCE_PROGRESS_SECONDS": "0",
    }

    def run(*command: str, ok: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        if ok:
            assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
        return result

    # make run: the pipeline, with progress in the log, then the metrics in one readable row
    repro = run("dvc", "repro")
    for stage in ("prepare", "train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in repro.stdout
    assert "train sr: step 12/12 (100.0%)" in repro.stdout + repro.stderr
    metrics = run("dvc", "metrics", "show").stdout.splitlines()
    assert metrics[1].startswith("reports/eval/scores.json") and max(map(len, metrics)) < 300
    assert "psnr.model" in metrics[0] and "psnr.low" in metrics[0] and "protocol" not in metrics[0]

    # the registry: the new version waits as challenger; promotion makes it champion and clears challenger
    listing = run("gan-enhance", "models").stdout.splitlines()
    assert listing[1].split()[:3] == ["gan-enhance-sr-x2", "1", "challenger"]
    promoted = run("gan-enhance", "promote")
    assert promoted.stdout.startswith("promoted: gan-enhance-sr-x2 version 1")
    assert run("gan-enhance", "models").stdout.splitlines()[1].split()[:3] == ["gan-enhance-sr-x2", "1", "champion"]

    # enhance your own photos with the champion: two inputs of the same name both come out
    photos = repo / "my photos"
    photos.mkdir()
    crop = Image.fromarray(photo_crops(1, size=40)[0])
    crop.save(photos / "holiday.png")
    crop.save(photos / "holiday.jpg", quality=90)
    enhanced = run("gan-enhance", "enhance", str(photos), "-m", "models:/gan-enhance-sr-x2@champion", "-o", "out")
    assert "enhanced 2 of 2 images" in enhanced.stdout
    assert sorted(p.name for p in (repo / "out").iterdir()) == ["holiday_jpg.png", "holiday_png.png"]
    assert Image.open(repo / "out" / "holiday_png.png").size == (80, 80)

    # make bento: the champion packaged, with the default relative output folder
    bento = run(sys.executable, "-m", "gan_enhance.serving.bento", "--out", "dist")
    assert "imported gan-enhance-sr-x2 version 1 (alias champion)" in bento.stdout
    assert len(list((repo / "dist").glob("gan-enhance-*.bento"))) == 1

    # make help: every target with one line
    targets = run("make", "help").stdout
    for target in ("run", "test", "test-fast", "ui", "bento", "serve", "retrain", "evaluate-champion"):
        assert f"make {target} " in targets

    # what the training run left to look at
    assert (repo / "reports/train/curves.png").is_file() and (repo / "reports/eval/comparison.png").is_file()
    assert Image.open(repo / "reports/eval/comparison.png").width >= 4 * 128
