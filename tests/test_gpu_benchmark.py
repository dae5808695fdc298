"""benchmarks/gpu.py: without a GPU it says so, writes a report that says so and exits 0; with --device cpu (or on
a machine with CUDA) its whole logic runs on tiny step counts: training through the trainer's loop in fp32 and
bf16, the Enhancer, and DDP through `gan-enhance train` with 2 processes (torchrun's launcher; gloo on the CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks import gpu
from benchmarks.common import CONFIGS
from gan_enhance.models.artifact import ModelCard


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_and_measures_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert gpu.main(["--out", str(tmp_path), "--work", str(tmp_path / "work")]) == 0
    assert gpu.NO_GPU in capsys.readouterr().out
    assert gpu.NO_GPU in (tmp_path / "gpu.md").read_text()
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["measured"] is False and report["results"] == []
    assert not (tmp_path / "work").exists()  # nothing was trained


@pytest.mark.slow
@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))],
)
def test_every_measurement_runs_on_tiny_step_counts(device: str, tmp_path: Path):
    with_ddp = device == "cpu" or torch.cuda.device_count() >= 2  # gloo on the CPU; on CUDA one process per GPU
    args = ["--device", device, "--tasks", "denoise", "--warmup-steps", "2", "--steps", "2"]
    args += ["--enhance-side", "48", "--enhance-repeats", "1", "--ddp-warmup-steps", "2"]
    args += ["--budget", "1800", "--ddp-timeout", "600"]  # a loaded 2-core CI machine must not run out of time
    args += ["--ddp-processes", "2"] if with_ddp else []
    assert gpu.main([*args, "--out", str(tmp_path), "--work", str(tmp_path / "work")]) == 0
    report = json.loads((tmp_path / "gpu.json").read_text())
    (result,) = report["results"]
    assert result["task"] == "denoise" and result["batch"] == 16 and result["skipped"] == []
    assert [s["precision"] for s in result["train"]] == ["fp32", "bf16"]
    for speed in result["train"]:
        assert speed["steps_timed"] == 2 and speed["images_per_s"] > 0
        assert (speed["peak_memory_mib"] is None) == (device == "cpu")
        assert speed["step_ms"] == pytest.approx(1000 * 16 / speed["images_per_s"])
        assert 0 <= speed["data_wait_share"] < 1
    assert result["enhance"]["what"] == "48 x 48 input" and result["enhance"]["megapixels_per_s"] > 0
    if not with_ddp:
        assert result["ddp"]["note"] == "1 GPU visible: DDP scaling needs 2 or more"
        return
    ddp = result["ddp"]
    assert ddp["note"] == "" and ddp["processes"] == 2 and ddp["per_process_batch"] == 16
    assert ddp["images_per_s_1"] > 0 and ddp["images_per_s_n"] > 0
    assert ddp["efficiency"] == pytest.approx(ddp["images_per_s_n"] / (2 * ddp["images_per_s_1"]))
    checkpoints = sorted(p.name for p in (tmp_path / "work" / "gpu-denoise" / "ddp-2" / "checkpoints").glob("*.pt"))
    assert len(checkpoints) == 3  # steps 2, 4 (timed between) and 6: the 2-process run trained to the end
    table = (tmp_path / "gpu.md").read_text()
    generator = yaml.safe_load((CONFIGS / f"{gpu.TASKS['denoise']}.yaml").read_text())["model.generator"]["name"]
    assert f"| denoise: denoise, {generator}" in table and "| 2: " in table


def test_the_roofline_counts_srvggs_flops_as_its_convolutions():
    from benchmarks.roofline import flops_per_pixel

    card = ModelCard(arch="srvgg", arch_kwargs={"num_feat": 48, "num_conv": 10}, task="sr", scale=4)
    # per input pixel: 3->48 first conv, 10 body convs 48->48 and the 48->48 (3 x 4 x 4) output conv, 3x3 each,
    # 2 FLOPs per multiply-add; the upsampling and the activations count nothing
    assert flops_per_pixel(card.build_network(), card) == 2 * 9 * (3 * 48 + 10 * 48 * 48 + 48 * 48)


def test_the_roofline_runs_on_the_cpu_at_toy_sizes(tmp_path: Path):
    from benchmarks import roofline

    args = ["--device", "cpu", "--side", "32", "--repeats", "1", "--matmul", "128", "--conv-side", "16"]
    args += ["--models", str(tmp_path / "no-model"), "--out", str(tmp_path), "--work", str(tmp_path / "work")]
    assert roofline.main(args) == 0
    data = json.loads((tmp_path / "roofline.json").read_text())
    assert [p["what"] for p in data["peaks"]] == ["matmul 128", "conv3x3 16ch", "conv3x3 48ch", "conv3x3 64ch"]
    networks = [*roofline.CONFIG_NETWORKS, "sr x4 (rrdb, RealESRGAN_x4plus layout)"]
    assert [v["network"] for v in data["variants"]] == networks  # one fp32 row each on the CPU
    for v in data["variants"]:
        assert v["precision"] == "fp32" and v["compiled"] == "eager" and (v["tile"], v["tiles_per_pass"]) == (256, 1)
        flops = data["flops_per_input_pixel"][v["network"]]
        assert v["tflops"] == pytest.approx(flops * v["megapixels_per_s"] * 1e6 / 1e12)
        assert v["share_of_conv_peak"] > 0
    assert data["precision_cost"] == [] and "no trained model" in data["precision_cost_skipped"]
    assert "| sr x4 (srvgg, the default) | 459 | fp32 | eager | 256 (1) |" in (tmp_path / "roofline.md").read_text()
