"""The bento as a running container (what `make container` and `make container-run` do).

1. tool: docker (when its daemon answers), else podman, else buildah (builds only; running needs docker or podman).
   Where podman's defaults cannot start a container (sandboxes: rlimits that cannot be raised, cgroups crun cannot
   drive), CONTAINERS_CONF points at deploy/containers.conf; a machine where the defaults work never gets it.
2. base: the bento's FROM image when the tool has it or can pull it; otherwise (no registry) a Debian base built
   locally from deploy/base-image/ (mmdebstrap), tagged with the recipe's content hash and rebuilt only when the
   recipe changes; its root filesystem is cached under ~/.cache/gan-enhance/base-image/.
3. torch: when pip here finds the CPU wheel of the bento's torch pin (a local wheelhouse, a mirror), it is saved in
   ~/.cache/gan-enhance/wheels and mounted into the build (podman/buildah) as the place uv takes torch from;
   otherwise the image build takes it from the PyTorch CPU index (serving/bentofile.yaml, UV_EXTRA_INDEX_URL).
4. `bentoml containerize BENTO --backend TOOL`, tagged <bento name>:<bento version> (and :latest by the CLI).
5. check: the image runs on 127.0.0.1 at a free port, /readyz is awaited, and one /enhance answer must equal the
   in-process Enhancer's on the same model; then the container is stopped and removed.

    .venv/bin/python -m gan_enhance.serving.container check [--bento gan-enhance:latest] [--tool podman]
    .venv/bin/python -m gan_enhance.serving.container build
    .venv/bin/python -m gan_enhance.serving.container run [--port 3000] [-e GAN_ENHANCE_SERVE_WORKERS=2] [--gpus]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gan_enhance.device import TELEMETRY_OFF, disable_telemetry
from gan_enhance.servers import HOST, free_port, server_process

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
BASE_RECIPE = DEPLOY / "base-image"
PODMAN_CONF = DEPLOY / "containers.conf"
BASE_NAME = "localhost/gan-enhance-base"
TOOLS = ("docker", "podman", "buildah")
SERVICE_PORT = 3000  # what the bento image exposes
WHEELS_IN_BUILD = "/wheels"
CA_DIR = Path("/usr/local/share/ca-certificates")
APT_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")


class ContainerError(RuntimeError):
    """A step of building or running the image failed; the message names the fix."""


def cache_dir() -> Path:
    """~/.cache/gan-enhance (or $XDG_CACHE_HOME/gan-enhance): the base image's root filesystem and the wheels."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gan-enhance"


