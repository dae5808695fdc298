"""The service with the other tasks' champions (real `bentoml.serve` on 127.0.0.1): inpainting takes an image and
a mask, translation returns an image of the same size, generation returns seeded samples; each refuses the APIs
that do not fit its model with a 400 that says which one does."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from gan_enhance.serving.local import bentoml_home, register_champion, serve_process

from .conftest import tiny_params_tree

pytestmark = pytest.mark.slow

TASKS = {
    "inpaint": {"name": "gated_unet", "num_feat": 8, "depth": 2},
    "translate": {"name": "cyclegan_resnet", "num_feat": 8, "num_blocks": 1},
    "generate": {"name": "dcgan", "num_feat": 8, "latent_dim": 16},
}
# whole images (tile 0) on one torch thread, in the service and in-process alike: equal outputs
SERVER_ENV = {"GAN_ENHANCE_SERVE_DEVICE": "cpu", "GAN_ENHANCE_SERVE_TORCH_THREADS": "1", "GAN_ENHANCE_SERVE_TILE": "0"}


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module", params=list(TASKS))
def served(request, tmp_path_factory: pytest.TempPathFactory, tiny_source: Path):
    """(task, url, in-process Enhancer of the same champion at the server's thread count)."""
    from gan_enhance.lifecycle.registry import load_enhancer
    from gan_enhance.serving.bento import import_champion

    task = request.param
    root = tmp_path_factory.mktemp(f"registry-{task}")
    tree = tiny_params_tree(tiny_source, root)
    tree["task"]["name"] = task
    tree["model"]["generator"] = TASKS[task]
    if task == "generate":
        tree["model"]["discriminator"] = {"name": "dcgan", "num_feat": 8}
    champion = register_champion(root, tree)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    enhancer = load_enhancer(champion["model_name"], "champion", champion["tracking_uri"], device="cpu", tile=0)
    with bentoml_home(tmp_path_factory.mktemp(f"bentoml-{task}")):
        import_champion(champion["model_name"], champion["tracking_uri"])
        # a process of its own: bentoml.serve in this process would reuse the first task's imported service
        with serve_process(env=SERVER_ENV, log=root / "server.log") as (url, _):
            yield task, url, enhancer
    torch.set_num_threads(threads)


def _image(height: int = 40, width: int = 48) -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_each_task_is_served_through_its_api(served):
    task, url, enhancer = served
    info = httpx.get(f"{url}/model").json()
    assert info["task"] == task and info["alias"] == "champion"
    spec = httpx.get(f"{url}/docs.json").json()
    offered = {path for path in spec["paths"] if path in {"/enhance", "/enhance_batch", "/generate"}}
    assert offered == set(enhancer.apis)  # Swagger shows only the APIs the served model offers
    assert task in spec["info"]["description"]
    image = _image()
    if task == "generate":
        response = httpx.post(f"{url}/generate", json={"n": 3, "seed": 5}, timeout=60)
        assert response.status_code == 200, response.text
        samples = np.asarray(response.json(), dtype=np.uint8)
        assert samples.shape == (3, 32, 32, 3)
        np.testing.assert_array_equal(samples, enhancer.sample(3, seed=5))
        assert np.asarray(httpx.post(f"{url}/generate", json={"n": 1, "seed": 5}).json())[0].tolist() == (
            samples[0].tolist()
        )
        return
    files = {"image": ("a.png", _png(image))}
    mask = None
    if task == "inpaint":
        hole = np.zeros((40, 48), np.uint8)
        hole[10:25, 12:30] = 255
        mask = Image.fromarray(hole)
        files["mask"] = ("m.png", _png(mask))
    response = httpx.post(f"{url}/enhance", files=files, timeout=60)
    assert response.status_code == 200, response.text
    got = np.asarray(Image.open(io.BytesIO(response.content)))
    assert got.shape == (40, 48, 3)
    np.testing.assert_array_equal(got, np.asarray(enhancer.enhance_image(image, mask=mask)))
    if task == "inpaint":
        known = np.asarray(mask) == 0
        np.testing.assert_array_equal(got[known], np.asarray(image)[known])  # only the holes are filled in


def test_apis_that_do_not_fit_the_model_say_which_does(served):
    task, url, _ = served
    image = {"image": ("a.png", _png(_image()))}
    mask = {"mask": ("m.png", _png(Image.new("L", (48, 40), 255)))}
    small_mask = ("m.png", _png(Image.new("L", (8, 8))))
    refused = {
        "inpaint": [
            (lambda: httpx.post(f"{url}/enhance", files=image), "field 'mask' is missing"),
            (
                lambda: httpx.post(f"{url}/enhance", files={**image, "mask": small_mask}),
                "mask is 8x8",
            ),
            (lambda: httpx.post(f"{url}/generate", json={"n": 1}), "does not sample"),
        ],
        "translate": [
            (lambda: httpx.post(f"{url}/enhance", files={**image, **mask}), "takes no mask"),
            (lambda: httpx.post(f"{url}/generate", json={"n": 1}), "does not sample"),
        ],
        "generate": [
            (lambda: httpx.post(f"{url}/enhance", files=image), "makes images from noise"),
            (lambda: httpx.post(f"{url}/generate", json={"n": 100}), "n"),
        ],
    }[task]
    for send, words in refused:
        response = send()
        assert response.status_code == 400, response.text
        body = response.json()
        assert words in body["error"] and body["fix"], body
    assert httpx.get(f"{url}/readyz").status_code == 200
