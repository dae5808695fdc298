"""Safe image reading: every failure becomes an ImageError that says what is wrong and what to do."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from gan_enhance.errors import GanEnhanceError

SUPPORTED_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")


class ImageError(GanEnhanceError, ValueError):
    """An image that cannot be used, with the reason."""


def open_image(source: Path | bytes, max_pixels: int) -> Image.Image:
    name = "upload" if isinstance(source, bytes) else str(source)
    if isinstance(source, bytes) and not source:
        raise ImageError(f"{name}: the file is empty (0 bytes); send a PNG, JPEG, WebP, TIFF or BMP image")
    if isinstance(source, Path) and source.stat().st_size == 0:
        raise ImageError(f"{name}: the file is empty (0 bytes)")
    too_big = (
        f"{name}: {{}} pixels exceeds the limit of {max_pixels:,}; "
        "downscale it or raise the pixel limit (data.max_pixels)"
    )
    try:
        with warnings.catch_warnings():
            # The explicit max_pixels check below replaces Pillow's own bomb heuristics.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Image.DecompressionBombError as exc:
        raise ImageError(too_big.format(f"more than {Image.MAX_IMAGE_PIXELS * 2:,} ({exc})")) from None
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise ImageError(
            f"{name}: not a readable image (unknown or corrupt format); use PNG, JPEG, WebP, TIFF or BMP"
        ) from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(too_big.format(f"{width}x{height} = {width * height:,}"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(
            f"{name}: the image data is corrupt or truncated ({exc}); re-export or re-download it"
        ) from None
    return image


def to_rgb_array(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Return (RGB uint8 or uint16 HxWx3, alpha HxW or None) with EXIF orientation applied.

    Grayscale, palette, CMYK, LA/RGBA and 16-bit modes are converted the way a viewer shows them.
    """
    image = ImageOps.exif_transpose(image)
    alpha = None
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.uint32)
        if image.mode == "I" and values.max(initial=0) > 65535:
            values = values >> 16
        gray = values.astype(np.uint16)
        return np.repeat(gray[..., None], 3, axis=2), None
    if image.mode == "F":
        gray = np.clip(np.asarray(image, dtype=np.float32), 0, 255).round().astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2), None
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3].copy()
        image = rgba.convert("RGB")
    elif image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image).copy(), alpha


def read_image(source: Path | bytes, max_pixels: int = 50_000_000) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a file or bytes into (RGB array, alpha or None); raises ImageError with the reason."""
    if isinstance(source, str):
        source = Path(source)
    if isinstance(source, Path) and not source.is_file():
        raise ImageError(f"{source}: no such file; check the path")
    return to_rgb_array(open_image(source, max_pixels))


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Reduce 16-bit arrays to 8 bits (rounded); 8-bit arrays pass through."""
    if rgb.dtype == np.uint8:
        return rgb
    return np.clip(np.round(rgb.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
