"""Unit tests of the service's helpers: settings, upload decoding, output encoding, batches, error bodies, the
request guard, the model description and the OpenAPI document."""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from gan_enhance.serving.codec import check_batch, decode_mask, decode_upload, encode_image
from gan_enhance.serving.errors import RequestError
from gan_enhance.serving.guard import RequestGuard, Route, _add_fix
from gan_enhance.serving.model import check_request_kind, describe_model, served_openapi
from gan_enhance.serving.settings import ServeSettings, SettingsError


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


RGB = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8))


def test_settings_come_from_the_environment_and_name_bad_values():
    settings = ServeSettings.from_env({"GAN_ENHANCE_SERVE_TILE": "128", "GAN_ENHANCE_SERVE_BATCHING": "false"})
    assert settings.tile == 128 and settings.batching is False and settings.tile_pad is None
    assert settings.latency_budget_ms == int(settings.timeout_s * 1000)
    with pytest.raises(SettingsError, match=r"GAN_ENHANCE_SERVE_MAX_PIXELS='lots'"):
        ServeSettings.from_env({"GAN_ENHANCE_SERVE_MAX_PIXELS": "lots"})
    with pytest.raises(SettingsError, match=r"GAN_ENHANCE_SERVE_DEVICE='tpu'.*'cuda'"):
        ServeSettings.from_env({"GAN_ENHANCE_SERVE_DEVICE": "tpu"})
    with pytest.raises(
        SettingsError, match=r"unknown setting GAN_ENHANCE_SERVE_TILES; known: .*GAN_ENHANCE_SERVE_TILE"
    ):
        ServeSettings.from_env({"GAN_ENHANCE_SERVE_TILES": "1"})


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 400, "empty"),
        (b"%PDF-1.4 not an image", 415, "not an image"),
        (encoded(RGB, "GIF"), 415, "GIF"),
        (encoded(RGB)[:-40], 400, "truncated"),
        (encoded(Image.new("L", (101, 100))), 413, "101x100"),
    ],
    ids=["empty", "pdf", "gif", "truncated", "too-many-pixels"],
)
def test_decode_upload_refuses_with_status_problem_and_fix(data: bytes, status: int, words: str):
    with pytest.raises(RequestError) as caught:
        decode_upload(data, max_pixels=10_000)
    assert caught.value.status == status and words in caught.value.problem
    assert set(caught.value.body()) == {"error", "fix"} and caught.value.fix


def test_decode_upload_reads_every_supported_format():
    for fmt in ("PNG", "JPEG", "WEBP", "TIFF", "BMP"):
        image = decode_upload(encoded(RGB, fmt), max_pixels=10_000)
        assert image.size == (32, 24) and image.format == fmt


def test_encode_image_keeps_alpha_and_16_bit_where_the_format_can():
    rgba = RGB.copy()
    rgba.putalpha(128)
    png = encode_image(rgba, "png")
    assert png.media_type == "image/png" and not png.notes
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.data))), np.asarray(rgba))

    gray16 = Image.fromarray(np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 80)
    back = Image.open(io.BytesIO(encode_image(gray16, "png").data))
    assert np.array_equal(np.asarray(back), np.asarray(gray16))

    jpeg = encode_image(rgba, "jpeg", quality=90)
    assert jpeg.media_type == "image/jpeg" and jpeg.notes == ("alpha flattened onto white",)
    assert Image.open(io.BytesIO(jpeg.data)).mode == "RGB"
    webp = encode_image(gray16, "webp")
    assert webp.notes == ("16-bit reduced to 8-bit",) and Image.open(io.BytesIO(webp.data)).format == "WEBP"
    assert Image.open(io.BytesIO(encode_image(rgba, "webp").data)).mode == "RGBA"


