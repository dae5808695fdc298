"""The bento as a container: its OCI image built with the container tool present (podman here: no Docker daemon),
FROM the locally built base when no registry answers, run on 127.0.0.1 as a non-root user, and one /enhance
compared with the in-process Enhancer. The slow tests share one image: a fresh machine builds the base (1-3 min)
and the image (about 1 min) once; later runs reuse the cached base and layers (the image in seconds)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gan_enhance.serving import container
from gan_enhance.serving.local import REPO, bentoml_home

from .serving_support import register_tiny_champion

# --- the pieces, without a container tool -----------------------------------------------------------------------


def test_the_cli_explains_itself():
    done = subprocess.run(
        [sys.executable, "-m", "gan_enhance.serving.container", "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert all(word in done.stdout for word in ("build", "check", "run", "--tool", "--base", "127.0.0.1"))


def test_the_container_publishes_its_port_on_localhost_only():
    tool = container.Tool("podman", {})
    command = container.run_command(tool, "gan-enhance:latest", 8123, "x", {"A": "1"})
    assert command[command.index("-p") + 1] == "127.0.0.1:8123:3000"
    assert "A=1" in command and command[-1] == "gan-enhance:latest"
    assert container.run_command(container.Tool("docker", {}), "i", 1, "x", gpus=True)[-3:] == ["--gpus", "all", "i"]
    assert "nvidia.com/gpu=all" in container.run_command(tool, "i", 1, "x", gpus=True)
    with pytest.raises(container.ContainerError, match="install podman"):
        container.run_command(container.Tool("buildah", {}), "i", 1, "x")


def test_base_image_names_and_the_torch_pin():
    assert container.qualified("python:3.11-slim") == "docker.io/library/python:3.11-slim"
    assert container.qualified("bentoml/base:1") == "docker.io/bentoml/base:1"
    assert container.qualified("localhost/gan-enhance-base:abc") == "localhost/gan-enhance-base:abc"
    assert container.qualified("ghcr.io/x/y:1") == "ghcr.io/x/y:1"
    assert container.torch_pin("--find-links x\nnumpy==2.4.6\ntorch==2.13.0\n") == "2.13.0"
    assert container.torch_pin("torchmetrics==1.9.0\n") is None


def test_the_base_image_tag_follows_its_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    recipe = tmp_path / "base-image"
    shutil.copytree(container.BASE_RECIPE, recipe)
    monkeypatch.setattr(container, "BASE_RECIPE", recipe)
    before = container.recipe_hash()
    assert container.recipe_hash() == before
    (recipe / "apt-slim.conf").write_text((recipe / "apt-slim.conf").read_text() + "// changed\n")
    assert container.recipe_hash() != before


def test_an_unknown_tool_is_named():
    with pytest.raises(container.ContainerError, match="unknown container tool 'rkt'"):
        container.detect_tool("rkt")


# --- the real image ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory, tiny_source: Path) -> dict:
    return register_tiny_champion(tmp_path_factory.mktemp("registry"), tiny_source)


@pytest.fixture(scope="module")
def built(champion: dict, tmp_path_factory: pytest.TempPathFactory):
    """The tiny champion's bento containerized (in a BentoML home of its own); the image tag is removed afterwards,
    its layers stay cached for the next run."""
    from gan_enhance.serving.bento import BENTOFILE, build, import_champion

    assert any(map(container.usable, container.TOOLS)), "no container tool: `make container-tools` installs podman"
    with bentoml_home(tmp_path_factory.mktemp("bentoml")) as home:
        (home / "tmp").mkdir(exist_ok=True)
        import_champion(champion["model_name"], champion["tracking_uri"])
        bento = build(REPO / BENTOFILE, REPO)
        image = container.build_image(str(bento.tag))
        try:
            yield image
        finally:
            image.tool.run("rmi", *(["--no-prune"] if image.tool.name != "buildah" else []), image.image, check=False)


@pytest.fixture(scope="module")
def served(built: container.BuiltImage, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("container") / "log"
    with container.running(built.tool, built.image, container.CHECK_ENV, log) as (url, name, ready_s):
        yield url, name, ready_s


@pytest.mark.slow
def test_the_image_is_built_from_a_cached_base_with_cpu_torch(built: container.BuiltImage):
    print(f"\n{built.image}: {built.size / 1e6:.0f} MB in {built.seconds:.0f} s, FROM {built.base}")
    if built.base and built.base.startswith(container.BASE_NAME):
        assert built.base == f"{container.BASE_NAME}:{container.recipe_hash()}"
        start = time.monotonic()
        assert container.local_base_image(built.tool) == built.base  # cached: not rebuilt
        assert time.monotonic() - start < 30
    probe = "import importlib.metadata as m, json, torch; print(json.dumps([torch.__version__, torch.version.cuda, "
    probe += "sorted(d.metadata['Name'].lower() for d in m.distributions())]))"
    done = built.tool.run("run", "--rm", "--network", "none", built.image, "python", "-c", probe)
    version, cuda, names = json.loads(done.stdout.strip().splitlines()[-1])
    assert version.endswith("+cpu") and cuda is None
    assert not [name for name in names if name.startswith(("nvidia-cu", "nvidia-nccl", "triton"))], names
    assert not {"mlflow", "dvc", "prefect"} & set(names)
    assert built.size < 1.9e9  # 1.5 GB when measured: torch 0.75 GB, BentoML's build tools 0.25 GB


@pytest.mark.slow
def test_the_container_runs_as_a_non_root_user_on_localhost(built: container.BuiltImage, served):
    url, name, ready_s = served
    print(f"\nready {ready_s:.1f} s after `{built.tool.name} run`")
    assert ready_s < 60
    assert built.tool.run("image", "inspect", "--format", "{{.Config.User}}", built.image).stdout.strip() == "bentoml"
    assert built.tool.run("exec", name, "id", "-u").stdout.strip() not in ("", "0")
    port = built.tool.run("port", name).stdout.strip()
    assert port == f"3000/tcp -> {url.removeprefix('http://')}" and url.startswith("http://127.0.0.1:")


@pytest.mark.slow
def test_the_container_answers_like_the_in_process_enhancer(built: container.BuiltImage, served, champion: dict):
    url, _, _ = served
    info = httpx.get(f"{url}/model").json()
    assert (info["registered_model"], info["version"]) == (champion["model_name"], str(champion["version"]))
    assert container.round_trip(url, container.in_process_enhancer(built.bento)) == 0
