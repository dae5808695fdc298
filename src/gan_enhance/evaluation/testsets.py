"""Test sets: the prepared data's test split or any folder of images, each image with its deterministic model
input (and hole mask), and the seeded crops FID/KID are taken on."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from gan_enhance.config import Params
from gan_enhance.data.image_io import read_image, to_uint8
from gan_enhance.data.prepare import content_hash, read_manifest
from gan_enhance.data.sources import folder_images
from gan_enhance.errors import GanEnhanceError
from gan_enhance.tasks import Task


class EvaluationError(GanEnhanceError, RuntimeError):
    """The model and the evaluation set-up do not fit together."""


@dataclass
class TestImage:
    __test__ = False  # a test image, not a pytest test class
    name: str
    sha256: str
    target: np.ndarray  # uint8, cropped to the task's multiple
    input: np.ndarray  # float32 [0, 1] scale
    mask: np.ndarray | None = None  # bool, True = hole (inpainting)


def _seed(base: int, sha256: str) -> int:
    return int(hashlib.sha256(f"{base}:{sha256}".encode()).hexdigest()[:8], 16)


def _test_image(name: str, sha256: str, rgb: np.ndarray, task: Task, seed: int) -> TestImage:
    target = task.prepare_target(rgb)
    image_seed = _seed(seed, sha256)
    return TestImage(name, sha256, target, task.eval_input(target, image_seed), task.eval_mask(target, image_seed))


def load_test_split(params: Params, task: Task, base: Path = Path("."), domain_dir: str = "") -> list[TestImage]:
    """The prepared data's test split (of domain B's subfolder, for two-domain tasks, given `domain_dir`)."""
    prepared = base / params.data.prepared_dir / domain_dir
    rows = [r for r in read_manifest(prepared) if r.split == "test"]
    if not rows:
        raise EvaluationError(f"the test split in {prepared} is empty; re-run prepare with more images")
    return [
        _test_image(
            r.file, r.sha256, np.asarray(Image.open(prepared / r.file).convert("RGB")), task, params.evaluate.seed
        )
        for r in rows
    ]


def load_test_folder(folder: Path, task: Task, seed: int, max_pixels: int = 50_000_000) -> list[TestImage]:
    """Every image of a folder (e.g. a benchmark set such as Set14), converted to RGB; unreadable files fail."""
    images = []
    for item in folder_images(Path(folder)):
        rgb, _ = read_image(item.path, max_pixels=max_pixels)
        rgb = to_uint8(rgb)
        images.append(_test_image(item.name, content_hash(rgb), rgb, task, seed))
    if not images:
        raise EvaluationError(f"no images in '{folder}'; point at a folder of PNG/JPEG/WebP/TIFF/BMP images")
    return images


def test_set_hash(test_set: list[TestImage]) -> str:
    """Identity of a test set: its images' content, in any order."""
    return hashlib.sha256("".join(sorted(t.sha256 for t in test_set)).encode()).hexdigest()[:16]


def crop_positions(shapes: list[tuple[int, int]], count: int, size: int, seed: int) -> list[tuple[int, int, int]]:
    """Seeded (image index, top, left) crops, spread evenly over the images (one large image must not fill
    the FID sample)."""
    usable = [i for i, (h, w) in enumerate(shapes) if h >= size and w >= size]
    if not usable:
        raise EvaluationError(f"no test image is at least {size}x{size}; lower evaluate.fid_crop_size")
    rng = np.random.default_rng(seed)
    picks = [usable[k % len(usable)] for k in range(count)]
    return [
        (i, int(rng.integers(0, shapes[i][0] - size + 1)), int(rng.integers(0, shapes[i][1] - size + 1))) for i in picks
    ]


def crops(images: list[np.ndarray], positions: list[tuple[int, int, int]], size: int) -> list[np.ndarray]:
    """The size x size crops at `positions` (from crop_positions) of `images`."""
    return [images[i][top : top + size, left : left + size] for i, top, left in positions]
