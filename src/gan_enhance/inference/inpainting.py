"""Inpainting inference: the hole mask travels as a fourth channel through the tiles, and pixels outside the
holes come back as given."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from gan_enhance.inference.image import ImageEnhancer
from gan_enhance.kinds import InputsName


class InpaintingEnhancer(ImageEnhancer):
    """An image and a hole mask (nonzero = fill in) in, the image with its holes filled out."""

    inputs: ClassVar[InputsName] = "image+mask"
    takes_mask: ClassVar[bool] = True
    apis: ClassVar[tuple[str, ...]] = ("/enhance",)
    batch: ClassVar[tuple[np.dtype, tuple[int, ...]]] = (np.dtype(np.uint8), (-1, -1, -1, 4))

    def _finish(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        image, mask = x[:, :3].float().cpu(), x[:, 3:4].float().cpu()
        return image * (1 - mask) + out * mask

    def _with_mask(self, x: torch.Tensor, mask: np.ndarray | None, shape: tuple[int, ...]) -> torch.Tensor:
        """Append the mask channel: `mask` is H x W, nonzero (bool True, or > 0.5 for floats) where to fill in."""
        if mask is None:
            raise ValueError(
                "this inpainting model needs a mask: an H x W array (or grayscale image), nonzero where to fill in"
            )
        mask = np.asarray(mask)
        if mask.shape != tuple(shape):
            raise ValueError(f"the mask is {mask.shape[:2]} but the image is {tuple(shape)}; give them equal sizes")
        hole = mask > 0.5 if mask.dtype.kind == "f" else mask != 0
        return torch.cat([x, torch.from_numpy(hole.astype(np.float32))[None, None]], dim=1)

    def enhance_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        raise ValueError("an inpainting model needs a mask per image; call enhance_array(image, mask) for each")

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """N x H x W x 4 uint8 (RGB + hole mask, nonzero = fill in) -> N x H x W x 3 uint8."""
        return np.stack([self.enhance_array(np.ascontiguousarray(x[..., :3]), mask=x[..., 3]) for x in batch])

    def warm_up(self) -> None:
        self.enhance_array(np.zeros((16, 16, 3), np.uint8), mask=np.zeros((16, 16), bool))

    @classmethod
    def input_example(cls, side: int = 16) -> np.ndarray:
        """The ramp image with a square hole in the mask channel."""
        mask = np.zeros((1, side, side, 1), np.uint8)
        mask[:, side // 4 : side // 2, side // 4 : side // 2] = 255
        return np.concatenate([super().input_example(side), mask], axis=3)
