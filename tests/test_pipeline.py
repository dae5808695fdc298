"""Integration: prepare -> train -> evaluate on tiny params, and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

from gan_enhance.config import load_params
from gan_enhance.data.prepare import prepare
from gan_enhance.evaluation.stage import evaluate
from gan_enhance.inference import Enhancer
from gan_enhance.models.artifact import PIXEL_TWIN
from gan_enhance.training.checkpoint import list_checkpoints
from gan_enhance.training.paired import PairedTrainer
from gan_enhance.training.stage import train

CLI = [sys.executable, "-m", "gan_enhance.cli"]


def test_tiny_pipeline_end_to_end(tiny_project: Path):
    params = load_params("params.yaml")
    prepare(params.data, min_side=params.train.patch_size)
    result = train(params)
    assert (result.model_dir / "generator.safetensors").is_file()
    card = json.loads((result.model_dir / "card.json").read_text())
    assert card["arch"] == "srvgg" and card["scale"] == 2 and card["data_hash"] and card["mlflow_run_id"]
    curves = (tiny_project / "reports/train/curves.csv").read_text().splitlines()
    assert curves[0].startswith("step,") and len(curves) == 1 + 12 // 2
    assert (tiny_project / "reports/train/curves.png").is_file()

    metrics = evaluate(params)
    written = json.loads((tiny_project / "reports/eval/metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    for method in ("model", PIXEL_TWIN, "bicubic"):
        assert {"psnr", "ssim", "fid", "kid"} <= set(written[method])
        assert 10 < written[method]["psnr"] < 60
    assert written["protocol"]["fid_crops"] == 6 and written["protocol"]["metric_space"] == "y"
    assert {"psnr_vs_bicubic", f"kid_vs_{PIXEL_TWIN}", f"fid_vs_{PIXEL_TWIN}_low"} <= set(written["gain"])
    per_image = (tiny_project / "reports/eval/per_image.csv").read_text().splitlines()
    assert len(per_image) == 1 + 3 * written["protocol"]["test_images"]
    assert (tiny_project / "reports/eval/comparison.png").is_file()

    client = mlflow.MlflowClient(params.tracking.uri)
    run = client.get_run(card["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert "loss_pixel" in run.data.metrics and "eval_model_psnr" in run.data.metrics
    assert run.data.params["train.steps"] == "12"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"generator", "samples", "evaluation"} <= artifacts


def test_the_pixel_only_twin_is_the_ema_generator_when_the_pixel_phase_ended(tiny_project: Path):
    params = load_params("params.yaml", {"train.checkpoint_every": 6, "train.keep_checkpoints": 2})
    prepare(params.data, min_side=params.train.patch_size)
    model_dir = train(params).model_dir
    twin = model_dir / PIXEL_TWIN
    assert json.loads((twin / "card.json").read_text())["steps"] == params.train.warmup_steps == 6
    at_warmup_end = torch.load(list_checkpoints(Path(params.train.checkpoint_dir))[0], weights_only=True)
    assert at_warmup_end["step"] == 6
    exported = load_file(twin / "generator.safetensors")
    assert all(torch.equal(exported[k], v) for k, v in at_warmup_end["EMA"].items())
    final = load_file(model_dir / "generator.safetensors")
    assert any(not torch.equal(final[k], v) for k, v in exported.items())


@pytest.mark.parametrize("task", ["sr", "denoise"])
def test_a_conditional_discriminator_judges_the_image_beside_its_input(tiny_project: Path, task: str):
    overrides = {"train.conditional_discriminator": True, "tracking.enabled": False, "task.name": task}
    params = load_params("params.yaml", overrides)
    prepare(params.data, min_side=params.train.patch_size)
    trainer = PairedTrainer(params)
    first = next(m for m in trainer.D.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 6
    inp, target = trainer.make_batch(0)
    judged = trainer.judged(target, inp)
    expected = F.interpolate(inp, scale_factor=2, mode="bicubic", align_corners=False) if task == "sr" else inp
    assert torch.equal(judged[:, :3], target) and torch.equal(judged[:, 3:], expected)
    state = {k: v.clone() for k, v in trainer.D.state_dict().items()}
    trainer.run()
    assert any(not torch.equal(trainer.D.state_dict()[k], v) for k, v in state.items())  # D trained on the pairs


def test_instance_noise_is_added_to_what_the_discriminator_sees(tiny_project: Path):
    params = load_params("params.yaml", {"train.instance_noise": 0.1, "tracking.enabled": False})
    prepare(params.data, min_side=params.train.patch_size)
    trainer = PairedTrainer(params)
    inp, target = trainer.make_batch(0)
    noise = trainer.judged(target, inp) - target
    assert noise.shape == target.shape and abs(noise.std().item() - 0.1) < 0.01 and abs(noise.mean().item()) < 0.01


def test_evaluate_refuses_a_model_of_another_task(tiny_project: Path):
    from gan_enhance.evaluation.stage import EvaluationError

    params = load_params("params.yaml", {"tracking.enabled": False})
    prepare(params.data, min_side=params.train.patch_size)
    train(params)
    other = load_params("params.yaml", {"tracking.enabled": False, "task.sr.scale": 4})
    with pytest.raises(EvaluationError, match="trained for task 'sr' x2"):
        evaluate(other)


def _run_train(folder: Path, extra: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, "train", *extra],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path: Path, tiny_source: Path):
    from .conftest import tiny_params_tree

    overrides = [
        "-S",
        "train.steps=90",
        "-S",
        "train.warmup_steps=30",
        "-S",
        "train.checkpoint_every=10",
        "-S",
        "tracking.enabled=false",
        "-S",
        "train.threads=1",
        # every kind of loss term: a random-feature perceptual and texture loss, a region-aware adversarial loss
        "-S",
        "train.perceptual.network=random",
        "-S",
        "train.perceptual.texture_weight=0.1",
        "-S",
        "train.adversarial_mask=texture",
    ]
    folders = []
    for name in ("straight", "killed"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "params.yaml").write_text(yaml.safe_dump(tiny_params_tree(tiny_source, folder)))
        subprocess.run([*CLI, "prepare"], cwd=folder, check=True, capture_output=True)
        folders.append(folder)
    straight, killed = folders

    assert _run_train(straight, overrides).wait(timeout=300) == 0

    proc = _run_train(killed, overrides)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        done = list_checkpoints(killed / "models/checkpoints")
        if done and int(done[-1].stem.split("-")[1]) >= 40:  # well into the adversarial phase
            break
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = int(list_checkpoints(killed / "models/checkpoints")[-1].stem.split("-")[1])
    assert stopped_at < 90, "the run finished before the kill; raise train.steps"
    assert not (killed / "models/generator/generator.safetensors").exists()

    resumed = _run_train(killed, overrides)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert f"Resuming from step {stopped_at}" in output

    a = load_file(str(straight / "models/generator/generator.safetensors"))
    b = load_file(str(killed / "models/generator/generator.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] == b[key]).all(), f"{key} differs after resume"
    card = json.loads((killed / "models/generator/card.json").read_text())
    assert card["losses"]["perceptual"]["network"] == "random" and card["losses"]["perceptual"]["seed"] == 0
    assert card["losses"]["adv"]["mask"] == "texture"
    assert "loss_texture" in (killed / "reports/train/curves.csv").read_text()


def test_cli_reports_bad_params_in_one_line(tiny_project: Path):
    result = subprocess.run([*CLI, "train", "-S", "train.gan_loss=wgan"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "train.gan_loss" in result.stderr and "'hinge'" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_enhance_writes_outputs_and_skips_bad_files(tiny_project: Path, tiny_source: Path):
    params = load_params("params.yaml", {"tracking.enabled": False})
    prepare(params.data, min_side=params.train.patch_size)
    train(params)
    inputs = tiny_project / "inputs"
    inputs.mkdir()
    (inputs / "a.png").write_bytes((tiny_source / "photo_00.png").read_bytes())
    (inputs / "broken.png").write_bytes(b"nope")
    result = subprocess.run(
        [*CLI, "enhance", str(inputs), "-o", "out", "--tile", "32", "--tile-pad", "4"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "broken.png" in result.stderr and "enhanced 1 of 2" in result.stdout
    from PIL import Image

    assert Image.open("out/a.png").size == (192, 192)
    enhancer = Enhancer.from_dir("models/generator", device="cpu", tile=32, tile_pad=4)
    assert enhancer.scale == 2


def test_a_step_hands_back_its_logs_as_detached_tensors_read_only_when_the_loop_logs(tiny_project: Path):
    params = load_params("params.yaml", {"tracking.enabled": False, "train.warmup_steps": 0})
    prepare(params.data, min_side=params.train.patch_size)
    trainer = PairedTrainer(params)
    logs = trainer.train_step(0, trainer.make_batch(0))  # adversarial from step 0: every value D and G log
    assert {"loss_d", "loss_pixel", "loss_adv", "loss_g"} <= set(logs)
    for value in logs.values():  # a float here would have waited for the device at every step (.item())
        assert isinstance(value, torch.Tensor) and value.numel() == 1 and not value.requires_grad
    assert not trainer.opt_g.defaults["fused"] and not trainer.opt_d.defaults["fused"]  # fused Adam on CUDA only
