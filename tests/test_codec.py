"""The service's output encodings: the fast PNG writer round-trips exactly, the lossy formats stay within a stated
PSNR, the Accept header picks the format, and the Server-Timing header reads back."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from gan_enhance.serving.codec import choose_format, encode_image
from gan_enhance.serving.png import encode_png
from gan_enhance.serving.settings import ServeSettings, SettingsError
from gan_enhance.serving.timing import StageTimes, parse_server_timing

pytestmark = pytest.mark.numeric  # also run on a second CPU code path (make test-cpu-path)

LOSSY_MIN_PSNR_DB = 36.0  # JPEG and WebP at quality 95 on a photo crop (measured: 38.0 and 38.6 dB)


def photo_crop() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[100:356, 150:406])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("level", [0, 1, 6])
@pytest.mark.parametrize(
    ("shape", "mode"),
    [((37, 53, 3), "RGB"), ((20, 31, 4), "RGBA"), ((17, 9), "L"), ((9, 17, 2), "LA"), ((1, 1, 3), "RGB")],
)
def test_png_writer_round_trips_exactly(shape: tuple[int, ...], mode: str, level: int):
    pixels = np.random.default_rng(sum(shape) + level).integers(0, 256, shape, dtype=np.uint8)
    pixels[: shape[0] // 2] = pixels[0]  # repeated rows: the Up filter's zeros
    image = decoded(encode_png(pixels, level))
    assert image.format == "PNG" and image.mode == mode and image.size == (shape[1], shape[0])
    assert np.array_equal(np.asarray(image), pixels)


def test_png_writer_refuses_what_it_cannot_write():
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4, 3), np.uint16))
    with pytest.raises(ValueError, match="shape"):
        encode_png(np.zeros((4, 4, 5), np.uint8))


def test_png_output_is_exact_for_every_mode_the_enhancer_returns():
    rgb = Image.fromarray(photo_crop())
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (256, 1))))
    gray16 = Image.fromarray((photo_crop()[..., 0].astype(np.uint16) * 257 + 1).astype(np.uint16))
    for image in (rgb, rgba, gray16):
        for level in (0, 1, 9):
            encoded = encode_image(image, "png", png_compress_level=level)
            back = decoded(encoded.data)
            assert encoded.media_type == "image/png" and not encoded.notes
            assert back.mode == image.mode and np.array_equal(np.asarray(back), np.asarray(image)), (image.mode, level)


def test_level_1_is_smaller_than_no_compression():
    image = Image.fromarray(photo_crop())
    stored, fast = (len(encode_image(image, "png", png_compress_level=level).data) for level in (0, 1))
    assert fast < 0.8 * stored


@pytest.mark.parametrize(("fmt", "webp_method"), [("jpeg", 0), ("webp", 0), ("webp", 6)])
def test_lossy_outputs_stay_within_the_stated_psnr(fmt: str, webp_method: int):
    pixels = photo_crop()
    encoded = encode_image(Image.fromarray(pixels), fmt, quality=95, webp_method=webp_method)
    back = decoded(encoded.data)
    assert back.format == fmt.upper() and back.size == (256, 256)
    assert psnr(np.asarray(back.convert("RGB")), pixels) >= LOSSY_MIN_PSNR_DB


@pytest.mark.parametrize(
    ("requested", "accept", "chosen"),
    [
        ("jpeg", "image/webp", "jpeg"),  # the form field wins
        (None, None, "png"),
        (None, "*/*", "png"),
        (None, "image/*", "png"),
        (None, "application/json", "png"),  # nothing the service makes: PNG rather than a refusal
        (None, "image/webp", "webp"),
        (None, "image/avif,image/webp,*/*;q=0.8", "webp"),  # a browser's
        (None, "image/jpeg;q=0.9, image/webp;q=0.5", "jpeg"),
        (None, "image/webp, image/png", "png"),  # equal q: lossless wins
        (None, "image/png;q=0.1, IMAGE/WEBP", "webp"),
        (None, "image/webp;q=0", "png"),
        (None, "image/webp;q=x", "png"),
    ],
)
def test_the_format_field_then_the_accept_header_choose_the_output(requested, accept, chosen):
    assert choose_format(requested, accept) == chosen


def test_stage_times_read_back_from_the_server_timing_header():
    times = StageTimes()
    with times.stage("decode"):
        pass
    with times.stage("network"):
        sum(range(10_000))
    with times.stage("decode"):
        pass
    parsed = parse_server_timing(times.header())
    assert list(parsed) == ["decode", "network"] and parsed["network"] > 0
    assert parsed == pytest.approx(times.ms, abs=0.051)  # the header keeps 0.1 ms
    assert parse_server_timing('cache;desc="hit", db;dur=53.2') == {"db": 53.2}


def test_encoder_and_worker_settings_are_checked():
    settings = ServeSettings.from_env({"GAN_ENHANCE_SERVE_WEBP_METHOD": "4", "GAN_ENHANCE_SERVE_WORKERS": "2"})
    assert (settings.webp_method, settings.workers, settings.png_compress_level) == (4, 2, 1)
    with pytest.raises(SettingsError, match="GAN_ENHANCE_SERVE_WEBP_METHOD='7'"):
        ServeSettings.from_env({"GAN_ENHANCE_SERVE_WEBP_METHOD": "7"})
    with pytest.raises(SettingsError, match="GAN_ENHANCE_SERVE_PNG_COMPRESS_LEVEL='10'"):
        ServeSettings.from_env({"GAN_ENHANCE_SERVE_PNG_COMPRESS_LEVEL": "10"})
