"""A roofline for the Enhancer: each network's FLOPs per input pixel (counted), the TFLOP/s it reaches on a
side x side input, and the device's own peaks measured in the same run, so every figure is a ratio to what this
device can do.

- **Counted FLOPs**: torch.utils.flop_counter over one forward pass (2 per multiply-add of the convolutions and
  matrix products; activations, adds and FFTs are left out: they move memory, not multiply-adds).
- **Peaks**: a square matrix product in fp32 and bf16, and a 3x3 convolution at each network's channel count
  (channels-last, batch of 8) in the same dtypes: the rate a network made of such convolutions could reach.
- **Variants**: the Enhancer as `gan-enhance enhance` runs it on the device (tile plan from free memory on CUDA,
  256 on the CPU) in fp32 and in the device's automatic precision (bf16 on CUDA), with torch.compile on CUDA.
- **Precision cost**: with trained models (`--models`) and a photo folder (`--images`: Set14, else the default
  run's test photos), PSNR on Y (border of `scale` cropped) of the automatic precision's output against fp32's,
  each against the targets.

    .venv/bin/python -m benchmarks.roofline                      # CUDA when there is one, else the CPU
    .venv/bin/python -m benchmarks.roofline --device cpu --side 64 --out /tmp/x   # the logic at toy sizes

Writes roofline.md and roofline.json into --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

if not __package__:  # run as `python benchmarks/roofline.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, RESULTS, config_params, machine, machine_line
from benchmarks.gpu import _enhance_call, gpu_line
from gan_enhance.device import disable_telemetry, pick_device
from gan_enhance.evaluation.metrics import psnr_ssim
from gan_enhance.evaluation.testsets import load_test_folder
from gan_enhance.inference.accel import dtype_name
from gan_enhance.inference.base import Enhancer
from gan_enhance.models.artifact import ModelCard
from gan_enhance.tasks import build_task, task_from_card

CONFIG_NETWORKS = {  # label -> benchmark config whose generator (and task) the row measures
    "sr x4 (srvgg, the default)": "sr_x4",
    "denoise": "denoise_s25",
    "inpaint": "inpaint",
    "translate": "translate_warm_film",
}
RRDB_X4 = ModelCard(  # RealESRGAN_x4plus's layout (benchmarks/published.py imports its weights)
    arch="rrdb",
    arch_kwargs={"num_feat": 64, "num_block": 23, "num_grow_ch": 32},
    task="sr",
    scale=4,
    task_params={"name": "sr", "scale": 4},
)
IMAGE_FOLDERS = (REPO.parent / "shared" / "datasets" / "Set14", REPO / "data" / "prepared" / "test")


@dataclass
class Peak:
    what: str
    dtype: str
    tflops: float


@dataclass
class Variant:
    network: str
    precision: str
    compiled: str  # CompiledOrEager's note: eager, compiled, or why it fell back
    tile: int  # the plan's tile (0: the whole image in one pass)
    tiles_per_pass: int
    megapixels_per_s: float
    tflops: float
    share_of_conv_peak: float | None  # against the 3x3 convolution peak in the same dtype at the network's width


@dataclass
class PrecisionCost:
    model: str
    images: int
    psnr_fp32: float
    psnr_auto: float
    auto_dtype: str


def card_for(config: str, work: Path) -> ModelCard:
    """The card a model trained with benchmark config `config` would carry (untrained weights do for speed)."""
    params = config_params(config, work)
    task = build_task(params.task)
    return ModelCard(
        arch=params.model.generator.name,
        arch_kwargs=params.model.generator.kwargs,
        **task.card_fields(),
        task_params=task.card_params(),
    )


def flops_per_pixel(net: torch.nn.Module, card: ModelCard, side: int = 64) -> float:
    """Convolution and matrix FLOPs of one forward pass per input pixel, counted on the CPU in fp32."""
    net = net.to("cpu").eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(torch.rand(1, card.in_channels, side, side))
    return counter.get_total_flops() / (side * side)


def width(card: ModelCard) -> int:
    """The network's main channel count (the 3x3 convolutions that dominate its FLOPs)."""
    return int(card.arch_kwargs.get("num_feat", 64))


