"""The Enhancer: the one inference path (evaluation, CLI, MLflow model, BentoML service).

Large inputs are cut into tiles; each tile is run with `tile_pad` pixels of surrounding context and
only its core is kept, so the result equals the untiled one wherever the network's receptive field
fits in the padding (no seams), and memory is bounded by the tile size.

What a model takes is in its card (`inputs`): an image (super-resolution, denoising, translation), an image and
a hole mask (inpainting: the mask travels as a fourth channel through the tiles, and pixels outside the holes
are returned as given), or nothing but a seed (unconditional generation: `sample`).
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

    @classmethod
    def from_registry(
        cls,
        name: str,
        alias: str = "champion",
        tracking_uri: str | None = None,
        device: str = "auto",
        tile: int = 256,
        tile_pad: int = 16,
    ) -> Enhancer:
        """Load the version of registered model `name` that holds `alias`, from an MLflow server or SQLite store
        (tracking_uri None: $MLFLOW_TRACKING_URI, else ./mlflow.db). Fails naming the model when no version holds
        the alias, and naming the version when its artifacts are broken."""
        from gan_enhance.lifecycle.registry import client_for, fetch_generator, require_alias

        client = client_for(tracking_uri)
        version = require_alias(client, name, alias)
        with fetch_generator(client, name, version.version) as folder:
            return cls.from_dir(folder, device=device, tile=tile, tile_pad=tile_pad)

    @property
    def takes_mask(self) -> bool:
        return self.card.inputs == "image+mask"

    def _require(self, inputs: str, use: str) -> None:
        if self.card.inputs != inputs:
            raise ValueError(
                f"this is a '{self.card.task}' model, which takes {self.card.inputs}; {use} needs one that "
                f"takes {inputs}" + (" (use Enhancer.sample(n, seed))" if self.card.inputs == "latent" else "")
            )

    @torch.inference_mode()
    def enhance_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """N x C x H x W float in [0, 1] scale -> N x 3 x sH x sW float (not clamped). C is the card's in_channels:
        3, or 4 for inpainting (RGB + mask, 1 = hole; outside the holes the input comes back unchanged)."""
        if self.card.inputs == "latent":
            self._require("image", "enhance_tensor")
        if x.ndim != 4 or x.shape[1] != self.card.in_channels:
            raise ValueError(f"expected N x {self.card.in_channels} x H x W, got {tuple(x.shape)}")
        x = x.to(self.device, torch.float32)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        height, width = x.shape[-2:]
        if not self.tile or (height <= self.tile and width <= self.tile):
            out = self.net(x).float().cpu()
        else:
            out = self._tiled(x)
        if self.takes_mask:
            image, mask = x[:, :3].float().cpu(), x[:, 3:4].float().cpu()
            out = image * (1 - mask) + out * mask
        return out

    def _tiled(self, x: torch.Tensor) -> torch.Tensor:
        s, tile, pad = self.scale, self.tile, self.tile_pad
        n, _, height, width = x.shape
        out = torch.empty(n, 3, height * s, width * s, dtype=torch.float32)
        for top in range(0, height, tile):
            for left in range(0, width, tile):
                bottom, right = min(top + tile, height), min(left + tile, width)
                y0, x0 = max(top - pad, 0), max(left - pad, 0)
                y1, x1 = min(bottom + pad, height), min(right + pad, width)
                result = self.net(x[:, :, y0:y1, x0:x1]).float().cpu()
                core = result[:, :, (top - y0) * s : (bottom - y0) * s, (left - x0) * s : (right - x0) * s]
                out[:, :, top * s : bottom * s, left * s : right * s] = core
        return out

    def enhance_array(self, rgb: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """H x W x 3 array -> enhanced array of the same dtype (uint8, uint16, or float in [0, 1]).
        Inpainting models need `mask`: H x W, nonzero (bool True, or > 0.5 for floats) where to fill in."""
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 RGB array, got shape {rgb.shape}")
        peak = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(rgb.dtype)
        x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
        if peak:
            x = x / peak
        if self.takes_mask or mask is not None:
            x = torch.cat([x, self._mask_channel(mask, rgb.shape[:2])], dim=1)
        y = self.enhance_tensor(x)[0].permute(1, 2, 0).numpy()
        if peak is None:
            return y.astype(rgb.dtype, copy=False)
        y *= peak  # in place: a full-size x4 output is large, temporaries would multiply the peak memory
        np.round(y, out=y)
        np.clip(y, 0, peak, out=y)
        return y.astype(rgb.dtype)

    def _mask_channel(self, mask: np.ndarray | None, shape: tuple[int, ...]) -> torch.Tensor:
        if not self.takes_mask:
            self._require("image+mask", "a mask")
        if mask is None:
            raise ValueError(
                "this inpainting model needs a mask: an H x W array (or grayscale image), nonzero where to fill in"
            )
        mask = np.asarray(mask)
        if mask.shape != tuple(shape):
            raise ValueError(f"the mask is {mask.shape[:2]} but the image is {tuple(shape)}; give them equal sizes")
        hole = mask > 0.5 if mask.dtype.kind == "f" else mask != 0
        return torch.from_numpy(hole.astype(np.float32))[None, None]

    def enhance_image(self, image: Image.Image, mask: Image.Image | None = None) -> Image.Image:
        """PIL image -> enhanced PIL image. Alpha is kept (resized with bicubic, not enhanced);
        16-bit grayscale comes back as 16-bit grayscale. Inpainting models need `mask`, an image of the same
        size whose nonzero (grayscale > 127) pixels are filled in."""
        from gan_enhance.data.image_io import to_rgb_array

        rgb, alpha = to_rgb_array(image)
        hole = None if mask is None else np.asarray(mask.convert("L")) > 127
        out = self.enhance_array(rgb, mask=hole)
        if out.dtype == np.uint16:  # Pillow's only 16-bit modes are grayscale
            return Image.fromarray(np.round(out.mean(axis=2)).astype(np.uint16))
        result = Image.fromarray(out, "RGB")
        if alpha is not None:
            a = Image.fromarray(alpha).resize(result.size, Image.BICUBIC)
            result.putalpha(a)
        return result

    @torch.inference_mode()
    def sample(self, n: int, seed: int = 0, batch: int = 64) -> np.ndarray:
        """n images from an unconditional generator: uint8 n x S x S x 3. Image i comes from the latent that
        (seed, i) draws on the CPU, so it is the same for any n and on any device."""
        self._require("latent", "sample")
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        dim = self.card.latent_dim
        latent = torch.from_numpy(
            np.stack([np.random.default_rng([seed, i]).standard_normal(dim, dtype=np.float32) for i in range(n)])
        )
        chunks = [self.net(latent[i : i + batch].to(self.device)).float().cpu() for i in range(0, n, batch)]
        images = torch.cat(chunks).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        return np.round(images * 255.0).astype(np.uint8)
