"""What people look at: training curves, sample and comparison grids, and progress lines off a terminal."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

from gan_enhance.evaluation.paired import comparison_grid
from gan_enhance.evaluation.testsets import TestImage
from gan_enhance.progress import Progress
from gan_enhance.visual import MIN_CELL, curves_figure, image_grid, textured_crop

from .conftest import tiny_params_tree

CLI = [sys.executable, "-m", "gan_enhance.cli"]


def test_every_curve_column_gets_a_panel_and_the_adversarial_phase_a_marker():
    # as the paired trainer logs them: D's losses and val_psnr appear only after the first rows
    history = [
        {"step": 50, "loss_pixel": 0.03, "loss_g": 0.03, "lr_g": 5e-4},
        {"step": 100, "loss_pixel": 0.02, "loss_g": 0.02, "lr_g": 4e-4, "val_psnr": 28.0},
        {"step": 150, "loss_pixel": 0.02, "loss_g": 0.05, "lr_g": 3e-4, "loss_d": 0.7, "loss_adv": 3.0, "loss_fm": 0.1},
    ]
    fig = curves_figure(history, "training", {"adversarial phase starts": 100})
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert set(panels) == {"loss_pixel", "loss_g", "lr_g", "val_psnr", "loss_d", "loss_adv", "loss_fm"}
    for ax in panels.values():
        assert ax.lines[0].get_xydata().size > 0
        assert any(line.get_label() == "adversarial phase starts" for line in ax.lines)


def test_sample_grids_show_every_cell_at_the_output_size_with_readable_labels():
    labels = ("input", "output (EMA)", "target")
    rows = [[np.zeros((24, 24, 3), np.uint8), np.zeros((96, 96, 3), np.uint8), np.zeros((96, 96, 3), np.uint8)]] * 4
    grid = image_grid(rows, labels=labels)
    cell = (grid.width - 2 * 2) // 3
    assert cell >= MIN_CELL and cell % 96 == 0
    text = ImageDraw.Draw(grid)
    assert all(text.textlength(label) < cell for label in labels)
    assert grid.height >= 4 * cell


def test_comparison_crops_show_texture_and_each_method_s_psnr():
    rng = np.random.default_rng(0)
    target = np.full((200, 300, 3), 120, np.uint8)
    target[:, 200:] = rng.integers(0, 256, (200, 100, 3), dtype=np.uint8)  # detail only on the right
    top, left = textured_crop(target, 96)
    assert left >= 200 - 16 and top + 96 <= 200
    hole = np.zeros((200, 300), bool)
    hole[20:60, 100:140] = True  # a flat hole ...
    hole[150:190, 240:280] = True  # ... and one over the texture: the crop goes where a fill must invent detail
    top, left = textured_crop(target, 96, within=hole)
    assert top <= 150 and top + 96 >= 190 and left <= 240 and left + 96 >= 280
    assert textured_crop(target, 96, within=np.zeros((200, 300), bool)) == textured_crop(target, 96)  # no hole
    image = TestImage("photo.png", "0" * 64, target, target.astype(np.float32) / 255)
    methods = {"model": [target], "bicubic": [target]}
    rows = [
        {"image": "photo.png", "method": "model", "psnr": 31.25, "ssim": 0.9},
        {"image": "photo.png", "method": "bicubic", "psnr": 29.5, "ssim": 0.8},
    ]
    with_numbers = comparison_grid([image], methods, count=1, rows=rows, size=96)
    without = image_grid([[target[:96, :96]] * 4], labels=("input", "model", "bicubic", "target"))
    assert with_numbers.height > without.height  # a caption line under the cells
    target_cell = np.asarray(with_numbers)[14:110, -96:]
    assert target_cell.std() > 30  # the textured part, not the flat one


def test_progress_off_a_terminal_writes_lines_with_step_rate_and_time_left():
    stream = io.StringIO()
    progress = Progress(4, desc="train sr", stream=stream, interval_s=0)
    progress.show({"loss_pixel": 0.0312})
    for _ in range(4):
        progress.update()
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "train sr: 4 steps to go"
    assert re.fullmatch(r"train sr: step 1/4 \(25\.0%\) \| loss_pixel 0\.0312 \| [0-9.]+ steps/s \| .*left", lines[1])
    assert lines[-1].startswith("train sr: step 4/4 (100.0%)") and "done in" in lines[-1]


def test_training_in_a_log_reports_progress(tmp_path: Path, tiny_source: Path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params_tree(tiny_source, tmp_path)))
    subprocess.run([*CLI, "prepare", "-S", "tracking.enabled=false"], cwd=tmp_path, check=True, capture_output=True)
    env = {**os.environ, "GAN_ENHANCE_PROGRESS_SECONDS": "0"}
    result = subprocess.run(
        [*CLI, "train", "-S", "tracking.enabled=false"], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "train sr: step 6/12 (50.0%) | loss_pixel" in result.stderr
    assert "train sr: step 12/12 (100.0%)" in result.stderr
    curves = Image.open(tmp_path / "reports/train/curves.png")
    assert curves.width > 1000  # one panel per logged column, not three
