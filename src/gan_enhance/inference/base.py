"""The Enhancer base: a generator plus its card, the loader that picks the class for the card, and what every
inference class declares (its pyfunc batch, its serving APIs)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from gan_enhance.device import pick_device
from gan_enhance.inference.accel import CompiledOrEager, Precision, pick_dtype
from gan_enhance.kinds import InputsName, inference_ref, load
from gan_enhance.models.artifact import ModelCard, load_generator

UINT8_IMAGES = (np.dtype(np.uint8), (-1, -1, -1, 3))  # what every pyfunc model returns: N x H x W x 3 uint8


class Enhancer:
    """A generator and its card. Constructing `Enhancer` (or `from_dir`) gives the subclass that fits the card;
    methods the model does not support fail with a ValueError that names the one to use."""

    inputs: ClassVar[InputsName]
    takes_images: ClassVar[bool] = False  # enhance_* work (image in, image out)
    takes_mask: ClassVar[bool] = False  # ...and need a hole mask with each image
    apis: ClassVar[tuple[str, ...]]  # the service routes that serve this kind of model
    batch: ClassVar[tuple[np.dtype, tuple[int, ...]]]  # the pyfunc input: dtype and shape (-1: any size)

    def __new__(cls, net: nn.Module, card: ModelCard, *args: Any, **kwargs: Any) -> Enhancer:
        chosen = cls.class_for(card) if cls is Enhancer else cls
        return super().__new__(chosen)

    def __init__(
        self,
        net: nn.Module,
        card: ModelCard,
        device: torch.device | str = "cpu",
        tile: int | None = None,
        tile_pad: int = 16,
        precision: Precision = "auto",
        compile_net: bool = False,
        tiles_per_pass: int | None = None,
    ) -> None:
        """`tile`: side in input pixels, 0 for the whole image, None for the device's choice (256 on the CPU, from
        free memory on CUDA); `precision`: the compute dtype (`auto`: bf16 on CUDA, fp32 elsewhere; the network is
        copied, not converted, when it differs); `compile_net`: torch.compile, falling back to eager when it fails;
        `tiles_per_pass`: tiles stacked into one forward pass (None: 1 on the CPU, as many as fit on CUDA)."""
        if tile and tile_pad * 2 >= tile:
            raise ValueError(f"tile_pad ({tile_pad}) must be smaller than half the tile ({tile})")
        if tiles_per_pass is not None and tiles_per_pass < 1:
            raise ValueError(f"tiles_per_pass must be at least 1, got {tiles_per_pass}")
        if card.inputs != self.inputs:
            raise ValueError(f"{type(self).__name__} runs models that take {self.inputs}, not {card.inputs}")
        self.device = torch.device(device)
        self.dtype = pick_dtype(self.device, precision)
        self.net = net.to(self.device).eval()
        self.card = card
        self.scale = card.scale
        self.tile = tile
        self.tile_pad = tile_pad
        self.tiles_per_pass = tiles_per_pass
        compute = self.net if self.dtype == torch.float32 else copy.deepcopy(self.net).to(self.dtype)
        if self.device.type == "cuda":
            compute = compute.to(memory_format=torch.channels_last)
        self.run = CompiledOrEager(compute, compile_net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network on a batch already on the device, computed in the Enhancer's dtype (channels-last images on
        CUDA); the output in fp32, still on the device."""
        x = x.to(self.dtype)
        if self.device.type == "cuda" and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.run(x).float()

    @staticmethod
    def class_for(card: ModelCard) -> type[Enhancer]:
        """The inference class for the card's `inputs`."""
        return load(inference_ref(card.inputs))

    @classmethod
    def from_dir(
        cls,
        folder: Path | str,
        device: str = "auto",
        tile: int | None = None,
        tile_pad: int = 16,
        precision: Precision = "auto",
        compile_net: bool = False,
    ) -> Enhancer:
        """Load a model folder (generator.safetensors + card.json) into the class that fits its card; the options
        are the constructor's."""
        target = pick_device(device)
        net, card = load_generator(Path(folder), target)
        return cls(net, card, target, tile=tile, tile_pad=tile_pad, precision=precision, compile_net=compile_net)

    def refuse(self, use: str, wanted: InputsName) -> ValueError:
        """The error for `use` on a model that does not take `wanted`."""
        hint = " (use Enhancer.sample(n, seed))" if self.inputs == "latent" else ""
        return ValueError(
            f"this is a '{self.card.task}' model, which takes {self.inputs}; {use} needs one that takes {wanted}{hint}"
        )

    # ---- what a subclass offers (the rest refuse) ---------------------------------------------------------------
    def enhance_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """N x C x H x W float in [0, 1] scale -> N x 3 x sH x sW float (not clamped)."""
        raise self.refuse("enhance_tensor", "image")

    def enhance_array(self, rgb: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """H x W x 3 array -> enhanced array of the same dtype (uint8, uint16, or float in [0, 1])."""
        raise self.refuse("enhance_array", "image")

    def enhance_image(self, image: Image.Image, mask: Image.Image | None = None) -> Image.Image:
        """PIL image -> enhanced PIL image."""
        raise self.refuse("enhance_image", "image")

    def enhance_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """uint8 H x W x 3 images (sizes may differ) -> enhanced uint8 images, in order."""
        raise self.refuse("enhance_batch", "image")

    def sample(self, n: int, seed: int = 0, batch: int = 64) -> np.ndarray:
        """n images from an unconditional generator: uint8 n x S x S x 3."""
        raise self.refuse("sample", "latent")

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """The MLflow pyfunc model's predict: a batch as `batch` declares -> N x H x W x 3 uint8."""
        raise NotImplementedError

    def warm_up(self) -> None:
        """One small forward pass (the service runs it before it reports ready)."""
        raise NotImplementedError

    @classmethod
    def input_example(cls, side: int = 16) -> np.ndarray:
        """A pyfunc batch of one, stored with a registered version."""
        raise NotImplementedError
