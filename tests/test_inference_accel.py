"""The Enhancer's device choices (gan_enhance.inference.accel), tested on the CPU: the compute dtype per device,
the tile plan from a memory figure, tiles stacked into one forward pass, bf16 against fp32, and the fallback when
torch.compile fails. The figures on a GPU come from benchmarks/roofline.py."""

from __future__ import annotations

import pytest
import torch

from gan_enhance.inference import Enhancer
from gan_enhance.inference.accel import (
    MAX_TILES_PER_PASS,
    MEMORY_SHARE,
    TILE_STEP,
    TilePlan,
    pick_dtype,
    plan_tiles,
)
from gan_enhance.models.artifact import ModelCard


def _card(scale: int = 2) -> ModelCard:
    return ModelCard(
        arch="srvgg",
        arch_kwargs={"num_feat": 8, "num_conv": 3},
        task="sr",
        scale=scale,
        task_params={"name": "sr", "scale": scale},
    )


def _net(card: ModelCard) -> torch.nn.Module:
    torch.manual_seed(0)
    net = card.build_network()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.eval()


def test_auto_precision_is_fp32_on_the_cpu_and_bf16_or_fp16_on_cuda(monkeypatch: pytest.MonkeyPatch):
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="fp16 has no fast CPU kernels; use precision fp32"):
        pick_dtype(torch.device("cpu"), "fp16")
    with pytest.raises(ValueError, match="unknown precision 'half'; use one of auto, fp32, bf16, fp16"):
        pick_dtype(torch.device("cpu"), "half")
    for supported, expected in ((True, torch.bfloat16), (False, torch.float16)):  # Ampere and later vs Volta/Turing
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert pick_dtype(torch.device("cuda"), "auto") == expected
    assert pick_dtype(torch.device("cuda"), "fp32") == torch.float32


