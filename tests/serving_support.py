"""What only the serving tests use, on top of gan_enhance.serving.local: the tests' tiny champion and an in-process
`bentoml.serve`."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from gan_enhance.servers import free_port
from gan_enhance.serving.local import REPO, SERVICE, register_champion


def register_tiny_champion(root: Path, source: Path) -> dict[str, Any]:
    """register_champion for the tests' tiny params: srvgg x2 with 8 features, 2 convolutions."""
    from .conftest import tiny_params_tree

    return register_champion(root, tiny_params_tree(source, root))


def wait_ready(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s")


@contextlib.contextmanager
def serve(bento: str = SERVICE, env: dict[str, str] | None = None, working_dir: Path = REPO) -> Iterator[str]:
    """`bentoml.serve` on 127.0.0.1 at a free port with GAN_ENHANCE_SERVE_* from `env`; yields the URL once
    /readyz says yes; the server is stopped on exit."""
    import bentoml

    port = free_port()
    saved = {key: os.environ.get(key) for key in env or {}}
    os.environ.update(env or {})
    try:
        server = bentoml.serve(bento, working_dir=str(working_dir), host="127.0.0.1", port=port)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
        yield url
    finally:
        server.stop()
