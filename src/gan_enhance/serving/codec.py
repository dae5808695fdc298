"""Images in and out of the service: upload decoding (images and masks), output encoding, batch validation."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from gan_enhance.data.image_io import ImageError, open_image, to_uint8
from gan_enhance.serving.errors import CURL_HINT, MASK_HINT, SUPPORTED, RequestError
from gan_enhance.serving.png import encode_png
from gan_enhance.serving.settings import ENV_PREFIX

INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP")
OUTPUT_FORMATS: dict[str, tuple[str, str]] = {
    "png": ("PNG", "image/png"),
    "jpeg": ("JPEG", "image/jpeg"),
    "jpg": ("JPEG", "image/jpeg"),
    "webp": ("WEBP", "image/webp"),
}
OutputFormat = Literal["png", "jpeg", "jpg", "webp"]
ACCEPTED = {"image/png": "png", "image/webp": "webp", "image/jpeg": "jpeg"}  # Accept media types the service makes
PNG_8_BIT = ("L", "LA", "RGB", "RGBA")  # Pillow modes the fast PNG writer takes


# --- uploads -------------------------------------------------------------------------------------------------------


def check_upload(data: bytes, max_pixels: int, field_name: str = "image") -> None:
    """Validate uploaded bytes from the image header alone: RequestError 400 empty, 413 too many pixels, 415 not an
    image or a format the service does not take."""
    if not data:
        raise RequestError(
            400, f"the file in field '{field_name}' is empty (0 bytes)", f"send the image file; {CURL_HINT}"
        )
    too_many = f"downscale the image, or raise the server's limit ({ENV_PREFIX}MAX_PIXELS, now {max_pixels:,} pixels)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:  # reads the header only
                fmt, (width, height) = probe.format, probe.size
    except Image.DecompressionBombError:
        raise RequestError(413, f"the image in '{field_name}' has far more pixels than the limit", too_many) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise RequestError(
            415, f"the file in '{field_name}' is not an image in a supported format", f"send a {SUPPORTED} image"
        ) from None
    if fmt not in INPUT_FORMATS:
        raise RequestError(415, f"image format {fmt} is not supported", f"convert it to {SUPPORTED}")
    if width * height > max_pixels:
        raise RequestError(
            413,
            f"the image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}",
            too_many,
        )


def load_upload(data: bytes, max_pixels: int, field_name: str = "image") -> Image.Image:
    """Bytes that passed check_upload -> a fully loaded PIL image, or RequestError 400 (truncated or corrupt)."""
    try:
        return open_image(data, max_pixels)
    except ImageError as exc:  # header fine, pixel data not: truncated or corrupt
        raise RequestError(
            400, str(exc).replace("upload: ", f"'{field_name}': ", 1), "upload the complete file, or re-export it"
        ) from None


def decode_upload(data: bytes, max_pixels: int, field_name: str = "image") -> Image.Image:
    """Uploaded bytes -> a fully loaded PIL image (check_upload, then load_upload), or RequestError: 400
    empty/truncated, 413 too many pixels, 415 not an image or a format the service does not take."""
    check_upload(data, max_pixels, field_name)
    return load_upload(data, max_pixels, field_name)


def decode_mask(data: bytes, image: Image.Image, max_pixels: int) -> Image.Image:
    """An uploaded mask (white = fill in) -> a loaded image of the image's size, or RequestError naming the problem."""
    mask = decode_upload(data, max_pixels, field_name="mask")
    if mask.size != image.size:
        (mw, mh), (iw, ih) = mask.size, image.size
        raise RequestError(400, f"the mask is {mw}x{mh} but the image is {iw}x{ih}", MASK_HINT)
    return mask


# --- outputs -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedImage:
    """An encoded output image and its media type."""

    data: bytes
    media_type: str
    notes: tuple[str, ...] = ()  # conversions the format forced (alpha flattened, 16 bits reduced to 8)


def encode_image(
    image: Image.Image, fmt: str, quality: int = 95, png_compress_level: int = 1, webp_method: int = 0
) -> EncodedImage:
    """PNG keeps everything (alpha, 16-bit grayscale); JPEG has no alpha (flattened onto white) and neither JPEG nor
    WebP has 16 bits (reduced to 8). 8-bit PNGs go through the fast writer (gan_enhance.serving.png), others
    through Pillow; `webp_method` is libwebp's effort (0 fastest, 6 smallest)."""
    pil_format, media_type = OUTPUT_FORMATS[fmt]
    notes: list[str] = []
    if pil_format == "PNG":
        if image.mode in PNG_8_BIT:
            return EncodedImage(encode_png(np.asarray(image), png_compress_level), media_type)
        buffer = io.BytesIO()
        image.save(buffer, "PNG", compress_level=png_compress_level)
        return EncodedImage(buffer.getvalue(), media_type)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = Image.fromarray(to_uint8(np.asarray(image).astype(np.uint16)), "L").convert("RGB")
        notes.append("16-bit reduced to 8-bit")
    if pil_format == "JPEG" and image.mode in ("RGBA", "LA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        image = background
        notes.append("alpha flattened onto white")
    options = {"method": webp_method} if pil_format == "WEBP" else {}
    buffer = io.BytesIO()
    image.save(buffer, pil_format, quality=quality, **options)
    return EncodedImage(buffer.getvalue(), media_type, tuple(notes))


def choose_format(requested: str | None, accept: str | None) -> str:
    """The output format: the request's `format` field when sent, else the best of PNG, WebP and JPEG that the
    Accept header names (highest q; lossless PNG wins ties; wildcards alone pick PNG), else PNG."""
    if requested:
        return requested
    best, best_q = "png", 0.0
    for part in (accept or "").split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        fmt = ACCEPTED.get(media.lower())
        if fmt is None:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > best_q or (q == best_q and fmt == "png"):
            best, best_q = fmt, q
    return best


# --- batches -------------------------------------------------------------------------------------------------------


def check_batch(images: list[np.ndarray], max_images: int, max_pixels: int) -> list[np.ndarray]:
    """A request's images -> uint8 H x W x 3 arrays; ValueError naming the first bad image (pydantic passes it on)."""
    if not images:
        raise ValueError("no images; send at least one")
    if len(images) > max_images:
        raise ValueError(f"{len(images)} images is over the limit of {max_images} per request; split the request")
    checked, total = [], 0
    for i, image in enumerate(images):
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
            raise ValueError(f"image {i} has shape {array.shape}; each image must be H x W x 3 (RGB)")
        if array.dtype.kind not in "ui":
            raise ValueError(f"image {i} holds {array.dtype} values; send integers 0-255 (uint8 RGB)")
        if array.dtype != np.uint8 and (array.min() < 0 or array.max() > 255):
            raise ValueError(f"image {i} has values {array.min()}..{array.max()}; uint8 images hold 0-255")
        total += array.shape[0] * array.shape[1]
        if total > max_pixels:
            raise ValueError(f"the images add up to more than {max_pixels:,} pixels; send fewer or smaller images")
        checked.append(np.ascontiguousarray(array, dtype=np.uint8))
    return checked
