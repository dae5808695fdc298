"""Helpers for the serving tests and benchmark: a tiny registered champion, a BentoML home, a served service."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import torch
import yaml

from .servers import HOST, free_port, server_process

REPO = Path(__file__).resolve().parents[1]
SERVICE = "serving.service:EnhanceService"


def register_champion(root: Path, tree: dict[str, Any], weights: Path | None = None) -> dict[str, Any]:
    """Register a generator for the params `tree` (written to root/params.yaml; its tracking URI names the store)
    with the lifecycle package's register + promote, so that it holds `champion`. The weights are `weights`
    (a generator folder) or a random initialisation of the params' architecture: serving does not care how good
    the model is. Returns {"params", "params_file", "tracking_uri", "model_name", "version", "model_dir"}.

    The evaluation report register() asks for is written here with made-up numbers instead of running the
    evaluation stage (minutes on 2 cores for FID); the registry path is the real one."""
    import shutil

    from gan_enhance.config import load_params
    from gan_enhance.evaluation.stage import METRICS_FILE
    from gan_enhance.lifecycle.promotion import promote
    from gan_enhance.lifecycle.register import register
    from gan_enhance.lifecycle.registry import registered_model_name
    from gan_enhance.models.artifact import ModelCard, load_card, save_generator
    from gan_enhance.tasks import build_task

    (root / "params.yaml").write_text(yaml.safe_dump(tree))
    params = load_params(root / "params.yaml")
    model_dir = root / params.train.out_dir
    if weights is not None:
        shutil.copytree(weights, model_dir, dirs_exist_ok=True)
        card = load_card(model_dir)
    else:
        task, generator = build_task(params.task), params.model.generator
        torch.manual_seed(0)
        card = ModelCard(
            arch=generator.name,
            arch_kwargs=dict(generator.kwargs),
            **task.card_fields(),
            task_params=task.card_params(),
        )
        net = card.build_network()
        card.latent_dim = getattr(net, "latent_dim", None)
        save_generator(net, card, model_dir)
    metrics = {
        "model": {
            "fid": 50.0,
            "kid": 0.01,
            "psnr": 30.0,
            "ssim": 0.9,
            "mlflow_run_id": card.mlflow_run_id,
            "data_hash": card.data_hash,
        },
        "bicubic": {"fid": 60.0, "kid": 0.02, "psnr": 29.0, "ssim": 0.85},
        "gain": {"psnr_vs_bicubic": 1.0},
        "protocol": {"test_images": 3, "fid_crops": 6, "metric_space": "y", "note": "made up for serving tests"},
    }
    metrics_file = root / params.evaluate.out_dir / METRICS_FILE
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    metrics_file.write_text(json.dumps(metrics))
    registration = register(params, base=root)
    outcome = promote(params)
    assert outcome.champion == registration.version, outcome
    return {
        "params": params,
        "params_file": root / "params.yaml",
        "tracking_uri": params.tracking.uri,
        "model_name": registered_model_name(params),
        "version": registration.version,
        "model_dir": model_dir,
    }


def register_tiny_champion(root: Path, source: Path) -> dict[str, Any]:
    """register_champion for the tests' tiny params: srvgg x2 with 8 features, 2 convolutions."""
    from .conftest import tiny_params_tree

    return register_champion(root, tiny_params_tree(source, root))


@contextlib.contextmanager
def bentoml_home(path: Path) -> Iterator[Path]:
    """Point BentoML's stores at `path` in this process (overriding its cached stores) and, through BENTOML_HOME,
    in the servers it starts; everything is put back afterwards."""
    from bentoml._internal.bento import BentoStore
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    overrides = {
        "bentoml_home": str(path),
        "bento_store_dir": str(path / "bentos"),
        "model_store_dir": str(path / "models"),
        "tmp_bento_store_dir": str(path / "tmp"),
        "env_store_dir": str(path / "envs"),
        "bento_store": BentoStore(str(path / "bentos")),
        "model_store": ModelStore(str(path / "models")),
    }
    old = os.environ.get("BENTOML_HOME")
    os.environ["BENTOML_HOME"] = str(path)
    for name, value in overrides.items():
        getattr(BentoMLContainer, name).set(value)
    try:
        yield path
    finally:
        for name in overrides:
            getattr(BentoMLContainer, name).reset()
        if old is None:
            os.environ.pop("BENTOML_HOME", None)
        else:
            os.environ["BENTOML_HOME"] = old


def wait_ready(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s")


@contextlib.contextmanager
def serve(bento: str = SERVICE, env: dict[str, str] | None = None, working_dir: Path = REPO) -> Iterator[str]:
    """`bentoml.serve` on 127.0.0.1 at a free port with GAN_ENHANCE_SERVE_* from `env`; yields the URL once
    /readyz says yes; the server is stopped on exit."""
    import bentoml

    port = free_port()
    saved = {key: os.environ.get(key) for key in env or {}}
    os.environ.update(env or {})
    try:
        server = bentoml.serve(bento, working_dir=str(working_dir), host="127.0.0.1", port=port)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
        yield url
    finally:
        server.stop()


@contextlib.contextmanager
def serve_process(
    target: str = SERVICE, env: dict[str, str] | None = None, cwd: Path = REPO, log: Path | None = None
) -> Iterator[tuple[str, Any]]:
    """`bentoml serve TARGET` as a separate process (its own session) on 127.0.0.1 at a free port, with `env` on
    top of this process's environment; yields (url, Popen) once /readyz says yes, and stops the whole process
    group on exit."""
    import sys

    port = free_port()
    url = f"http://{HOST}:{port}"
    command = [sys.executable, "-m", "bentoml", "serve", target, "--host", HOST, "--port", str(port)]
    with server_process(command, f"{url}/readyz", log, {**os.environ, **(env or {})}, cwd, timeout_s=120) as process:
        yield url, process
