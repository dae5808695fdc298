"""Headless Chromium for the tests that look at pages as a user does (`make browser` installs it): the rendered
DOM, and screenshots. Screenshots go to the test's folder, and also to $GAN_ENHANCE_SCREENSHOTS when set (e.g.
`GAN_ENHANCE_SCREENSHOTS=docs/images make test`, to refresh the README's pictures)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

# without the background-networking flags Chromium keeps reaching for Google's hosts, which this network refuses
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
SCREENSHOTS_ENV = "GAN_ENHANCE_SCREENSHOTS"


def chromium() -> str:
    found = shutil.which("chromium")
    assert found, "chromium is not installed; `make browser` installs it (Debian package)"
    return found


def _run(url: str, *extra: str, budget_ms: int = 20000) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *extra, url],
            capture_output=True,
            text=True,
            timeout=120,
        )


def dump_dom(url: str) -> str:
    """The page's DOM after its scripts ran (up to the virtual time budget)."""
    return _run(url, "--dump-dom").stdout


def screenshot(url: str, path: Path, size: tuple[int, int] = (1280, 900)) -> Image.Image:
    """A PNG of the rendered page at `path` (and in $GAN_ENHANCE_SCREENSHOTS under the same name); fails on a blank
    page (a screenshot taken before the page drew anything)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    result = _run(url, f"--screenshot={path}", f"--window-size={size[0]},{size[1]}")
    assert path.is_file(), f"no screenshot of {url}:\n{result.stderr[-3000:]}"
    image = Image.open(path)
    assert image.size == size and np.asarray(image.convert("L")).std() > 10, f"{url} rendered blank"
    folder = os.environ.get(SCREENSHOTS_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(folder) / path.name)
    return image
