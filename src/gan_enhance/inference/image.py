"""Image-to-image inference (super-resolution, denoising, translation): tiles, dtypes, alpha, uint8 batches.

Large inputs are cut into tiles; each tile is run with `tile_pad` pixels of surrounding context and only its
core is kept, so the result equals the untiled one wherever the network's receptive field fits in the padding
(no seams), and memory is bounded by the tile size.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from gan_enhance.inference.accel import CPU_TILE, PROBE_SIDE, TilePlan, free_memory, memory_per_pixel, plan_tiles
from gan_enhance.inference.base import UINT8_IMAGES, Enhancer
from gan_enhance.kinds import InputsName

PEAKS = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


class ImageEnhancer(Enhancer):
    """An image in, an enhanced image out (s times larger for super-resolution)."""

    inputs: ClassVar[InputsName] = "image"
    takes_images: ClassVar[bool] = True
    apis: ClassVar[tuple[str, ...]] = ("/enhance", "/enhance_batch")
    batch: ClassVar[tuple[np.dtype, tuple[int, ...]]] = UINT8_IMAGES
    _bytes_per_pixel: float | None = None  # device memory per input pixel, measured on the first CUDA call

    @torch.inference_mode()
    def enhance_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """N x C x H x W float in [0, 1] scale -> N x 3 x sH x sW float (not clamped); C is the card's
        in_channels."""
        if x.ndim != 4 or x.shape[1] != self.card.in_channels:
            raise ValueError(f"expected N x {self.card.in_channels} x H x W, got {tuple(x.shape)}")
        x = x.to(self.device, torch.float32)
        height, width = x.shape[-2:]
        plan = self.tile_plan(height, width, images=x.shape[0])
        if not plan.tile or (height <= plan.tile and width <= plan.tile):
            out = self.forward(x).cpu()
        else:
            out = self._tiled(x, plan)
        return self._finish(x, out)

    def tile_plan(self, height: int, width: int, images: int = 1) -> TilePlan:
        """How a batch of `images` inputs of this size is cut: on the CPU the given tile (None: 256), one per pass;
        on CUDA from the free memory and the network's measured memory per pixel (accel.plan_tiles), every image of
        the batch counted."""
        if self.device.type != "cuda":
            return TilePlan(CPU_TILE if self.tile is None else self.tile, self.tiles_per_pass or 1)
        if self._bytes_per_pixel is None:
            probe = torch.zeros(1, self.card.in_channels, PROBE_SIDE, PROBE_SIDE, device=self.device)
            self._bytes_per_pixel = memory_per_pixel(self.forward, probe)
        per_pixel = self._bytes_per_pixel * images
        plan = plan_tiles(height, width, self.tile_pad, per_pixel, free_memory(self.device), self.tile)
        return TilePlan(plan.tile, self.tiles_per_pass or plan.per_pass)

    def _finish(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The network's output as the model returns it (subclasses put known pixels back)."""
        return out

    def _tiled(self, x: torch.Tensor, plan: TilePlan) -> torch.Tensor:
        s, tile, pad = self.scale, plan.tile, self.tile_pad
        n, _, height, width = x.shape
        # N x 3 x H x W in channels-last memory: the H x W x 3 view that enhance_array converts is then contiguous
        out = torch.empty(n, height * s, width * s, 3, dtype=torch.float32).permute(0, 3, 1, 2)
        shapes: dict[tuple[int, int], list[tuple[int, int, int, int, int, int]]] = {}
        for top in range(0, height, tile):
            for left in range(0, width, tile):
                bottom, right = min(top + tile, height), min(left + tile, width)
                y0, x0 = max(top - pad, 0), max(left - pad, 0)
                y1, x1 = min(bottom + pad, height), min(right + pad, width)
                shapes.setdefault((y1 - y0, x1 - x0), []).append((top, left, bottom, right, y0, x0))
        for (tile_h, tile_w), windows in shapes.items():  # tiles of one padded shape can share a forward pass
            for first in range(0, len(windows), plan.per_pass):
                chunk = windows[first : first + plan.per_pass]
                batch = torch.cat([x[:, :, y0 : y0 + tile_h, x0 : x0 + tile_w] for *_, y0, x0 in chunk])
                result = self.forward(batch).cpu()
                for i, (top, left, bottom, right, y0, x0) in enumerate(chunk):
                    core = result[
                        i * n : (i + 1) * n, :, (top - y0) * s : (bottom - y0) * s, (left - x0) * s : (right - x0) * s
                    ]
                    out[:, :, top * s : bottom * s, left * s : right * s] = core
        return out

    def enhance_array(self, rgb: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """H x W x 3 array -> enhanced array of the same dtype (uint8, uint16, or float in [0, 1])."""
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 RGB array, got shape {rgb.shape}")
        peak = PEAKS.get(rgb.dtype)
        x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
        if peak:
            x = x / peak
        x = self._with_mask(x, mask, rgb.shape[:2])
        y = self.enhance_tensor(x)[0].permute(1, 2, 0).numpy()
        if peak is None:
            return y.astype(rgb.dtype, copy=False)
        y *= peak  # in place: a full-size x4 output is large, temporaries would multiply the peak memory
        np.round(y, out=y)
        np.clip(y, 0, peak, out=y)
        return y.astype(rgb.dtype, order="C")  # H x W x 3 contiguous, as Pillow and the encoders read it

    def _with_mask(self, x: torch.Tensor, mask: np.ndarray | None, shape: tuple[int, ...]) -> torch.Tensor:
        """The network input for image `x` and the caller's `mask` (image models take none)."""
        if mask is not None:
            raise self.refuse("a mask", "image+mask")
        return x

    def enhance_image(self, image: Image.Image, mask: Image.Image | None = None) -> Image.Image:
        """PIL image -> enhanced PIL image. Alpha is kept (resized with bicubic, not enhanced); 16-bit grayscale
        comes back as 16-bit grayscale. Inpainting models need `mask`, an image of the same size whose nonzero
        (grayscale > 127) pixels are filled in."""
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

    def enhance_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """uint8 H x W x 3 images -> enhanced uint8 images, in input order; images of the same size share forward
        passes. The uint8 <-> [0, 1] conversion is enhance_array's, so each output equals `enhance_array(image)`
        up to the batched convolution's rounding."""
        out: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(image.shape, []).append(i)
        for indices in groups.values():
            if len(indices) == 1:
                out[indices[0]] = self.enhance_array(images[indices[0]])
                continue
            stacked = torch.from_numpy(np.stack([images[i] for i in indices]).astype(np.float32) / 255.0)
            result = self.enhance_tensor(stacked.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
            result = np.clip(np.round(result * 255.0), 0, 255).astype(np.uint8)
            for j, i in enumerate(indices):
                out[i] = result[j]
        return [o for o in out if o is not None]

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """N x H x W x 3 uint8 -> N x sH x sW x 3 uint8, image by image."""
        return np.stack([self.enhance_array(np.ascontiguousarray(image)) for image in batch])

    def warm_up(self) -> None:
        self.enhance_array(np.zeros((16, 16, 3), np.uint8))

    @classmethod
    def input_example(cls, side: int = 16) -> np.ndarray:
        """A small uint8 ramp image, batch of one."""
        return np.linspace(0, 255, side * side * 3).reshape(1, side, side, 3).astype(np.uint8)
