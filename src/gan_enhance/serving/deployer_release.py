"""One release of the deployer: the bento built from the registry version that holds the alias, and its server
started on a free port of 127.0.0.1 (through gan_enhance.serving.local.serve_process), ready and checked."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from gan_enhance.serving.deployer_proxy import Upstream


@dataclass(frozen=True)
class Release:
    """A built bento: the registry version inside it and how long import + build took."""

    version: str
    bento: str
    path: Path
    build_s: float


def build_release(model_name: str, tracking_uri: str | None, alias: str, bentofile: Path, context: Path) -> Release:
    """Import the version holding `alias` into the BentoML store and `bentoml build` the bento around it (what
    `make bento` does, without the export). The version is the one imported, read back from the model's labels:
    the alias may have moved again since the caller looked."""
    from gan_enhance.serving.bento import build, import_champion

    start = time.monotonic()
    model = import_champion(model_name, tracking_uri, alias)
    bento = build(bentofile, context)
    return Release(model.info.labels["registered_version"], str(bento.tag), Path(bento.path), time.monotonic() - start)


def start_server(release: Release, logs: Path, env: dict[str, str] | None = None) -> Upstream:
    """`bentoml serve` of the release's bento on a free port; returns it once /readyz answers and /model names the
    release's version. RuntimeError (the server stopped again) otherwise."""
    from gan_enhance.serving.local import serve_process

    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"bento-v{release.version}-{time.strftime('%Y%m%dT%H%M%S')}.log"
    stack = contextlib.ExitStack()
    try:
        url, _ = stack.enter_context(serve_process(release.bento, env=env, cwd=release.path, log=log))
        served = httpx.get(f"{url}/model", timeout=30).json().get("version")
        if served != release.version:
            raise RuntimeError(f"the bento {release.bento} serves version {served}, not {release.version}")
    except BaseException:
        stack.close()
        raise
    return Upstream(url=url, version=release.version, bento=release.bento, close=stack.close)
