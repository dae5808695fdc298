"""`dvc repro` end to end in a temporary git repository with tiny params."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, tiny_params_tree

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture
def dvc_repo(tmp_path: Path, tiny_source: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    shutil.copytree(REPO / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    tree = tiny_params_tree(tiny_source, repo)
    tree["tracking"]["enabled"] = False
    (repo / "params.yaml").write_text(yaml.safe_dump(tree))
    _run(["git", "init", "-q"], repo)
    _run([str(BIN / "dvc"), "init", "-q"], repo)
    _run([str(BIN / "dvc"), "config", "core.analytics", "false"], repo)
    return repo


def test_dvc_repro_runs_caches_and_reruns_only_what_changed(dvc_repo: Path):
    dvc = str(BIN / "dvc")
    first = _run([dvc, "repro"], dvc_repo)
    for stage in ("prepare", "train", "evaluate"):
        assert f"Running stage '{stage}'" in first
    metrics = json.loads((dvc_repo / "reports/eval/metrics.json").read_text())
    assert metrics["model"]["psnr"] > 0 and (dvc_repo / "dvc.lock").is_file()
    assert (dvc_repo / "models/generator/card.json").is_file()

    start = time.perf_counter()
    again = _run([dvc, "repro"], dvc_repo)
    assert "Running stage" not in again and time.perf_counter() - start < 60

    tree = yaml.safe_load((dvc_repo / "params.yaml").read_text())
    tree["evaluate"]["fid_crops"] = 8
    (dvc_repo / "params.yaml").write_text(yaml.safe_dump(tree))
    changed = _run([dvc, "repro"], dvc_repo)
    assert "Running stage 'evaluate'" in changed and "Running stage 'train'" not in changed
    assert json.loads((dvc_repo / "reports/eval/metrics.json").read_text())["protocol"]["fid_crops"] == 8

    shown = _run([dvc, "metrics", "show", "--json"], dvc_repo)
    assert "psnr" in shown
    table = _run([dvc, "metrics", "show"], dvc_repo).splitlines()
    assert "reports/eval/scores.json" in table[1] and max(len(line) for line in table) < 300, table
    assert {"kid.model", "kid.low", "kid.high", "kid.bicubic"} <= set(table[0].split()), table[0]
    assert "protocol" not in "".join(table) and "mlflow_run_id" not in "".join(table)
    plots = json.loads(_run([dvc, "plots", "show", "--json"], dvc_repo))
    # each plot once: the top-level definitions, not the files again as stage plots
    assert sorted(plots["data"]) == [
        "reports/eval/comparison.png",
        "reports/train/curves.png",
        "test PSNR per image",
        "training losses",
        "validation PSNR (EMA generator)",
    ]

    # `dvc exp run -S` edits params.yaml; the stage then validates it like any other way of setting params
    _run(["git", "add", "-A"], dvc_repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"], dvc_repo)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    bad = subprocess.run(
        [dvc, "exp", "run", "-S", "train.gan_loss=wgan"], cwd=dvc_repo, env=env, capture_output=True, text=True
    )
    assert bad.returncode != 0
    assert "train.gan_loss" in bad.stdout + bad.stderr and "'hinge'" in bad.stdout + bad.stderr


def test_dvc_exp_run_trains_with_two_processes(dvc_repo: Path):
    """`dvc exp run -S train.distributed.nproc_per_node=2`: the train stage launches itself through torchrun's elastic
    launcher (2 processes of 1 thread) and the pipeline goes on to evaluate the model rank 0 exported."""
    dvc = str(BIN / "dvc")
    _run(["git", "add", "-A"], dvc_repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"], dvc_repo)
    output = _run([dvc, "exp", "run", "-S", "train.distributed.nproc_per_node=2", "-S", "train.threads=1"], dvc_repo)
    assert "Training with 2 processes" in output and "Running stage 'evaluate'" in output
    assert json.loads((dvc_repo / "reports/eval/metrics.json").read_text())["model"]["psnr"] > 0
    applied = yaml.safe_load((dvc_repo / "params.yaml").read_text())["train"]["distributed"]
    assert applied["nproc_per_node"] == 2
    assert "nproc_per_node" in _run([dvc, "exp", "show", "--md"], dvc_repo)
