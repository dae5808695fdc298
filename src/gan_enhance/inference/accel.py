"""How the Enhancer runs its network on a device: the compute dtype, the tile side and how many tiles share one
forward pass (from the device's free memory), and torch.compile with a fallback to eager.

On the CPU every choice is the fp32 path's (tiles of 256, one tile per pass, no compile), so CPU results do not
change; on CUDA the defaults are bf16 (fp16 on cards without bf16), the whole image when it fits in half the free
memory, else the largest tile that does, and as many tiles per pass as fit.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_TILE = 256  # the CPU default: activations stay in the caches' reach, memory bounded on small machines
TILE_STEP = 64  # automatic tile sides are multiples of this (convolution kernels prefer round sizes)
MEMORY_SHARE = 0.5  # of the free device memory one forward pass may take: the rest is the allocator's slack
MAX_TILES_PER_PASS = 16  # beyond this the pass is large enough to fill the card; more only delays the first tile
PROBE_SIDE = 128  # input side of the forward pass that measures a network's memory per pixel


def pick_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The dtype the network computes in: `auto` is bf16 on CUDA cards that have it, else fp16 there, and fp32 on
    the CPU and MPS. fp16 on the CPU is refused (no fast kernels); bf16 there is allowed but slow without AMX."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 has no fast CPU kernels; use precision fp32 (or bf16) on the CPU")
    return DTYPES[precision]


def dtype_name(dtype: torch.dtype) -> str:
    """The precision's name for a compute dtype (fp32, bf16, fp16), as the settings spell it."""
    return next(name for name, known in DTYPES.items() if known == dtype)


@dataclass(frozen=True)
class TilePlan:
    """How an image is cut: `tile` side in input pixels (0: the whole image in one pass), `per_pass` tiles of one
    shape stacked into each forward pass."""

    tile: int
    per_pass: int


def plan_tiles(
    height: int, width: int, pad: int, bytes_per_pixel: float, free_bytes: float, tile: int | None = None
) -> TilePlan:
    """The tiling that fits in MEMORY_SHARE of `free_bytes`, for a network that takes `bytes_per_pixel` of device
    memory per input pixel. `tile` None picks the side: the whole image when it fits, else the largest multiple of
    TILE_STEP whose padded tile fits (at least TILE_STEP); a given `tile` is kept. `per_pass` is how many padded
    tiles fit at once (1 to MAX_TILES_PER_PASS)."""
    if bytes_per_pixel <= 0 or free_bytes <= 0:
        raise ValueError(f"bytes_per_pixel ({bytes_per_pixel}) and free_bytes ({free_bytes}) must be positive")
    budget = free_bytes * MEMORY_SHARE
    if tile is None:
        if height * width * bytes_per_pixel <= budget:
            return TilePlan(0, 1)
        side = math.isqrt(int(budget / bytes_per_pixel)) - 2 * pad
        tile = max(TILE_STEP, side // TILE_STEP * TILE_STEP)
    if tile == 0 or (height <= tile and width <= tile):
        return TilePlan(tile, 1)
    padded = (tile + 2 * pad) ** 2
    return TilePlan(tile, int(min(MAX_TILES_PER_PASS, max(1, budget // (padded * bytes_per_pixel)))))


def free_memory(device: torch.device) -> float:
    """Bytes a forward pass can still take on a CUDA device: the driver's free memory plus what torch's caching
    allocator holds unused."""
    free, _ = torch.cuda.mem_get_info(device)
    return float(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def memory_per_pixel(forward: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor) -> float:
    """Peak device memory of one forward pass per input pixel, measured on `example` (a CUDA tensor)."""
    device = example.device
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    forward(example)
    torch.cuda.synchronize(device)
    pixels = example.shape[0] * example.shape[-2] * example.shape[-1]
    return (torch.cuda.max_memory_allocated(device) - base) / pixels


class CompiledOrEager:
    """The network behind torch.compile when asked and available; the first call that fails to compile (no
    compiler, no Triton, an unsupported op) warns why and falls back to the eager network for good."""

    def __init__(self, net: nn.Module, compile_net: bool) -> None:
        self.net = net
        self.compiled: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.note = "eager"
        if compile_net:
            if hasattr(torch, "compile"):
                self.compiled = torch.compile(net)
                self.note = "compiled"
            else:
                self.note = "eager (this torch has no torch.compile)"
                warnings.warn("torch.compile is unavailable in this torch; running the network eagerly", stacklevel=3)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is None:
            return self.net(x)
        try:
            return self.compiled(x)
        except Exception as exc:  # compile errors surface on the first call, as any of several exception types
            self.compiled = None
            self.note = f"eager (torch.compile failed: {type(exc).__name__})"
            warnings.warn(
                f"torch.compile failed ({type(exc).__name__}: {exc}); running the network eagerly", stacklevel=2
            )
            return self.net(x)
