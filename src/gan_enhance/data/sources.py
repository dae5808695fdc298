"""Where images come from: the photos shipped inside scikit-image and scikit-learn, or any folder."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gan_enhance.data.image_io import SUPPORTED_SUFFIXES

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


@dataclass(frozen=True)
class SourceImage:
    name: str  # stable, human-readable name used in the manifest and reports
    path: Path


class SourceError(ValueError):
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


def list_source(source: str, base: Path = Path(".")) -> list[SourceImage]:
    """Resolve a data.source value to its images."""
    if source == "embedded":
        return embedded_images()
    folder = Path(source).expanduser()
    return folder_images(folder if folder.is_absolute() else base / folder)
