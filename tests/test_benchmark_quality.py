"""The quality benchmark's configs and its report, on tiny stand-ins for the benchmark sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from benchmarks import quality
from benchmarks.common import config_names, config_params, earlier_parts

from .conftest import photo_crops


@pytest.mark.parametrize("name", config_names())
def test_every_benchmark_config_is_a_valid_parameter_set(name: str, tmp_path: Path):
    params = config_params(name, tmp_path)
    assert params.train.out_dir == tmp_path / "generator"


@pytest.mark.slow
def test_the_inpainting_part_reports_the_gain_over_its_own_first_stage(tmp_path: Path):
    datasets = tmp_path / "datasets"  # 80 crops: the fewest whose 5 % test split (by content hash) is not empty
    for folder, crops in (("CBSD68", photo_crops(80, size=80)), ("Set14", photo_crops(3, size=128))):
        (datasets / folder).mkdir(parents=True)
        for i, crop in enumerate(crops):
            Image.fromarray(crop).save(datasets / folder / f"{i:02d}.png")
    out = tmp_path / "out"
    tiny = ["--inpaint-steps", "6", "--fid-crops", "8", "--fid-crop-size", "32", "--threads", "1"]
    folders = ["--datasets", str(datasets), "--work", str(tmp_path / "work"), "--out", str(out)]
    quality.main(["--parts", "inpaint", *tiny, *folders])
    report = (out / "quality.md").read_text()
    assert "Free-form inpainting" in report and "inpaint: paired gains of the model" in report
    summary = json.loads((out / "quality.json").read_text())["parts"]["inpaint"]["sets"]["Set14"]["summary"]
    assert {"model", "fills_mean", "biharmonic"} <= summary.keys()
    gain = {k.removeprefix("psnr_hole_vs_fills_mean"): v for k, v in summary["gain"].items()}
    assert gain[""] == pytest.approx(summary["model"]["psnr_hole"] - summary["fills_mean"]["psnr_hole"], abs=1e-6)
    assert gain["_low"] <= gain[""] <= gain["_high"]
    train_info = json.loads((tmp_path / "work" / "inpaint" / quality.TRAIN_INFO).read_text())
    assert train_info["steps"] == 6 and train_info["train_cpu_seconds"] > 0 and train_info["resumed_from"] == 0
    quality.main(["--parts", "inpaint", "--train-only", *tiny, *folders])  # a rerun keeps the finished training
    assert json.loads((tmp_path / "work" / "inpaint" / quality.TRAIN_INFO).read_text())["resumed_from"] == 6


def test_a_report_keeps_the_earlier_parts_measured_under_the_same_protocol(tmp_path: Path):
    protocol = {"datasets": "/data", "fid_crops": 192, "fid_crop_size": 96}
    parts = {"sr": {"evaluated": "2026-12-01T03:00:00+00:00"}, "denoise": {"evaluated": "2026-12-01T03:10:00+00:00"}}
    report = tmp_path / "quality.json"
    report.write_text(json.dumps({"protocol": protocol, "parts": parts}))
    assert earlier_parts(report, protocol) == parts
    assert earlier_parts(report, {**protocol, "fid_crops": 64}) == {}
    assert earlier_parts(report) == {}  # a report with a protocol is not one without
    assert earlier_parts(tmp_path / "absent.json", protocol) == {}
