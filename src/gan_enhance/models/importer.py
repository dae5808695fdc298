"""Published generators into the project's model form: a BasicSR/Real-ESRGAN `.pth` -> safetensors + card.

The file is read without unpickling code (`torch.load(weights_only=True)`); its state dict is `params_ema`, else
`params`, else the file itself (BasicSR's and Real-ESRGAN's conventions). Keys are mapped to the project's network
(`rrdb`: BasicSR's names, and the original ESRGAN repository's; `srvgg`: SRVGGNetCompact's `body.N`), the
architecture's size is read off the shapes (features, blocks, growth channels, convs), the scale is checked against
them, and every tensor must fit the built network. Nothing is written unless all of that holds; the card says the
model was imported (the file, its sha256, the license the user states) and has no training lineage.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

import gan_enhance
from gan_enhance.config import TaskParams
from gan_enhance.errors import GanEnhanceError
from gan_enhance.models.artifact import ModelCard, save_generator
from gan_enhance.models.registry import build
from gan_enhance.models.rrdb import UNSHUFFLE
from gan_enhance.tasks import build_task

Arch = Literal["rrdb", "srvgg"]
STATE_KEYS = ("params_ema", "params")  # BasicSR saves the EMA generator as params_ema
# the original ESRGAN repository (xinntao/ESRGAN) -> BasicSR's names
ESRGAN_RENAMES = (
    (r"^RRDB_trunk\.", "body."),
    (r"\.RDB(\d)\.", r".rdb\1."),
    (r"^trunk_conv\.", "conv_body."),
    (r"^upconv(\d)\.", r"conv_up\1."),
    (r"^HRconv\.", "conv_hr."),
)


class ImportWeightsError(GanEnhanceError, ValueError):
    """A weights file that cannot become a model of the asked architecture; the message names what did not match."""


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The generator's tensors in a BasicSR-style file and where they were (params_ema, params or the top level)."""
    if not path.is_file():
        raise ImportWeightsError(f"{path} does not exist; give the path of a .pth file (nothing is downloaded)")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ImportWeightsError(
            f"{path} needs pickled code to load, which is refused (it could run anything): {str(exc).splitlines()[0]}."
            " Save the state dict alone (torch.save(model.state_dict(), ...)) and import that file"
        ) from exc
    except Exception as exc:  # truncated or not a torch file at all
        raise ImportWeightsError(f"{path} is not a readable torch weights file ({exc}); is it complete?") from exc
    if not isinstance(loaded, dict):
        raise ImportWeightsError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    where = next((key for key in STATE_KEYS if isinstance(loaded.get(key), dict)), "top level")
    state = loaded[where] if where != "top level" else loaded
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ImportWeightsError(f"{path} has no tensors under {where} (looked for {', '.join(STATE_KEYS)})")
    return tensors, where


def _shape(state: dict[str, torch.Tensor], key: str, arch: str) -> tuple[int, ...]:
    if key not in state:
        raise ImportWeightsError(f"no '{key}' in the file: it is not a {arch} state dict (it has {sorted(state)[:4]})")
    return tuple(state[key].shape)