def test_check_batch_converts_and_names_the_bad_image():
    ok = check_batch([np.full((2, 3, 3), 7, dtype=np.int64), np.zeros((1, 1, 3), np.uint8)], 4, 100)
    assert [a.dtype for a in ok] == [np.uint8, np.uint8] and ok[0][0, 0, 0] == 7
    cases = [
        ([], "no images"),
        ([np.zeros((2, 2, 3), np.uint8)] * 5, "limit of 4"),
        ([np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.uint8)], "image 1 has shape (2, 2)"),
        ([np.full((2, 2, 3), 256)], "256..256"),
        ([np.full((2, 2, 3), 0.5)], "float64"),
        ([np.zeros((10, 11, 3), np.uint8)], "more than 100 pixels"),
    ]
    for images, words in cases:
        with pytest.raises(ValueError, match=None) as caught:
            check_batch(images, 4, 100)
        assert words in str(caught.value), (words, caught.value)


def test_enhance_batch_keeps_order_and_matches_single_images():
    from gan_enhance.inference import Enhancer
    from gan_enhance.models.artifact import ModelCard

    torch.manual_seed(0)
    card = ModelCard(arch="srvgg", arch_kwargs={"num_feat": 8, "num_conv": 2}, task="sr", scale=2)
    enhancer = Enhancer(card.build_network(), card, "cpu", tile=16, tile_pad=4)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(20, 20, 3), (9, 13, 3), (20, 20, 3)]]
    out = enhancer.enhance_batch(images)
    assert [o.shape for o in out] == [(40, 40, 3), (18, 26, 3), (40, 40, 3)]
    for got, image in zip(out, images, strict=True):
        assert np.abs(got.astype(int) - enhancer.enhance_array(image).astype(int)).max() <= 1


def test_each_api_fits_only_the_models_it_serves():
    from gan_enhance.models.artifact import ModelCard

    sr = ModelCard(arch="srvgg", arch_kwargs={}, task="sr", scale=4)
    inpaint = ModelCard(arch="gated_unet", arch_kwargs={}, task="inpaint", in_channels=4, inputs="image+mask")
    generate = ModelCard(arch="dcgan", arch_kwargs={}, task="generate", inputs="latent", latent_dim=8)
    for card, api, mask in [(sr, "/enhance", False), (sr, "/enhance_batch", False), (inpaint, "/enhance", True)]:
        check_request_kind(card, api, mask_sent=mask)
    check_request_kind(generate, "/generate")
    refused = [
        (sr, "/enhance", True, "takes no mask"),
        (sr, "/generate", False, "does not sample"),
        (inpaint, "/generate", False, "does not sample"),
        (inpaint, "/enhance", False, "field 'mask' is missing"),
        (inpaint, "/enhance_batch", False, "needs a mask"),
        (generate, "/enhance", False, "makes images from noise"),
    ]
    for card, api, mask, words in refused:
        with pytest.raises(RequestError, match=words) as caught:
            check_request_kind(card, api, mask_sent=mask)
        assert caught.value.status == 400 and caught.value.fix


def test_a_mask_of_another_size_is_refused():
    image = Image.new("RGB", (20, 10))
    buffer = io.BytesIO()
    Image.new("L", (10, 20), 255).save(buffer, "PNG")
    with pytest.raises(RequestError, match="the mask is 10x20 but the image is 20x10"):
        decode_mask(buffer.getvalue(), image, max_pixels=1000)
    buffer = io.BytesIO()
    Image.new("L", (20, 10), 255).save(buffer, "PNG")
    assert decode_mask(buffer.getvalue(), image, max_pixels=1000).size == (20, 10)


def test_bentoml_validation_errors_get_the_problem_and_a_fix():
    raw = json.dumps(
        {
            "error": "1 validation error for Input",
            "detail": [{"type": "missing", "loc": ["images"], "msg": "Field required"}],
        }
    ).encode()
    body = json.loads(_add_fix(raw, "send images"))
    assert body["error"] == "images: missing" and body["fix"] == "send images"
    wrapped = json.dumps([{"error": "bad input"}]).encode()  # BentoML's 4xx BentoMLException body
    assert json.loads(_add_fix(wrapped, "do this")) == {"error": "bad input", "fix": "do this"}
    assert _add_fix(b"not json", "x") == b"not json"


