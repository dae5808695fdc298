"""End to end: the BentoML service on 127.0.0.1 with a tiny registered champion, called through
bentoml.SyncHTTPClient and through raw HTTP (httpx), compared with the in-process Enhancer."""

from __future__ import annotations

import io
import json
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from gan_enhance.serving.local import REPO, bentoml_home

from .browser import dump_dom, screenshot
from .serving_support import register_tiny_champion, serve

pytestmark = pytest.mark.slow

TILE, TILE_PAD = 64, 8
MAX_PIXELS = 12_000_000  # 4000 x 3000 exactly
SERVER_ENV = {
    "GAN_ENHANCE_SERVE_DEVICE": "cpu",
    "GAN_ENHANCE_SERVE_TILE": str(TILE),
    "GAN_ENHANCE_SERVE_TILE_PAD": str(TILE_PAD),
    "GAN_ENHANCE_SERVE_MAX_PIXELS": str(MAX_PIXELS),
    "GAN_ENHANCE_SERVE_MAX_UPLOAD_MB": "8",
    "GAN_ENHANCE_SERVE_MAX_BATCH_MB": "2",
    "GAN_ENHANCE_SERVE_MAX_BATCH_IMAGES": "8",
    "GAN_ENHANCE_SERVE_TIMEOUT_S": "120",
    # one torch thread on both sides: float sums split over other thread counts can round a pixel the other way
    "GAN_ENHANCE_SERVE_TORCH_THREADS": "1",
}


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory, tiny_source: Path) -> dict:
    return register_tiny_champion(tmp_path_factory.mktemp("registry"), tiny_source)


@pytest.fixture(scope="module")
def url(champion: dict, tmp_path_factory: pytest.TempPathFactory):
    from gan_enhance.serving.bento import import_champion

    with bentoml_home(tmp_path_factory.mktemp("bentoml")):
        import_champion(champion["model_name"], champion["tracking_uri"])
        with serve(env=SERVER_ENV) as address:
            yield address


@pytest.fixture(scope="module")
def enhancer(champion: dict):
    """The in-process reference: the same champion, loaded from the registry, with the server's tiling and
    torch thread count."""
    from gan_enhance.lifecycle.registry import load_enhancer

    threads = torch.get_num_threads()
    torch.set_num_threads(int(SERVER_ENV["GAN_ENHANCE_SERVE_TORCH_THREADS"]))
    yield load_enhancer(
        champion["model_name"], "champion", champion["tracking_uri"], device="cpu", tile=TILE, tile_pad=TILE_PAD
    )
    torch.set_num_threads(threads)