# --- the tool ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tool:
    """A container tool and the environment its commands run with."""

    name: str
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`<tool> ARGS`, output captured; ContainerError with its output when it fails (or times out) and `check`."""
        try:
            done = subprocess.run([self.name, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            done = subprocess.CompletedProcess([self.name, *args], 124, "", f"timed out after {timeout:.0f} s")
        if check and done.returncode != 0:
            raise ContainerError(f"`{self.name} {' '.join(args)}` failed:\n{(done.stderr or done.stdout)[-3000:]}")
        return done

    def has_image(self, image: str) -> bool:
        """Whether the tool's store holds `image`."""
        inspect = ["inspect", "--type", "image"] if self.name == "buildah" else ["image", "inspect"]
        return self.run(*inspect, image, check=False).returncode == 0

    def image_size(self, image: str) -> int:
        """The image's size in bytes as the tool reports it (uncompressed layers; buildah only rounds it)."""
        if self.name != "buildah":
            return int(self.run("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())
        number, unit = self.run("images", "--format", "{{.Size}}", image).stdout.split()[:2]
        return round(float(number) * 1000 ** ["B", "kB", "MB", "GB", "TB"].index(unit))


def usable(name: str) -> bool:
    """docker: its daemon answers; podman, buildah: the binary is there."""
    if shutil.which(name) is None:
        return False
    if name != "docker":
        return True
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def detect_tool(preference: str | None = None) -> Tool:
    """The tool named, or the first usable of docker, podman, buildah."""
    names = [preference] if preference else list(TOOLS)
    for name in names:
        if name not in TOOLS:
            raise ContainerError(f"unknown container tool '{name}'; use one of {', '.join(TOOLS)}")
        if usable(name):
            return Tool(name, {**os.environ, **TELEMETRY_OFF})
    raise ContainerError(
        f"no usable container tool ({' or '.join(names)}): `make container-tools` installs podman and buildah "
        "(Debian), or start the Docker daemon"
    )


def starts_containers(tool: Tool, image: str) -> str:
    """Start a throwaway container of `image`; '' when it ran, else the tool's error."""
    if tool.name == "buildah":
        name = f"gan-enhance-probe-{uuid.uuid4().hex[:8]}"
        done = tool.run("from", "--name", name, image, check=False)
        if done.returncode == 0:
            done = tool.run("run", name, "true", check=False)
            tool.run("rm", name, check=False)
    else:
        done = tool.run("run", "--rm", "--network", "none", image, "true", check=False)
    return "" if done.returncode == 0 else (done.stderr or done.stdout).strip()[-1500:]


def configured(tool: Tool, image: str) -> Tool:
    """The tool with CONTAINERS_CONF=deploy/containers.conf when podman/buildah cannot start a container of `image`
    with their defaults (and the user has not chosen a CONTAINERS_CONF); docker is returned as it is."""
    if tool.name == "docker" or "CONTAINERS_CONF" in tool.env:
        return tool
    default_error = starts_containers(tool, image)
    if not default_error:
        return tool
    fixed = Tool(tool.name, {**tool.env, "CONTAINERS_CONF": str(PODMAN_CONF)})
    fixed_error = starts_containers(fixed, image)
    if fixed_error:
        raise ContainerError(
            f"{tool.name} cannot start a container of {image}, with its defaults ({default_error}) nor with "
            f"CONTAINERS_CONF={PODMAN_CONF} ({fixed_error}); check `{tool.name} info`"
        )
    print(
        f"{tool.name}: its defaults cannot start containers here ({default_error.splitlines()[-1]}); "
        f"using CONTAINERS_CONF={PODMAN_CONF}"
    )
    return fixed


# --- the base image ---------------------------------------------------------------------------------------------


def uv_binary() -> Path:
    """The uv executable copied into the base image (the one next to this Python, else on PATH)."""
    beside = Path(sys.executable).parent / "uv"
    found = beside if beside.is_file() else Path(shutil.which("uv") or "")
    if not found.is_file():
        raise ContainerError("no uv executable: `pip install uv` into the project's virtualenv")
    return found


def base_inputs() -> list[Path]:
    """Every file the base image is made from: the recipe, the uv binary, the extra CA certificates, apt sources."""
    files = sorted(path for path in BASE_RECIPE.rglob("*") if path.is_file())
    files += [uv_binary(), *sorted(CA_DIR.glob("*.crt"))]
    return files + ([APT_SOURCES] if APT_SOURCES.is_file() else [])


def recipe_hash() -> str:
    """sha256 over the names and contents of base_inputs(): the base image's tag."""
    digest = hashlib.sha256()
    for path in base_inputs():
        name = path.relative_to(BASE_RECIPE) if path.is_relative_to(BASE_RECIPE) else path.name
        digest.update(f"{name}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build_rootfs(target: Path) -> float:
    """Run deploy/base-image/build.sh (mmdebstrap) into `target`; returns the seconds it took."""
    if shutil.which("mmdebstrap") is None:
        raise ContainerError("mmdebstrap is missing: `make container-tools` installs it (Debian)")
    sources = str(APT_SOURCES) if APT_SOURCES.is_file() else "http://deb.debian.org/debian"
    partial = target.with_name(f"partial-{target.name}")  # mmdebstrap picks the output format by the extension
    command = ["bash", str(BASE_RECIPE / "build.sh"), str(partial), str(uv_binary()), str(CA_DIR), sources]
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise ContainerError(f"building the base image's root filesystem failed:\n{done.stderr[-3000:]}")
    partial.replace(target)
    return time.monotonic() - start


def local_base_image(tool: Tool) -> str:
    """localhost/gan-enhance-base:<recipe hash>, built when the tool's store lacks it: the root filesystem from the
    cache (made by build.sh when the cache lacks it, older ones removed), then deploy/base-image/Containerfile."""
    tag = recipe_hash()
    image = f"{BASE_NAME}:{tag}"
    if tool.has_image(image):
        return image
    cache = cache_dir() / "base-image"
    context = cache / tag  # the build context: rootfs.tar alone
    rootfs = context / "rootfs.tar"
    if not rootfs.is_file():
        for old in cache.glob("*/rootfs.tar"):
            shutil.rmtree(old.parent)
        context.mkdir(parents=True, exist_ok=True)
        print(f"building the base image's root filesystem (mmdebstrap, a few minutes) into {rootfs}")
        print(f"  took {build_rootfs(rootfs):.0f} s")
    start = time.monotonic()
    tool.run("build", "-t", image, "-f", str(BASE_RECIPE / "Containerfile"), str(context), timeout=1800)
    print(f"built base image {image} in {time.monotonic() - start:.0f} s ({tool.image_size(image) / 1e6:.0f} MB)")
    return image


def qualified(image: str) -> str:
    """docker.io/library/python:3.11-slim for python:3.11-slim (podman resolves no short names without a
    registries.conf that lists search registries)."""
    first = image.split("/")[0]
    if "/" in image and ("." in first or ":" in first or first == "localhost"):
        return image
    return f"docker.io/{image}" if "/" in image else f"docker.io/library/{image}"


def choose_base(tool: Tool, bento_base: str, mode: str) -> str | None:
    """The image to build FROM (podman/buildah `--from`), or None to keep the Containerfile's FROM (docker, which
    has no --from). mode: auto (the bento's base when present or pullable, else the local one), local, registry."""
    if tool.name == "docker":
        if mode == "local":
            raise ContainerError(
                "docker build cannot replace the FROM image: use --tool podman or buildah for --base local"
            )
        return None
    wanted = qualified(bento_base)
    if mode != "local" and (
        tool.has_image(wanted) or tool.run("pull", wanted, check=False, timeout=300).returncode == 0
    ):
        return wanted
    if mode == "registry":
        raise ContainerError(f"cannot pull {wanted}: no registry reachable? use --base local (built with mmdebstrap)")
    print(f"{wanted} cannot be pulled: using the locally built base image")
    return local_base_image(tool)


# --- the CPU torch wheel ----------------------------------------------------------------------------------------


def torch_pin(requirements: str) -> str | None:
    """The version in the `torch==X` line of a requirements text."""
    for line in requirements.splitlines():
        name, _, version = line.strip().partition("==")
        if name.strip() == "torch" and version:
            return version.strip()
    return None


def cpu_torch_wheels(version: str, python_version: str) -> Path | None:
    """A folder holding torch==<version>+cpu for the image (cp<python>, manylinux, this machine's architecture),
    fetched by pip from wherever this machine's pip configuration finds it (a wheelhouse, a mirror, an index);
    None when pip finds none (the image build then takes torch from the bento's UV_EXTRA_INDEX_URL)."""
    folder = cache_dir() / "wheels"
    wanted = f"torch-{version}+cpu-cp{python_version.replace('.', '')}-"
    if any(path.name.startswith(wanted) for path in folder.glob("torch-*.whl")):
        return folder
    arch = platform.machine()
    platforms = [arg for minor in range(36, 16, -1) for arg in ("--platform", f"manylinux_2_{minor}_{arch}")]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    command += ["--implementation", "cp", "--python-version", python_version, *platforms, "--dest", str(folder)]
    try:
        done = subprocess.run([*command, f"torch=={version}+cpu"], capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        return None
    return folder if done.returncode == 0 else None


# --- building ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltImage:
    """The image built from a bento and how."""

    image: str
    bento: str
    tool: Tool
    base: str | None
    wheels: Path | None
    seconds: float
    size: int


def containerize_command(bento: Any, tool: Tool, base: str | None, wheels: Path | None) -> list[str]:
    """The `bentoml containerize` command line."""
    name, version = bento.tag.name, bento.tag.version
    command = [sys.executable, "-m", "bentoml", "containerize", str(bento.tag), "--backend", tool.name]
    command += ["--image-tag", f"{name}:{version}"]
    if base:
        command += ["--opt", f"from={base}"]
    if wheels and tool.name != "docker":  # docker build cannot mount a folder
        command += ["--opt", f"volume={wheels}:{WHEELS_IN_BUILD}:ro"]
        command += ["--opt", f"build-arg=UV_FIND_LINKS={WHEELS_IN_BUILD}", "--opt", "build-arg=UV_EXTRA_INDEX_URL="]
    if tool.name == "buildah":
        command += ["--opt", "layers"]  # reuse unchanged layers (podman and docker do by default)
    return command


def bentoml_home_dir() -> str:
    """The BentoML home in use (BENTOML_HOME; `make` sets ./bentoml_home)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return str(BentoMLContainer.bentoml_home.get())


def build_image(bento_tag: str = "gan-enhance:latest", tool: Tool | None = None, base_mode: str = "auto") -> BuiltImage:
    """Build the bento's image (steps 1-4 of the module docstring)."""
    import bentoml

    try:
        bento = bentoml.bentos.get(bento_tag)
    except bentoml.exceptions.NotFound as exc:
        raise ContainerError(f"no bento {bento_tag} in {bentoml_home_dir()}: `make bento` builds it") from exc
    tool = tool or detect_tool()
    image_info = bento.info.image
    base = choose_base(tool, image_info.base_image, base_mode)
    if base:
        tool = configured(tool, base)
    pin = torch_pin((Path(bento.path) / "env/python/requirements.txt").read_text())
    wheels = cpu_torch_wheels(pin, image_info.python_version) if pin else None
    command = containerize_command(bento, tool, base, wheels)
    print("$ bentoml " + shlex.join(command[3:]))
    start = time.monotonic()
    done = subprocess.run(command, env=tool.env, capture_output=True, text=True)
    seconds = time.monotonic() - start
    image = f"{bento.tag.name}:{bento.tag.version}"
    if done.returncode != 0 or not tool.has_image(image):
        raise ContainerError(f"`bentoml containerize` did not build {image}:\n{(done.stdout + done.stderr)[-4000:]}")
    return BuiltImage(image, str(bento.tag), tool, base, wheels, seconds, tool.image_size(image))


# --- running and checking ---------------------------------------------------------------------------------------


def run_command(
    tool: Tool, image: str, port: int, name: str, env: dict[str, str] | None = None, gpus: bool = False
) -> list[str]:
    """`<tool> run` in the foreground: removed on exit, the service's port published on 127.0.0.1 only."""
    if tool.name == "buildah":
        raise ContainerError("buildah builds images but does not run services: install podman (`make container-tools`)")
    command = [tool.name, "run", "--rm", "--name", name, "-p", f"{HOST}:{port}:{SERVICE_PORT}"]
    for key, value in (env or {}).items():
        command += ["-e", f"{key}={value}"]
    if gpus:
        command += ["--gpus", "all"] if tool.name == "docker" else ["--device", "nvidia.com/gpu=all"]
    return [*command, image]


@contextlib.contextmanager
def running(
    tool: Tool, image: str, env: dict[str, str] | None = None, log: Path | None = None, timeout_s: float = 180
) -> Iterator[tuple[str, str, float]]:
    """The image running on 127.0.0.1 at a free port; yields (url, container name, seconds to ready) once /readyz
    answers 200; the container is stopped and removed afterwards."""
    port, name = free_port(), f"gan-enhance-{uuid.uuid4().hex[:8]}"
    url = f"http://{HOST}:{port}"
    start = time.monotonic()
    try:
        with server_process(run_command(tool, image, port, name, env), f"{url}/readyz", log, tool.env, None, timeout_s):
            yield url, name, time.monotonic() - start
    finally:
        tool.run("rm", "--force", name, check=False)


def probe_image(height: int = 96, width: int = 80) -> np.ndarray:
    """A deterministic RGB test image: gradients with seeded noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([yy * 255 / height, xx * 255 / width, (yy + xx) * 127 / (height + width)], axis=2)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def in_process_enhancer(bento_tag: str) -> Any:
    """The Enhancer on the bento's model with the service's tiling (the model's registered tile settings)."""
    import bentoml

    from gan_enhance.inference import Enhancer
    from gan_enhance.serving.model import generator_dir, model_config

    bento = bentoml.bentos.get(bento_tag)
    (model_tag,) = {model.tag for service in bento.info.services for model in service.models}
    path = Path(bentoml.models.get(model_tag).path)
    registered = model_config(path)
    tile, tile_pad = int(registered.get("tile", 256)), int(registered.get("tile_pad", 16))
    return Enhancer.from_dir(generator_dir(path), device="cpu", tile=tile, tile_pad=tile_pad)


CHECK_ENV = {"GAN_ENHANCE_SERVE_DEVICE": "cpu", "GAN_ENHANCE_SERVE_TORCH_THREADS": "1"}  # one thread, as in-process


def round_trip(url: str, enhancer: Any) -> int:
    """POST probe_image() to /enhance; the largest absolute difference to the in-process Enhancer's output
    (0: equal). ContainerError when the answer is not an image of the expected size."""
    import httpx
    import torch
    from PIL import Image

    source = Image.fromarray(probe_image())
    buffer = io.BytesIO()
    source.save(buffer, "PNG")
    response = httpx.post(f"{url}/enhance", files={"image": ("probe.png", buffer.getvalue())}, timeout=120)
    if response.status_code != 200:
        raise ContainerError(f"/enhance answered {response.status_code}: {response.text[:500]}")
    got = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), dtype=np.int16)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = np.asarray(enhancer.enhance_image(source), dtype=np.int16)
    finally:
        torch.set_num_threads(threads)
    if got.shape != expected.shape:
        raise ContainerError(
            f"/enhance returned {got.shape[1]}x{got.shape[0]}, expected {expected.shape[1]}x{expected.shape[0]}"
        )
    return int(np.abs(got - expected).max())


def check(built: BuiltImage) -> dict[str, Any]:
    """Run the built image, wait for /readyz, compare one /enhance with the in-process Enhancer; the figures."""
    enhancer = in_process_enhancer(built.bento)
    with (
        tempfile.TemporaryDirectory() as folder,
        running(built.tool, built.image, CHECK_ENV, Path(folder) / "log") as (
            url,
            name,
            ready_s,
        ),
    ):
        user = built.tool.run("exec", name, "id", "-u").stdout.strip()
        difference = round_trip(url, enhancer)
    if difference:
        raise ContainerError(f"the container's /enhance differs from the in-process Enhancer by up to {difference}")
    return {"ready_s": ready_s, "uid": user, "max_difference": difference}


def env_item(text: str) -> str:
    """argparse type of -e: NAME=VALUE."""
    if "=" not in text or text.startswith("="):
        raise argparse.ArgumentTypeError(f"'{text}' is not NAME=VALUE")
    return text


def main(argv: list[str] | None = None) -> int:
    """build, check (build, then run and compare) or run (serve the built image in the foreground)."""
    disable_telemetry()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("build", "check", "run"))
    parser.add_argument("--bento", default="gan-enhance:latest", help="the bento to containerize (build, check)")
    parser.add_argument("--image", default="gan-enhance:latest", help="the image to serve (run)")
    parser.add_argument(
        "--tool", choices=TOOLS, help="default: docker if its daemon answers, else podman, else buildah"
    )
    parser.add_argument(
        "--base", choices=("auto", "local", "registry"), default="auto", help="FROM image (podman, buildah)"
    )
    parser.add_argument("--port", type=int, default=SERVICE_PORT, help="host port on 127.0.0.1 (run)")
    parser.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        type=env_item,
        metavar="NAME=VALUE",
        help="e.g. GAN_ENHANCE_SERVE_WORKERS=2 (run)",
    )
    parser.add_argument("--gpus", action="store_true", help="all NVIDIA GPUs (run; docker --gpus, podman CDI)")
    args = parser.parse_args(argv)
    try:
        tool = detect_tool(args.tool)
        if args.action == "run":
            if not tool.has_image(args.image):
                raise ContainerError(f"no image {args.image}: `make container` builds it")
            tool = configured(tool, args.image)
            env = dict(item.split("=", 1) for item in args.env)  # each checked by env_item
            command = run_command(tool, args.image, args.port, f"gan-enhance-{args.port}", env, args.gpus)
            print(f"serving {args.image} on http://{HOST}:{args.port} (Ctrl+C stops it)\n$ {' '.join(command)}")
            os.execvpe(command[0], command, tool.env)
        built = build_image(args.bento, tool, args.base)
        built.tool.run("tag", built.image, f"{built.image.rsplit(':', 1)[0]}:latest")  # what `run` serves
        print(
            f"built {built.image} with {built.tool.name} in {built.seconds:.0f} s: {built.size / 1e6:.0f} MB"
            f"{f', FROM {built.base}' if built.base else ''}"
            f"{f', torch from {built.wheels}' if built.wheels else ''}"
        )
        if args.action == "check":
            figures = check(built)
            print(
                f"ready in {figures['ready_s']:.1f} s as uid {figures['uid']}; /enhance equals the in-process Enhancer"
            )
    except RuntimeError as exc:  # ContainerError, or the container not getting ready (with its log)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
