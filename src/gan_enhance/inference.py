"""The Enhancer: the one inference path (evaluation, CLI, MLflow model, BentoML service).

Large inputs are cut into tiles; each tile is run with `tile_pad` pixels of surrounding context and
only its core is kept, so the result equals the untiled one wherever the network's receptive field
fits in the padding (no seams), and memory is bounded by the tile size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from gan_enhance.device import pick_device
from gan_enhance.models.artifact import ModelCard, load_generator


class Enhancer:
    """A generator plus its card, ready to enhance arrays, tensors and PIL images."""

    def __init__(
        self,
        net: nn.Module,
        card: ModelCard,
        device: torch.device | str = "cpu",
        tile: int = 256,
        tile_pad: int = 16,
    ) -> None:
        if tile and tile_pad * 2 >= tile:
            raise ValueError(f"tile_pad ({tile_pad}) must be smaller than half the tile ({tile})")
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.card = card
        self.scale = card.scale
        self.tile = tile
        self.tile_pad = tile_pad
        if self.device.type == "cuda":
            self.net = self.net.to(memory_format=torch.channels_last)

    @classmethod
    def from_dir(cls, folder: Path | str, device: str = "auto", tile: int = 256, tile_pad: int = 16) -> Enhancer:
        """Load a model folder (generator.safetensors + card.json)."""
        target = pick_device(device)
        net, card = load_generator(Path(folder), target)
        return cls(net, card, target, tile=tile, tile_pad=tile_pad)

    @torch.inference_mode()
    def enhance_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W float in [0, 1] scale -> N x 3 x sH x sW float (not clamped)."""
        if x.ndim != 4 or x.shape[1] != self.card.in_channels:
            raise ValueError(f"expected N x {self.card.in_channels} x H x W, got {tuple(x.shape)}")
        x = x.to(self.device, torch.float32)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        height, width = x.shape[-2:]
        if not self.tile or (height <= self.tile and width <= self.tile):
            return self.net(x).float().cpu()
        return self._tiled(x)

    def _tiled(self, x: torch.Tensor) -> torch.Tensor:
        s, tile, pad = self.scale, self.tile, self.tile_pad
        n, c, height, width = x.shape
        out = torch.empty(n, c, height * s, width * s, dtype=torch.float32)
        for top in range(0, height, tile):
            for left in range(0, width, tile):
                bottom, right = min(top + tile, height), min(left + tile, width)
                y0, x0 = max(top - pad, 0), max(left - pad, 0)
                y1, x1 = min(bottom + pad, height), min(right + pad, width)
                result = self.net(x[:, :, y0:y1, x0:x1]).float().cpu()
                core = result[:, :, (top - y0) * s : (bottom - y0) * s, (left - x0) * s : (right - x0) * s]
                out[:, :, top * s : bottom * s, left * s : right * s] = core
        return out

    def enhance_array(self, rgb: np.ndarray) -> np.ndarray:
        """H x W x 3 array -> enhanced array of the same dtype (uint8, uint16, or float in [0, 1])."""
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 RGB array, got shape {rgb.shape}")
        peak = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(rgb.dtype)
        x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
        if peak:
            x = x / peak
        y = self.enhance_tensor(x)[0].permute(1, 2, 0).numpy()
        if peak is None:
            return y.astype(rgb.dtype, copy=False)
        return np.clip(np.round(y * peak), 0, peak).astype(rgb.dtype)

    def enhance_image(self, image: Image.Image) -> Image.Image:
        """PIL image -> enhanced PIL image. Alpha is kept (resized with bicubic, not enhanced);
        16-bit grayscale comes back as 16-bit grayscale."""
        from gan_enhance.data.image_io import to_rgb_array

        rgb, alpha = to_rgb_array(image)
        out = self.enhance_array(rgb)
        if out.dtype == np.uint16:  # Pillow's only 16-bit modes are grayscale
            return Image.fromarray(np.round(out.mean(axis=2)).astype(np.uint16))
        result = Image.fromarray(out, "RGB")
        if alpha is not None:
            a = Image.fromarray(alpha).resize(result.size, Image.BICUBIC)
            result.putalpha(a)
        return result