def test_the_tile_plan_fits_half_the_free_memory():
    mib = 2**20
    # 1000 bytes per input pixel, 2 GB free: the budget is 1e9 bytes, one million pixels
    assert plan_tiles(1000, 1000, 16, 1000, 2e9) == TilePlan(0, 1)  # the whole image fits
    plan = plan_tiles(1024, 1024, 16, 1000, 2e9)
    assert plan.tile == 960 and plan.tile % TILE_STEP == 0  # isqrt(1e6) = 1000, less the padding, down to 64s
    assert (plan.tile + 32) ** 2 * 1000 <= 2e9 * MEMORY_SHARE < (plan.tile + TILE_STEP + 32) ** 2 * 1000
    assert plan.per_pass == 1
    # a given tile is kept, and as many padded tiles as fit share a pass
    assert plan_tiles(4096, 4096, 16, 1000, 2e9, tile=256) == TilePlan(256, int(1e9 // (288**2 * 1000)))
    assert plan_tiles(4096, 4096, 16, 10, 64 * 1024 * mib, tile=256).per_pass == MAX_TILES_PER_PASS
    assert plan_tiles(4096, 4096, 16, 1e6, 1e9, tile=256).per_pass == 1  # nothing fits: still one at a time
    assert plan_tiles(4096, 4096, 16, 1e6, 1e9) == TilePlan(TILE_STEP, 1)  # the smallest automatic tile
    assert plan_tiles(200, 300, 16, 1000, 2e9, tile=512) == TilePlan(512, 1)  # the image is one tile
    assert plan_tiles(5000, 5000, 16, 1000, 2e9, tile=0) == TilePlan(0, 1)  # 0 asks for the whole image
    with pytest.raises(ValueError, match="must be positive"):
        plan_tiles(64, 64, 16, 0, 2e9)


def test_the_cpu_plan_is_the_fp32_paths_256_tiles_one_per_pass():
    card = _card()
    enhancer = Enhancer(_net(card), card)
    assert enhancer.dtype == torch.float32 and enhancer.run.note == "eager"
    assert enhancer.tile_plan(1024, 1024) == TilePlan(256, 1)
    assert Enhancer(_net(card), card, tile=0).tile_plan(1024, 1024) == TilePlan(0, 1)


@pytest.mark.parametrize("per_pass", [2, 5])
def test_tiles_stacked_into_one_pass_equal_one_tile_at_a_time(per_pass: int):
    card = _card(scale=2)
    net = _net(card)
    x = torch.rand(2, 3, 70, 53)  # edge tiles have their own shapes: several groups, some chunks not full
    one = Enhancer(net, card, tile=24, tile_pad=8).enhance_tensor(x)
    stacked_enhancer = Enhancer(net, card, tile=24, tile_pad=8, tiles_per_pass=per_pass)
    assert stacked_enhancer.tile_plan(70, 53) == TilePlan(24, per_pass)
    stacked = stacked_enhancer.enhance_tensor(x)
    assert torch.allclose(stacked, one, atol=1e-5)
    assert torch.allclose(one, Enhancer(net, card, tile=0).enhance_tensor(x), atol=1e-5)
    with pytest.raises(ValueError, match="tiles_per_pass must be at least 1"):
        Enhancer(net, card, tiles_per_pass=0)


def test_bf16_stays_close_to_fp32_and_leaves_the_callers_network_in_fp32():
    card = _card(scale=2)
    net = _net(card)
    x = torch.rand(1, 3, 40, 40)
    reference = Enhancer(net, card, tile=0).enhance_tensor(x)
    half = Enhancer(net, card, tile=0, precision="bf16")
    out = half.enhance_tensor(x)
    assert half.dtype == torch.bfloat16 and out.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in net.parameters())  # the Enhancer computes in a copy
    mse = torch.mean((out - reference) ** 2).item()
    assert 10 * torch.log10(torch.tensor(1.0 / mse)).item() > 35  # bf16 keeps 8 bits of mantissa: ~40 dB here


def test_a_failing_compile_falls_back_to_eager_with_a_warning(monkeypatch: pytest.MonkeyPatch):
    def no_compiler(net: torch.nn.Module):
        def compiled(x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("Compiler: cc is not found")  # what inductor raises on a machine without a C compiler

        return compiled

    monkeypatch.setattr(torch, "compile", no_compiler)
    card = _card()
    net = _net(card)
    x = torch.rand(1, 3, 20, 20)
    enhancer = Enhancer(net, card, compile_net=True)
    assert enhancer.run.note == "compiled"
    with pytest.warns(UserWarning, match=r"torch.compile failed \(RuntimeError: Compiler: cc is not found\)"):
        out = enhancer.enhance_tensor(x)
    assert torch.equal(out, Enhancer(net, card).enhance_tensor(x))
    assert enhancer.run.note == "eager (torch.compile failed: RuntimeError)"
    assert torch.equal(enhancer.enhance_tensor(x), out)  # and stays eager


def test_on_cuda_the_plan_comes_from_free_memory_and_counts_every_image_of_the_batch(monkeypatch: pytest.MonkeyPatch):
    from gan_enhance.inference import image

    card = _card()
    enhancer = Enhancer(_net(card), card)
    enhancer.device = torch.device("cuda")  # the plan's inputs are faked below; no tensor goes to a GPU
    probes: list[tuple[int, ...]] = []
    monkeypatch.setattr(image, "free_memory", lambda device: 2e9)
    monkeypatch.setattr(image, "memory_per_pixel", lambda forward, probe: probes.append(tuple(probe.shape)) or 1000)
    monkeypatch.setattr(torch, "zeros", lambda *shape, device=None: torch.empty(*shape))  # the probe stays on the CPU
    assert enhancer.tile_plan(1000, 1000) == TilePlan(0, 1)  # 1e9 bytes: one million pixels fit
    assert enhancer.tile_plan(1000, 1000, images=2) == plan_tiles(1000, 1000, 16, 2000, 2e9) == TilePlan(640, 1)
    assert probes == [(1, 3, 128, 128)]  # measured once, then kept
    enhancer.tile = 256
    assert enhancer.tile_plan(4096, 4096) == TilePlan(256, 12)  # a given tile: 1e9 // (288^2 x 1000) padded tiles
    enhancer.tiles_per_pass = 3
    assert enhancer.tile_plan(4096, 4096) == TilePlan(256, 3)  # the caller's choice wins