def _timed(call: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median seconds of `call` after one untimed warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> float:
    """TFLOP/s of an n x n matrix product."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / _timed(lambda: a @ b, device, repeats) / 1e12


@torch.inference_mode()
def conv_peak(device: torch.device, dtype: torch.dtype, channels: int, side: int, repeats: int) -> float:
    """TFLOP/s of a 3x3, channels -> channels convolution on a batch of 8 channels-last maps of side x side."""
    x = torch.randn(8, channels, side, side, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(channels, channels, 3, 3, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    flops = 2 * 8 * channels * channels * 9 * side * side
    return flops / _timed(lambda: F.conv2d(x, w, padding=1), device, repeats) / 1e12


def precision_cost(model: Path, images: Path, device: torch.device) -> PrecisionCost:
    """PSNR (Y, border of `scale` cropped) against the targets of the automatic precision's outputs and fp32's."""
    fp32 = Enhancer.from_dir(model, device=device.type, precision="fp32")
    auto = Enhancer.from_dir(model, device=device.type)
    task = task_from_card(fp32.card.task_params)
    scores: dict[str, list[float]] = {"fp32": [], "auto": []}
    for image in load_test_folder(images, task, seed=0):
        for name, enhancer in (("fp32", fp32), ("auto", auto)):
            out = enhancer.enhance_array(image.input, mask=image.mask)
            out8 = np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
            scores[name].append(psnr_ssim(out8, image.target, space="y", crop=fp32.scale)[0])
    return PrecisionCost(
        model=str(model),
        images=len(scores["fp32"]),
        psnr_fp32=statistics.fmean(scores["fp32"]),
        psnr_auto=statistics.fmean(scores["auto"]),
        auto_dtype=dtype_name(auto.dtype),
    )


def measure(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    cards = {label: card_for(config, args.work) for label, config in CONFIG_NETWORKS.items()}
    cards["sr x4 (rrdb, RealESRGAN_x4plus layout)"] = RRDB_X4
    dtypes = {"fp32": torch.float32} | ({"bf16": torch.bfloat16} if device.type == "cuda" else {})
    peaks = [
        Peak(f"matmul {args.matmul}", name, matmul_peak(device, dt, args.matmul, args.repeats))
        for name, dt in dtypes.items()
    ]
    conv: dict[tuple[int, str], float] = {}
    for channels in sorted({width(card) for card in cards.values()}):
        for name, dt in dtypes.items():
            conv[channels, name] = conv_peak(device, dt, channels, args.conv_side, args.repeats)
            peaks.append(Peak(f"conv3x3 {channels}ch", name, conv[channels, name]))
    flops: dict[str, float] = {}
    variants: list[Variant] = []
    for label, card in cards.items():
        torch.manual_seed(0)
        net = card.build_network()
        flops[label] = flops_per_pixel(net, card)
        # on the CPU `auto` is fp32 and compile is not offered: one row
        settings = [("fp32", False)] + ([("auto", False), ("auto", True)] if device.type == "cuda" else [])
        for precision, compiled in settings:
            enhancer = Enhancer(net, card, device, precision=precision, compile_net=compiled)
            _, megapixels, call = _enhance_call(enhancer, args.side)
            seconds = _timed(call, device, args.repeats)
            plan = enhancer.tile_plan(args.side, args.side)
            dtype = dtype_name(enhancer.dtype)
            tflops = flops[label] * megapixels * 1e6 / seconds / 1e12
            peak = conv.get((width(card), dtype))
            variants.append(
                Variant(
                    label,
                    dtype,
                    enhancer.run.note,
                    plan.tile,
                    plan.per_pass,
                    megapixels / seconds,
                    tflops,
                    tflops / peak if peak else None,
                )
            )
            print(
                f"{label} {dtype} {enhancer.run.note}: {megapixels / seconds:.3f} MP/s, {tflops:.3f} TFLOP/s",
                flush=True,
            )
        del net
    costs = []
    for model in args.models:
        if args.images.is_dir() and (model / "card.json").is_file():
            costs.append(precision_cost(model, args.images, device))
    return {
        "peaks": [asdict(p) for p in peaks],
        "flops_per_input_pixel": flops,
        "variants": [asdict(v) for v in variants],
        "precision_cost": [asdict(c) for c in costs],
        "precision_cost_skipped": None if costs else f"no trained model in {args.models} or no folder {args.images}",
    }


def report(data: dict[str, Any], side: int) -> str:
    lines = ["| peak | dtype | TFLOP/s |", "|---|---|---|"]
    lines += [f"| {p['what']} | {p['dtype']} | {p['tflops']:.2f} |" for p in data["peaks"]]
    lines += [
        "",
        f"Enhancer on a {side} x {side} input (megapixels of input per second; share of the 3x3 convolution peak "
        "at the network's width in the same dtype):",
        "",
        "| network | GFLOP per input megapixel | dtype | compile | tile (per pass) | MP/s | TFLOP/s "
        "| share of conv peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in data["variants"]:
        share = f"{v['share_of_conv_peak']:.1%}" if v["share_of_conv_peak"] is not None else "-"
        tile = "whole image" if v["tile"] == 0 else f"{v['tile']} ({v['tiles_per_pass']})"
        lines.append(
            f"| {v['network']} | {data['flops_per_input_pixel'][v['network']] / 1e3:.0f} | {v['precision']} "
            f"| {v['compiled']} | {tile} | {v['megapixels_per_s']:.3f} | {v['tflops']:.3f} | {share} |"
        )
    if data["precision_cost"]:
        lines += ["", "| model | images | PSNR fp32 | PSNR auto | dtype | difference |", "|---|---|---|---|---|---|"]
        lines += [
            f"| {c['model']} | {c['images']} | {c['psnr_fp32']:.3f} | {c['psnr_auto']:.3f} | {c['auto_dtype']} "
            f"| {c['psnr_auto'] - c['psnr_fp32']:+.3f} |"
            for c in data["precision_cost"]
        ]
    else:
        lines += ["", f"Precision cost not measured: {data['precision_cost_skipped']}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Roofline of the Enhancer: counted FLOPs per input pixel, achieved TFLOP/s and the device's "
        "measured matmul and convolution peaks, fp32 against the automatic precision (and torch.compile on CUDA).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu")
    parser.add_argument("--side", type=int, default=1024, help="Enhancer input side in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per figure (median)")
    parser.add_argument("--matmul", type=int, default=None, help="matrix side for the peak (8192 CUDA, 1024 CPU)")
    parser.add_argument("--conv-side", type=int, default=None, help="feature map side for the conv peak (256/64)")
    parser.add_argument("--models", type=Path, nargs="*", default=[REPO / "models" / "generator"])
    parser.add_argument(
        "--images",
        type=Path,
        default=next((f for f in IMAGE_FOLDERS if f.is_dir()), IMAGE_FOLDERS[0]),
        help="photos for the precision cost (Set14, else the default run's test split)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=RESULTS / "work" / "roofline")
    args = parser.parse_args(argv)
    disable_telemetry()
    device = pick_device(args.device)
    args.matmul = args.matmul or (8192 if device.type == "cuda" else 1024)
    args.conv_side = args.conv_side or (256 if device.type == "cuda" else 64)
    info = machine()
    data = measure(args, device)
    info["device"] = gpu_line(device.type) if device.type == "cuda" else f"CPU ({info['cpu']})"
    body = report(data, args.side)
    print(body)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "roofline.json").write_text(json.dumps({"machine": info, **data}, indent=2) + "\n")
    (args.out / "roofline.md").write_text(f"# Enhancer roofline\n\n{machine_line(info)}; {info['device']}.\n\n{body}\n")
    print(f"wrote {args.out / 'roofline.md'} and roofline.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