def _rrdb_kwargs(state: dict[str, torch.Tensor], scale: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    state = {_renamed(key): value for key, value in state.items()}
    out_ch, in_ch = _shape(state, "conv_first.weight", "rrdb")[:2]
    channels = _shape(state, "conv_last.weight", "rrdb")[0]
    file_scale = {channels * factor**2: s for s, factor in UNSHUFFLE.items()}.get(in_ch)
    if file_scale != scale:
        raise ImportWeightsError(
            f"scale: --scale {scale} was asked, but conv_first takes {in_ch} channels, which is "
            + (f"an x{file_scale} RRDBNet" if file_scale else "no RRDBNet scale (x4: 3, x2: 12, x1: 48)")
        )
    blocks = {int(m.group(1)) for key in state if (m := re.match(r"body\.(\d+)\.", key))}
    return {
        "num_feat": out_ch,
        "num_block": max(blocks) + 1 if blocks else 0,
        "num_grow_ch": _shape(state, "body.0.rdb1.conv1.weight", "rrdb")[0],
        "in_channels": channels,
    }, state


def _renamed(key: str) -> str:
    for pattern, replacement in ESRGAN_RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def _srvgg_kwargs(state: dict[str, torch.Tensor], scale: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    convs = sorted(int(m.group(1)) for key in state if (m := re.fullmatch(r"body\.(\d+)\.weight", key)))
    convs = [i for i in convs if state[f"body.{i}.weight"].dim() == 4]
    if not convs:
        raise ImportWeightsError("no 'body.N.weight' convolutions in the file: it is not an SRVGGNetCompact state dict")
    first, last = state[f"body.{convs[0]}.weight"], state[f"body.{convs[-1]}.weight"]
    channels = first.shape[1]
    if last.shape[0] != channels * scale**2:
        file_scale = (last.shape[0] / channels) ** 0.5
        raise ImportWeightsError(
            f"scale: --scale {scale} was asked, but the last conv makes {last.shape[0]} channels = "
            f"{channels} x {file_scale:g}^2, an x{file_scale:g} SRVGGNetCompact"
        )
    kwargs = {"num_feat": first.shape[0], "num_conv": len(convs) - 2, "in_channels": channels}
    return {**kwargs, "residual": "nearest"}, state


KWARGS = {"rrdb": _rrdb_kwargs, "srvgg": _srvgg_kwargs}


def fitted_network(arch: Arch, state: dict[str, torch.Tensor], scale: int) -> tuple[nn.Module, dict[str, Any]]:
    """The project's `arch` network sized from the file's shapes, with the file's weights loaded (every tensor
    must be there and fit); returns it and its keyword arguments."""
    if arch not in KWARGS:
        raise ImportWeightsError(f"unknown --arch '{arch}'; choose one of: {', '.join(KWARGS)}")
    kwargs, state = KWARGS[arch](state, scale)
    net = build("generator", arch, scale=scale, **kwargs)
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        f"{key}: file {tuple(state[key].shape)} vs {tuple(value.shape)}"
        for key, value in own.items()
        if key in state and state[key].shape != value.shape
    ]
    if missing or unexpected or wrong:
        problems = [
            f"missing {len(missing)} tensors ({', '.join(missing[:3])})" if missing else "",
            f"{len(unexpected)} tensors {arch} does not have ({', '.join(unexpected[:3])})" if unexpected else "",
            f"shapes differ: {'; '.join(wrong[:3])}" if wrong else "",
        ]
        raise ImportWeightsError(f"the file does not fit {arch} {kwargs}: " + "; ".join(p for p in problems if p))
    net.load_state_dict({k: v.float() for k, v in state.items()})
    in_channels = kwargs.pop("in_channels")
    if in_channels != 3:
        raise ImportWeightsError(f"the network takes {in_channels} channels; only RGB (3) models can be imported")
    return net, kwargs


def import_weights(
    path: Path,
    arch: Arch,
    scale: int,
    out: Path,
    license_: str,
    name: str | None = None,
    task: Literal["sr", "denoise"] | None = None,
) -> ModelCard:
    """Write `path`'s generator as a model folder `out` (replaced only when everything checked out)."""
    path = Path(path)
    state, where = read_state_dict(path)
    net, kwargs = fitted_network(arch, state, scale)
    task_name = task or ("sr" if scale > 1 else "denoise")
    if task_name == "sr" and scale not in (2, 3, 4):
        raise ImportWeightsError(f"an x{scale} network cannot serve task sr (x2, x3 or x4); use --task denoise")
    if task_name == "denoise" and scale != 1:
        raise ImportWeightsError(f"task denoise needs an x1 network; this one is x{scale}")
    task_params = TaskParams(name=task_name, **({"sr": {"scale": scale}} if task_name == "sr" else {}))
    built = build_task(task_params)
    card = ModelCard(
        arch=arch,
        arch_kwargs=kwargs,
        **built.card_fields(),
        task_params=built.card_params(),
        imported={
            "name": name or path.stem,
            "source": str(path.resolve()),
            "file": path.name,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "state_dict": where,
            "license": license_,
        },
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        gan_enhance_version=gan_enhance.__version__,
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the model folder is read like any other
    try:
        save_generator(net, card, staging)
        if out.exists():
            shutil.rmtree(out)
        staging.replace(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return card
