"""Where images come from: the photos shipped inside scikit-image and scikit-learn, scikit-learn's 8x8 digits,
or any folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from gan_enhance.data.image_io import SUPPORTED_SUFFIXES, ImageError, read_image
from gan_enhance.errors import GanEnhanceError

# Real photographs that installed packages ship (no download); licences are listed in the README.
# motorcycle_right is left out: it is the stereo twin of motorcycle_left and would leak across splits.
EMBEDDED_PHOTOS: dict[str, tuple[str, str]] = {
    "astronaut": ("skimage.data", "astronaut.png"),
    "chelsea": ("skimage.data", "chelsea.png"),
    "coffee": ("skimage.data", "coffee.png"),
    "hubble_deep_field": ("skimage.data", "hubble_deep_field.jpg"),
    "immunohistochemistry": ("skimage.data", "ihc.png"),
    "motorcycle_left": ("skimage.data", "motorcycle_left.png"),
    "retina": ("skimage.data", "retina.jpg"),
    "rocket": ("skimage.data", "rocket.jpg"),
    "camera": ("skimage.data", "camera.png"),
    "coins": ("skimage.data", "coins.png"),
    "moon": ("skimage.data", "moon.png"),
    "brick": ("skimage.data", "brick.png"),
    "grass": ("skimage.data", "grass.png"),
    "gravel": ("skimage.data", "gravel.png"),
    "china": ("sklearn.datasets.images", "china.jpg"),
    "flower": ("sklearn.datasets.images", "flower.jpg"),
}


DIGITS = "digits"
DIGITS_SIDE = 32  # the 8x8 digits are resized to this side (bicubic), as DCGAN examples do with MNIST


@dataclass(frozen=True)
class SourceImage:
    name: str  # stable, human-readable name used in the manifest and reports
    path: Path | None = None  # a file, or None for an image made in memory by `pixels`
    pixels: Callable[[], np.ndarray] | None = None

    def read(self, max_pixels: int) -> np.ndarray:
        """RGB uint8 (or uint16) H x W x 3; ImageError says why a file cannot be used."""
        if self.pixels is not None:
            rgb = self.pixels()
            if rgb.shape[0] * rgb.shape[1] > max_pixels:
                raise ImageError(f"{self.name}: {rgb.shape[1]}x{rgb.shape[0]} pixels exceeds the limit {max_pixels:,}")
            return rgb
        if self.path is None:
            raise ImageError(f"{self.name}: neither a file nor pixels; this is a bug in the source listing")
        return read_image(self.path, max_pixels=max_pixels)[0]


class SourceError(GanEnhanceError, ValueError):
    """A data source that cannot be listed."""


def embedded_images() -> list[SourceImage]:
    images = []
    for name, (package, filename) in EMBEDDED_PHOTOS.items():
        path = Path(str(resources.files(package) / filename))
        if not path.is_file():
            raise SourceError(f"embedded photo '{name}' is missing from the installed {package} ({path}); reinstall it")
        images.append(SourceImage(f"{name}{path.suffix}", path))
    return images


def folder_images(folder: Path) -> list[SourceImage]:
    """Every file under `folder` (recursive) with a supported suffix, sorted for determinism."""
    if not folder.exists():
        raise SourceError(f"data source folder '{folder}' does not exist; set data.source to a folder or 'embedded'")
    if not folder.is_dir():
        raise SourceError(f"data source '{folder}' is a file; set data.source to a folder of images or 'embedded'")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)
    return [SourceImage(str(p.relative_to(folder)), p) for p in files]


def _digit(values: np.ndarray, side: int) -> np.ndarray:
    gray = Image.fromarray(np.round(values * (255.0 / 16.0)).astype(np.uint8))
    return np.repeat(np.asarray(gray.resize((side, side), Image.BICUBIC))[..., None], 3, axis=2)


def digits_images(side: int = DIGITS_SIDE) -> list[SourceImage]:
    """The 1,797 handwritten 8x8 digits scikit-learn ships (white on black), resized to side x side RGB."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return [
        SourceImage(f"digit_{i:04d}_{label}.png", pixels=partial(_digit, values, side))
        for i, (values, label) in enumerate(zip(digits.images, digits.target, strict=True))
    ]


def list_source(source: str, base: Path = Path(".")) -> list[SourceImage]:
    """Resolve a data.source value to its images."""
    if source == "embedded":
        return embedded_images()
    if source == DIGITS:
        return digits_images()
    folder = Path(source).expanduser()
    return folder_images(folder if folder.is_absolute() else base / folder)