def _guarded(headers: dict[str, str], chunks: int, chunk_size: int = 1000) -> tuple[list[dict], int]:
    """POST /x through a RequestGuard (limit 2000 bytes, JSON only) with a body of `chunks` chunks; returns what
    the guard sent and how many chunks it read."""
    read = 0

    async def receive() -> dict:
        nonlocal read
        read += 1
        return {"type": "http.request", "body": b"x" * chunk_size, "more_body": read < chunks}

    async def app(*_: object) -> None:
        raise AssertionError("a refused request must not reach the app")

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/x",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    guard = RequestGuard(app, {"/x": Route(max_bytes=2000, content_types=("application/json",), fix="send less")})
    asyncio.run(guard(scope, receive, send))
    return sent, read


def test_the_guard_reads_a_refused_body_before_it_answers():
    # a refusal sent while the client still sends reaches it as a connection reset: the guard reads the body first
    json_type = {"content-type": "application/json"}
    for headers, chunks, status in [
        ({**json_type, "content-length": "5000"}, 5, 413),  # over the limit by Content-Length
        (json_type, 5, 413),  # chunked, counted while reading
        ({"content-type": "text/plain", "content-length": "5000"}, 5, 415),
    ]:
        sent, read = _guarded(headers, chunks)
        assert sent[0]["status"] == status and json.loads(sent[1]["body"])["fix"], sent
        assert read == chunks, (headers, read)
    # a body far over what is worth reading: answered at once, the connection is closed after the answer
    sent, read = _guarded({**json_type, "content-length": str(10**12)}, 10**9, chunk_size=1)
    assert sent[0]["status"] == 413 and read == 0


def _card(task: str = "sr"):
    from gan_enhance.models.artifact import ModelCard

    return ModelCard(arch="srvgg", arch_kwargs={}, task=task, scale=4)


def test_the_model_description_names_no_tracking_uri():
    labels = {"registered_model": "gan-enhance-sr-x4", "registered_version": "3", "alias": "champion"}
    metadata = {"metrics": {"fid": 9.0}, "run_id": "abc", "tracking_uri": "sqlite:////home/alice/mlflow.db"}
    body = describe_model(labels, metadata, _card(), "gan-enhance-champion:x", {"device": "cpu"})
    assert (body["registered_model"], body["version"], body["alias"], body["run_id"]) == (
        "gan-enhance-sr-x4",
        "3",
        "champion",
        "abc",
    )
    assert "tracking_uri" not in body and "alice" not in json.dumps(body)


def test_the_openapi_document_shows_the_served_model_and_only_its_apis():
    readme = "# gan-enhance service\n\n" + "A long developer README. " * 400
    spec = {
        "info": {"title": "gan_enhance", "description": readme, "version": "1"},
        "paths": {route: {"post": {}} for route in ("/enhance", "/enhance_batch", "/generate", "/model", "/readyz")},
    }
    model = {"registered_model": "gan-enhance-sr-x4", "version": "3", "alias": "champion", "task": "sr"}
    shown = served_openapi(spec, model, ("/enhance", "/enhance_batch"), ("/enhance", "/enhance_batch", "/generate"))
    assert set(shown["paths"]) == {"/enhance", "/enhance_batch", "/model", "/readyz"}
    description = shown["info"]["description"]
    assert len(description) < 600 and "gan-enhance-sr-x4" in description and "serving/README.md" in description
    assert shown["info"]["title"] == "gan-enhance: gan-enhance-sr-x4" and shown["info"]["version"] == "model version 3"
    assert spec["info"]["description"] == readme  # the spec it was given is left as it was
