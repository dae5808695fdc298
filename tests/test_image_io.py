import io

import numpy as np
import pytest
from PIL import Image

from gan_enhance.data.image_io import ImageError, read_image, to_uint8


def _png(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_modes_are_converted_to_rgb():
    gray, alpha = read_image(_png(Image.new("L", (4, 3), 77)))
    assert gray.shape == (3, 4, 3) and (gray == 77).all() and alpha is None
    palette = Image.new("P", (4, 3))
    palette.putpalette([10, 20, 30] * 256)
    rgb, _ = read_image(_png(palette))
    assert tuple(rgb[0, 0]) == (10, 20, 30)
    rgba, alpha = read_image(_png(Image.new("RGBA", (4, 3), (1, 2, 3, 99))))
    assert rgba.shape == (3, 4, 3) and (alpha == 99).all()
    cmyk, _ = read_image(_png(Image.new("CMYK", (4, 3), (0, 0, 0, 0)), "JPEG"))
    assert cmyk.shape == (3, 4, 3) and cmyk.min() > 240


def test_sixteen_bit_grayscale_keeps_its_depth_until_asked():
    values = np.array([[0, 1000, 65535]], dtype=np.uint16)
    rgb, _ = read_image(_png(Image.fromarray(values)))
    assert rgb.dtype == np.uint16 and rgb[0, 2, 0] == 65535
    assert tuple(to_uint8(rgb)[0, :, 0]) == (0, 4, 255)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (6, 2), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when shown
    rgb, _ = read_image(_png(image, "JPEG", exif=exif))
    assert rgb.shape == (6, 2, 3)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty"),
        (b"this is not an image at all", "not a readable image"),
        (_png(Image.new("RGB", (64, 64), 9))[:60], "corrupt or truncated"),
    ],
)
def test_bad_files_name_the_problem(payload: bytes, reason: str):
    with pytest.raises(ImageError, match=reason):
        read_image(payload)


def test_pixel_limit_guards_against_bombs():
    with pytest.raises(ImageError, match=r"100x100 = 10,000 pixels exceeds the limit of 5,000.*max_pixels"):
        read_image(_png(Image.new("RGB", (100, 100))), max_pixels=5000)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "missing.png")