def photo(height: int = 150, width: int = 100, seed: int = 0) -> np.ndarray:
    """A smooth image with some noise (tiles must line up exactly for outputs to be equal)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([yy * 255 / height, xx * 255 / width, (yy + xx) * 127 / (height + width)], axis=2)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def decoded(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def post_image(url: str, data: bytes, filename: str = "in.png", **fields: str) -> httpx.Response:
    return httpx.post(f"{url}/enhance", files={"image": (filename, data)}, data=fields, timeout=120)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's calling card), with a tiny IDAT."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


# --- every API, with the client and with raw HTTP ---------------------------------------------------------------


def test_model_health_and_docs(url: str, champion: dict):
    from mlflow import MlflowClient

    info = httpx.get(f"{url}/model").json()
    client = MlflowClient(champion["tracking_uri"], registry_uri=champion["tracking_uri"])
    version = client.get_model_version_by_alias(champion["model_name"], "champion")
    assert (info["registered_model"], info["version"], info["alias"]) == (
        champion["model_name"],
        str(version.version),
        "champion",
    )
    assert (info["task"], info["scale"]) == ("sr", 2)
    assert info["metrics"] == {
        k[len("metric.") :]: float(v) for k, v in version.tags.items() if k.startswith("metric.")
    }
    assert info["metrics"]["psnr"] == pytest.approx(30.0) and "kid_low" in info["metrics"]  # with its interval
    assert info["serving"]["tile"] == TILE and info["serving"]["max_pixels"] == MAX_PIXELS
    assert info["run_id"] == version.run_id and "tracking_uri" not in info  # no path on the build machine

    for path in ("/livez", "/healthz", "/readyz"):
        assert httpx.get(f"{url}{path}").status_code == 200, path
    spec = httpx.get(f"{url}/docs.json").json()
    assert {"/enhance", "/enhance_batch", "/model"} <= set(spec["paths"])
    assert "/generate" not in spec["paths"]  # the SR model does not sample
    # the top of the Swagger page: a few lines naming the model, then the endpoints
    description = spec["info"]["description"]
    assert len(description) < 600 and champion["model_name"] in description and "serving/README.md" in description
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and "swagger" in page.text.lower()
    assert "/enhance" in dump_dom(f"{url}/")  # Swagger UI drew the endpoints (from the local bundle, offline)


def test_swagger_page_screenshot(url: str, tmp_path: Path):
    screenshot(f"{url}/", tmp_path / "swagger.png")


def test_enhance_with_the_client_equals_in_process(url: str, enhancer, tmp_path: Path):
    import bentoml

    source = tmp_path / "in.png"
    Image.fromarray(photo()).save(source)
    expected = np.asarray(enhancer.enhance_image(Image.open(source)))
    with bentoml.SyncHTTPClient(url) as client:
        assert client.is_ready(timeout=10)
        assert client.request("GET", "/model").json()["alias"] == "champion"
        got = client.enhance(image=source)
        webp = client.enhance(image=source, format="webp", quality=90)
    assert np.array_equal(np.asarray(got), expected)
    assert got.size == (200, 300)
    assert webp.format == "WEBP" and webp.size == (200, 300)


def test_enhance_raw_multipart_keeps_alpha_and_16_bit(url: str, enhancer):
    rgb = Image.fromarray(photo(seed=1))
    response = post_image(url, png_bytes(rgb))
    assert response.headers["content-type"] == "image/png" and response.headers["x-model"].endswith("/1")
    assert np.array_equal(np.asarray(decoded(response)), np.asarray(enhancer.enhance_image(rgb)))

    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 100, dtype=np.uint8), (150, 1))))
    out = decoded(post_image(url, png_bytes(rgba)))
    assert out.mode == "RGBA"
    assert np.array_equal(np.asarray(out), np.asarray(enhancer.enhance_image(rgba)))

    gray16 = Image.fromarray((photo(seed=2)[..., 0].astype(np.uint16) * 257 + 3).astype(np.uint16))
    out = decoded(post_image(url, png_bytes(gray16)))
    assert out.mode.startswith("I") and np.asarray(out).max() > 255  # still 16 bits
    assert np.array_equal(np.asarray(out), np.asarray(enhancer.enhance_image(gray16)))

    jpeg = io.BytesIO()
    rgb.save(jpeg, "JPEG", quality=90)
    response = post_image(url, jpeg.getvalue(), "in.jpg", format="jpeg", quality="80")
    assert response.headers["content-type"] == "image/jpeg"
    assert decoded(response).size == (200, 300)

    response = post_image(url, png_bytes(rgba), format="jpeg")
    assert decoded(response).mode == "RGB" and "alpha flattened" in response.headers["x-conversions"]
    response = post_image(url, png_bytes(rgba), format="webp")
    assert response.headers["content-type"] == "image/webp" and decoded(response).mode == "RGBA"


def test_the_accept_header_chooses_the_format_and_the_stages_are_timed(url: str, enhancer):
    from gan_enhance.serving.timing import parse_server_timing

    rgb = Image.fromarray(photo(seed=6))
    expected = np.asarray(enhancer.enhance_image(rgb))
    browser = "image/avif,image/webp,*/*;q=0.8"
    cases = [({"accept": browser}, {}, "image/webp"), ({"accept": browser}, {"format": "png"}, "image/png")]
    cases += [({"accept": "*/*"}, {}, "image/png"), ({"accept": "image/jpeg"}, {}, "image/jpeg")]
    for headers, fields, media_type in cases:
        response = httpx.post(
            f"{url}/enhance", files={"image": ("in.png", png_bytes(rgb))}, data=fields, headers=headers, timeout=120
        )
        out = decoded(response)
        assert response.headers["content-type"] == media_type and response.headers["vary"] == "Accept", headers
        assert out.size == (200, 300)
        if media_type == "image/png":
            assert np.array_equal(np.asarray(out), expected)
        stages = parse_server_timing(response.headers["server-timing"])
        assert list(stages) == ["validate", "decode", "enhance", "encode"] and min(stages.values()) >= 0


def test_enhance_batch_with_the_client_and_raw_json(url: str, enhancer):
    import bentoml

    images = [photo(40, 30, seed=3), photo(40, 30, seed=4), photo(17, 23, seed=5)]  # two sizes in one request
    expected = [enhancer.enhance_array(image) for image in images]
    with bentoml.SyncHTTPClient(url) as client:
        got = client.enhance_batch(images=images)
    assert len(got) == 3
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == np.uint8 and g.shape == e.shape
        assert np.abs(g.astype(int) - e.astype(int)).max() <= 1  # batched convolutions may round differently

    response = httpx.post(f"{url}/enhance_batch", json={"images": [images[2].tolist()]}, timeout=60)
    assert response.status_code == 200, response.text
    assert np.array_equal(np.asarray(response.json()[0], dtype=np.uint8), expected[2])


# --- bad input ----------------------------------------------------------------------------------------------------

GIF = io.BytesIO()
Image.new("RGB", (8, 8)).save(GIF, "GIF")
SMALL_PNG = png_bytes(Image.fromarray(photo(20, 20)))


def _enhance(**kwargs):
    return lambda url: httpx.post(f"{url}/enhance", timeout=60, **kwargs)


def _batch(**kwargs):
    return lambda url: httpx.post(f"{url}/enhance_batch", timeout=60, **kwargs)


def _chunked(size: int):
    def body():
        for _ in range(size // 2**20):
            yield b"x" * 2**20

    return lambda url: httpx.post(
        f"{url}/enhance_batch", content=body(), headers={"content-type": "application/json"}, timeout=60
    )


BAD_INPUTS = {
    "empty file": (_enhance(files={"image": ("a.png", b"")}), 400, "empty"),
    "not an image": (_enhance(files={"image": ("a.png", b"hello, world")}), 415, "not an image"),
    "unsupported format": (_enhance(files={"image": ("a.gif", GIF.getvalue())}), 415, "GIF"),
    "truncated file": (_enhance(files={"image": ("a.png", SMALL_PNG[: len(SMALL_PNG) // 2])}), 400, "truncated"),
    "too many pixels": (
        _enhance(files={"image": ("a.png", png_bytes(Image.new("RGB", (4001, 3000))))}),
        413,
        "4001x3000",
    ),
    "decompression bomb": (_enhance(files={"image": ("a.png", png_header_only(100_000, 100_000))}), 413, "pixels"),
    "upload too large": (_enhance(files={"image": ("a.png", b"\0" * (9 * 2**20))}), 413, "8 MiB"),
    "missing image field": (_enhance(files={"format": (None, "png")}), 400, "'image' is missing"),
    "wrong field name": (_enhance(files={"file": ("a.png", SMALL_PNG)}), 400, "'image' is missing"),
    "image sent as text": (_enhance(files={"image": (None, "http://127.0.0.1:9/x.png")}), 400, "file upload"),
    "json instead of a form": (_enhance(json={"image": "x"}), 415, "application/json"),
    "unknown field": (_enhance(files={"image": ("a.png", SMALL_PNG), "mask": ("m.png", SMALL_PNG)}), 400, "mask"),
    "bad output format": (_enhance(files={"image": ("a.png", SMALL_PNG), "format": (None, "gif")}), 400, "format"),
    "bad quality": (_enhance(files={"image": ("a.png", SMALL_PNG), "quality": (None, "0")}), 400, "quality"),
    "batch: not json": (_batch(content=b"images", headers={"content-type": "text/plain"}), 415, "text/plain"),
    "batch: malformed json": (
        _batch(content=b'{"images": [', headers={"content-type": "application/json"}),
        400,
        "JSON",
    ),
    "batch: missing images": (_batch(json={"pictures": []}), 400, "images: missing"),
    "batch: wrong shape": (_batch(json={"images": [[[1, 2], [3, 4]]]}), 400, "H x W x 3"),
    "batch: ragged image": (_batch(json={"images": [[[[1, 2, 3]], [[1, 2, 3], [4, 5, 6]]]]}), 400, "images"),
    "batch: values over 255": (_batch(json={"images": [[[[300, 0, 0]]]]}), 400, "0-255"),
    "batch: floats": (_batch(json={"images": [[[[0.5, 0, 0]]]]}), 400, "float"),
    "batch: too many images": (_batch(json={"images": [[[[0, 0, 0]]]] * 9}), 400, "limit of 8"),
    "batch: body too large (chunked)": (_chunked(3 * 2**20), 413, "2 MiB"),
}


def test_a_body_refused_before_it_is_read_still_gets_its_answer_over_urllib(url: str):
    """urllib sends the whole body before it reads the answer: a refusal sent before the body was read would reach
    it as a connection reset instead of the 4xx and its JSON (httpx copes either way)."""
    import urllib.error
    import urllib.request

    limit = int(float(SERVER_ENV["GAN_ENHANCE_SERVE_MAX_UPLOAD_MB"]) * 2**20)
    boundary = "gan-enhance-test"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n\r\n'
    form = head.encode() + b"\0" * (limit + 3 * 2**20) + f"\r\n--{boundary}--\r\n".encode()
    cases = [
        (form, f"multipart/form-data; boundary={boundary}", 413, "8 MiB"),
        (b"\0" * 4 * 2**20, "application/octet-stream", 415, "application/octet-stream"),
    ]
    for body, content_type, status, words in cases:
        request = urllib.request.Request(f"{url}/enhance", data=body, headers={"Content-Type": content_type})
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=60)
        answer = json.loads(caught.value.read())
        assert caught.value.code == status and words in answer["error"] and answer["fix"], answer
    assert httpx.get(f"{url}/readyz").status_code == 200
    assert post_image(url, SMALL_PNG).status_code == 200


def test_bad_input_gets_a_4xx_naming_problem_and_fix_and_the_service_stays_healthy(url: str):
    failures = []
    for name, (send, status, words) in BAD_INPUTS.items():
        response = send(url)
        body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        if response.status_code != status or words not in body.get("error", "") or not body.get("fix"):
            failures.append(f"{name}: {response.status_code} {response.text[:300]}")
    assert not failures, "\n".join(failures)
    assert httpx.get(f"{url}/readyz").status_code == 200
    assert post_image(url, SMALL_PNG).status_code == 200


# --- load and size ------------------------------------------------------------------------------------------------


def test_50_requests_at_concurrency_8_without_errors(url: str, enhancer):
    inputs = [photo(48 + 8 * (i % 3), 40, seed=10 + i) for i in range(50)]
    singles = {i: np.asarray(enhancer.enhance_image(Image.fromarray(inputs[i]))) for i in range(0, 50, 2)}
    batched = {i: enhancer.enhance_array(inputs[i]) for i in range(1, 50, 2)}

    def call(i: int) -> tuple[int, bool]:
        with httpx.Client(timeout=120) as client:
            if i % 2 == 0:  # raw multipart /enhance
                response = client.post(
                    f"{url}/enhance", files={"image": ("a.png", png_bytes(Image.fromarray(inputs[i])))}
                )
                ok = response.status_code == 200 and np.array_equal(np.asarray(decoded(response)), singles[i])
            else:  # /enhance_batch, batched with its neighbours
                response = client.post(f"{url}/enhance_batch", json={"images": [inputs[i].tolist()]})
                ok = response.status_code == 200 and np.array_equal(
                    np.asarray(response.json()[0], dtype=np.uint8), batched[i]
                )
            return response.status_code, ok

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(call, range(50)))
    assert [status for status, _ in results] == [200] * 50
    assert all(ok for _, ok in results)


def test_a_4000x3000_image_is_enhanced_in_tiles(url: str):
    yy, xx = np.mgrid[0:3000, 0:4000]
    image = np.stack([yy % 256, xx % 256, (yy + xx) % 256], axis=2).astype(np.uint8)
    response = post_image(url, png_bytes(Image.fromarray(image)))
    out = decoded(response)
    assert out.size == (8000, 6000)
    assert httpx.get(f"{url}/readyz").status_code == 200


# --- the deployable bento -------------------------------------------------------------------------------------------


def test_a_bento_whose_export_fails_leaves_the_store_as_it_was(
    url: str, champion: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import bentoml

    from gan_enhance.serving import bento

    def export(*_: object) -> Path:
        raise OSError("disk full")

    before = {str(b.tag) for b in bentoml.bentos.list()}
    monkeypatch.setattr(bento, "export", export)
    args = ["--params", str(champion["params_file"]), "--bentofile", str(REPO / bento.BENTOFILE), "--context"]
    with pytest.raises(OSError, match="disk full"):
        bento.main([*args, str(REPO), "--out", str(tmp_path / "dist")])
    assert {str(b.tag) for b in bentoml.bentos.list()} == before


def test_bento_builds_exports_and_serves_from_the_archive(
    url: str, champion: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """What `make bento` does (same store as the running server; `--out dist` relative to the current directory),
    then the exported archive imported into an empty BentoML home and served with the `bentoml` CLI, the way
    `make serve` and the container's entry point do; a request over the timeout gets 504 and the service stays
    ready."""
    import os
    import subprocess
    import sys

    from gan_enhance.serving.bento import BENTOFILE, archive_members, main

    monkeypatch.chdir(tmp_path)
    args = ["--params", str(champion["params_file"]), "--bentofile", str(REPO / BENTOFILE), "--context", str(REPO)]
    assert main([*args, "--out", "dist"]) == 0
    out = tmp_path / "dist"
    (archive,) = out.glob("gan-enhance-*.bento")
    assert any(name.endswith("generator.safetensors") for name in archive_members(archive))
    containerfile = (out / "Containerfile").read_text()
    assert "EXPOSE 3000" in containerfile and "requirements.txt" in containerfile

    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "fresh-home"), **SERVER_ENV}
    bentoml_cli = [sys.executable, "-m", "bentoml"]
    subprocess.run([*bentoml_cli, "import", str(archive)], env=env, check=True, capture_output=True, timeout=120)
    listed = subprocess.run([*bentoml_cli, "list", "-o", "json"], env=env, capture_output=True, text=True, check=True)
    assert "gan-enhance" in listed.stdout

    # the bento's own copy of the code serves, without mlflow (not in the image's requirements)
    bento_src = next((tmp_path / "fresh-home" / "bentos" / "gan-enhance").glob("*/src"))
    probe = (
        "import sys; sys.modules['mlflow'] = None; import serving.service as s, gan_enhance;"
        "assert gan_enhance.__file__.startswith(sys.argv[1]), gan_enhance.__file__;"
        "print(s.EnhanceService.inner().description['registered_model'])"
    )
    checked = subprocess.run(
        [sys.executable, "-c", probe, str(bento_src)], cwd=bento_src, env=env, capture_output=True, text=True
    )
    assert checked.returncode == 0 and champion["model_name"] in checked.stdout, checked.stderr[-2000:]

    from gan_enhance.serving.local import serve_process

    # served the way the container's entry point does, with a short timeout to see it enforced
    with serve_process("gan-enhance:latest", env={**env, "GAN_ENHANCE_SERVE_TIMEOUT_S": "1"}) as (address, _):
        assert httpx.get(f"{address}/model").json()["version"] == str(champion["version"])
        assert len(httpx.get(f"{address}/docs.json").json()["info"]["description"]) < 600  # not the bento's README
        assert post_image(address, SMALL_PNG).status_code == 200
        slow = post_image(address, png_bytes(Image.fromarray(photo(1500, 2000))))  # seconds of tiles
        assert slow.status_code == 504 and "1.0 seconds" in slow.json()["error"], slow.text
        assert httpx.get(f"{address}/readyz").status_code == 200
