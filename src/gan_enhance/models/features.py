"""Frozen feature networks for perceptual and texture losses: VGG19's layout, with ImageNet weights or random ones.

The layout and the state-dict keys are torchvision's `vgg19().features` (`features.N.weight`), so a user's
`vgg19-dcbb9e9d.pth` loads as it is; torchvision itself is never imported (it cannot be, beside the CPU torch these
machines install). Layers are named as in the papers, conv<block>_<index> (ESRGAN's `conv5_4` is `features.34`),
and a layer's features are taken before its ReLU (ESRGAN). With `random` weights (Generic Perceptual Loss, Liu et al.
CVPR 2021: the structure, not the trained weights, carries the loss) the network is drawn from a seed at start,
with the channel widths scaled by `width` (a quarter of VGG19's costs a sixteenth of its multiply-adds).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gan_enhance.errors import GanEnhanceError

# torchvision's cfgs["E"]: channels per conv, "M" a 2x2 max-pool
VGG19_LAYOUT: tuple[int | str, ...] = (
    *(64, 64, "M", 128, 128, "M"),
    *(256, 256, 256, 256, "M", 512, 512, 512, 512, "M"),
    *(512, 512, 512, 512, "M"),
)
VGG19_FILE = "vgg19-dcbb9e9d.pth"  # torchvision's ImageNet weights (the name torch's hub cache gives them)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureWeightsError(GanEnhanceError, FileNotFoundError):
    """The ImageNet VGG19 weights a perceptual loss asks for are not on this machine, or not VGG19's."""


def layer_indices(layout: tuple[int | str, ...] = VGG19_LAYOUT) -> dict[str, int]:
    """Layer name (conv1_1 ...) -> index of that convolution in `features` (torchvision's numbering)."""
    names, block, conv, index = {}, 1, 0, 0
    for item in layout:
        if item == "M":
            block, conv, index = block + 1, 0, index + 1
        else:
            conv += 1
            names[f"conv{block}_{conv}"] = index
            index += 2  # the conv and its ReLU
    return names


def default_vgg19_path() -> Path:
    """Where torch's hub cache keeps torchvision's VGG19 weights ($TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE


class FeatureNet(nn.Module):
    """VGG-layout convolutions up to the deepest requested layer; `forward` returns each requested layer's
    pre-activation features. Frozen: no parameter takes a gradient, and it stays in eval mode."""

    def __init__(self, layers: list[str], width: float = 1.0, layout: tuple[int | str, ...] = VGG19_LAYOUT) -> None:
        super().__init__()
        indices = layer_indices(layout)
        unknown = [name for name in layers if name not in indices]
        if unknown:
            raise ValueError(f"unknown feature layers {unknown}; VGG19 has {', '.join(indices)}")
        self.layers = {name: indices[name] for name in layers}
        last = max(self.layers.values())
        modules: list[nn.Module] = []
        channels = 3
        with torch.random.fork_rng(devices=[]):  # the layers' default init must not move the training's RNG
            for item in layout:
                if len(modules) > last:
                    break
                if item == "M":
                    modules.append(nn.MaxPool2d(2, 2))
                else:
                    out = max(round(int(item) * width), 1)
                    modules += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU(inplace=False)]
                    channels = out
        self.features = nn.Sequential(*modules[: last + 1])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FeatureNet:
        return super().train(False)  # always eval: nothing in it may change with the trainer's mode

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (images - self.mean) / self.std
        wanted = {index: name for name, index in self.layers.items()}
        out: dict[str, torch.Tensor] = {}
        for index, module in enumerate(self.features):
            x = module(x)
            if index in wanted:
                out[wanted[index]] = x
        return out


def random_features(
    layers: list[str], width: float, seed: int, init: Literal["kaiming_normal", "kaiming_uniform", "orthogonal"]
) -> FeatureNet:
    """A VGG19-layout FeatureNet whose weights are drawn from `seed` (the global RNG is left untouched)."""
    net = FeatureNet(layers, width)
    gen = torch.Generator().manual_seed(seed)
    for module in net.features:
        if not isinstance(module, nn.Conv2d):
            continue
        if init == "orthogonal":
            nn.init.orthogonal_(module.weight, gain=nn.init.calculate_gain("relu"), generator=gen)
        elif init == "kaiming_uniform":
            nn.init.kaiming_uniform_(module.weight, nonlinearity="relu", generator=gen)
        else:
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=gen)
        nn.init.zeros_(module.bias)
    return net


def vgg19_features(layers: list[str], path: Path | None) -> tuple[FeatureNet, str]:
    """torchvision's ImageNet VGG19 from `path` (default: torch's hub cache), loaded without unpickling code;
    returns the net and the file's sha256. Fails naming the file and where it goes when it is not there."""
    path = Path(path) if path is not None else default_vgg19_path()
    if not path.is_file():
        raise FeatureWeightsError(
            f"train.perceptual.network=vgg19 needs torchvision's ImageNet VGG19 weights, {VGG19_FILE}, and {path} "
            f"does not exist. Copy the file there (or set train.perceptual.vgg19_path to where it is); nothing is "
            f"downloaded. Without it, use train.perceptual.network=random."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated file or one that needs pickled code
        raise FeatureWeightsError(f"{path} is not a readable VGG19 state dict ({exc})") from exc
    net = FeatureNet(layers)
    own = net.state_dict()
    wanted = {key: state.get(key) for key in own}
    missing = [key for key, value in wanted.items() if value is None]
    wrong = [
        f"{key} {tuple(value.shape)} (VGG19: {tuple(own[key].shape)})"
        for key, value in wanted.items()
        if value is not None and value.shape != own[key].shape
    ]
    if missing or wrong:
        raise FeatureWeightsError(
            f"{path} does not hold torchvision's VGG19 features: "
            + "; ".join(filter(None, [f"missing {missing[:3]}" if missing else "", f"shape of {wrong[:3]}"]))
        )
    net.load_state_dict(wanted)
    return net, hashlib.sha256(path.read_bytes()).hexdigest()


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrices (N x C x C) of N x C x H x W features, normalised by C*H*W (Gatys et al.)."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def resized_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A N x 1 x H x W weight map averaged down (or up) to `like`'s spatial size."""
    if mask.shape[-2:] == like.shape[-2:]:
        return mask
    if mask.shape[-2] >= like.shape[-2]:
        return F.adaptive_avg_pool2d(mask, like.shape[-2:])
    return F.interpolate(mask, size=like.shape[-2:], mode="nearest")
