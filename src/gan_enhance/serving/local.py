"""A served champion on this machine, for the tests and benchmarks: a generator registered as champion in a scratch
MLflow store, a BentoML home of their own, and `bentoml serve` of serving/service.py as a separate process. Needs
the repository checkout (the service file and its bentofile live beside src/)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml

from gan_enhance.servers import HOST, free_port, server_process

if TYPE_CHECKING:
    from gan_enhance.evaluation.evidence import Evidence

REPO = Path(__file__).resolve().parents[3]
SERVICE = "serving.service:EnhanceService"


def register_champion(root: Path, tree: dict[str, Any], weights: Path | None = None) -> dict[str, Any]:
    """Register an untrained generator (unless `weights` names a generator folder) with stand-in metrics as the
    champion of the params `tree` (written to root/params.yaml; its tracking URI names the store), through the
    lifecycle package's register + promote. Without `weights` the generator is a random initialisation of the
    params' architecture: serving does not care how good the model is. Returns {"params", "params_file",
    "tracking_uri", "model_name", "version", "model_dir"}.

    The evaluation register() asks for is written here from made-up evidence (the model's crop features equal to
    the reference crops', its baseline's off by a margin) instead of running the evaluation stage (minutes on 2
    cores for FID); the registry path and the promotion policy are the real ones."""
    from gan_enhance.config import load_params
    from gan_enhance.evaluation.evidence import EVIDENCE_FILE
    from gan_enhance.evaluation.report import METRICS_FILE, assemble_result
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
    out = root / params.evaluate.out_dir
    evidence = _stand_in_evidence(build_task(params.task).classical_baseline)
    out.mkdir(parents=True, exist_ok=True)
    evidence.save(out / EVIDENCE_FILE)
    protocol = {"test_images": 3, "fid_crops": STAND_IN_CROPS, "note": "made up for serving tests"}
    metrics = assemble_result(params, evidence, card, protocol)
    (out / METRICS_FILE).write_text(json.dumps(metrics))
    registration = register(params, base=root)
    outcome = promote(params)
    if outcome.champion != registration.version:
        raise RuntimeError(f"version {registration.version} was registered but not promoted: {outcome}")
    return {
        "params": params,
        "params_file": root / "params.yaml",
        "tracking_uri": params.tracking.uri,
        "model_name": registered_model_name(params),
        "version": registration.version,
        "model_dir": model_dir,
    }


STAND_IN_CROPS = 8


def _stand_in_evidence(baseline: str) -> Evidence:
    """Evidence in which the model matches the reference crops and its baseline does not, on 3 images."""
    from gan_enhance.evaluation.evidence import Evidence

    reference = np.random.default_rng(0).gamma(2.0, 0.15, (STAND_IN_CROPS, 2048)).astype(np.float32)
    spread = np.array([0.2, -0.1, -0.1])
    return Evidence(
        images=["stand-in-1", "stand-in-2", "stand-in-3"],
        per_image={
            "model": {"psnr": 30.0 + spread, "ssim": 0.9 + spread / 10},
            baseline: {"psnr": 29.0 + spread, "ssim": 0.85 + spread / 10},
        },
        reference=reference,
        features={"model": reference.copy(), baseline: reference + 0.3},
        positions=np.zeros((STAND_IN_CROPS, 3), dtype=np.int64),
    )


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


@contextlib.contextmanager
def serve_process(
    target: str = SERVICE, env: dict[str, str] | None = None, cwd: Path = REPO, log: Path | None = None
) -> Iterator[tuple[str, Any]]:
    """`bentoml serve TARGET` as a separate process (its own session) on 127.0.0.1 at a free port, with `env` on
    top of this process's environment; yields (url, Popen) once /readyz says yes, and stops the whole process
    group on exit."""
    port = free_port()
    url = f"http://{HOST}:{port}"
    command = [sys.executable, "-m", "bentoml", "serve", target, "--host", HOST, "--port", str(port)]
    with server_process(command, f"{url}/readyz", log, {**os.environ, **(env or {})}, cwd, timeout_s=120) as process:
        yield url, process
