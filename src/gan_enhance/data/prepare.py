"""The prepare stage: validate source images, normalise them to RGB PNGs, split by content hash."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from gan_enhance.config import DataParams, Params
from gan_enhance.data.domains import domain_sources
from gan_enhance.data.image_io import ImageError, to_uint8
from gan_enhance.data.sources import SourceImage, list_source
from gan_enhance.errors import GanEnhanceError
from gan_enhance.tasks import build_task

SPLITS = ("train", "val", "test")
MANIFEST_FILE = "manifest.csv"
REPORT_FILE = "report.json"
DOMAIN_B_DIR = "domain_b"  # two-domain tasks (translate): domain B, prepared like the main folder


class PrepareError(GanEnhanceError, RuntimeError):
    """The source gave nothing usable; the message says how many images were rejected and why."""


@dataclass(frozen=True)
class ManifestRow:
    file: str  # relative to the prepared folder
    source: str
    sha256: str
    width: int
    height: int
    split: str


def content_hash(rgb: np.ndarray) -> str:
    """Hash of the decoded pixels (not the file bytes), so re-encoding an image does not move it."""
    digest = hashlib.sha256(f"{rgb.shape}|{rgb.dtype}".encode())
    digest.update(np.ascontiguousarray(rgb).tobytes())
    return digest.hexdigest()


def assign_split(sha256: str, val: float, test: float, salt: str = "") -> str:
    """Deterministic split from the content hash: adding images never moves existing ones."""
    position = int(hashlib.sha256((salt + sha256).encode()).hexdigest()[:12], 16) / 16**12
    if position < test:
        return "test"
    if position < test + val:
        return "val"
    return "train"


def _safe_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).with_suffix("").as_posix()).strip("._")[:60] or "image"


def read_manifest(prepared_dir: Path) -> list[ManifestRow]:
    path = Path(prepared_dir) / MANIFEST_FILE
    if not path.is_file():
        raise PrepareError(f"no manifest at '{path}'; run the prepare stage first (`gan-enhance prepare`)")
    with path.open(newline="") as handle:
        return [
            ManifestRow(**{**row, "width": int(row["width"]), "height": int(row["height"])})
            for row in csv.DictReader(handle)
        ]


def manifest_hash(prepared_dir: Path) -> str:
    """Identity of a prepared data set: the hash of its manifest (which holds every image's hash)."""
    return hashlib.sha256((Path(prepared_dir) / MANIFEST_FILE).read_bytes()).hexdigest()[:16]


def _prepare_into(
    sources: list[SourceImage], out: Path, data: DataParams, needed: int, label: str
) -> list[ManifestRow]:
    """Validate, convert and split `sources` into `out` (manifest + report); PrepareError when nothing is usable."""
    rows: list[ManifestRow] = []
    rejected: list[dict[str, str]] = []
    seen: dict[str, str] = {}
    for split in SPLITS:
        (out / split).mkdir(parents=True)
    for item in tqdm(sources, desc="prepare", unit="img", disable=None):
        try:
            rgb = item.read(data.max_pixels)
        except ImageError as exc:
            rejected.append({"source": item.name, "reason": str(exc).removeprefix(f"{item.path}: ")})
            continue
        height, width = rgb.shape[:2]
        if min(height, width) < needed:
            rejected.append({"source": item.name, "reason": f"too small: {width}x{height}, shorter side < {needed}"})
            continue
        rgb = to_uint8(rgb)
        digest = content_hash(rgb)
        if digest in seen:
            rejected.append({"source": item.name, "reason": f"duplicate of {seen[digest]}"})
            continue
        seen[digest] = item.name
        split = assign_split(digest, data.split.val, data.split.test, data.split.salt)
        relative = f"{split}/{_safe_stem(item.name)}-{digest[:8]}.png"
        Image.fromarray(rgb).save(out / relative, optimize=False)
        rows.append(ManifestRow(relative, item.name, digest, width, height, split))

    rows.sort(key=lambda r: r.file)
    counts = Counter(r.split for r in rows)
    report = {
        "source": label,
        "found": len(sources),
        "accepted": len(rows),
        "rejected": len(rejected),
        "per_split": {s: counts.get(s, 0) for s in SPLITS},
        "rejections": rejected,
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    with (out / MANIFEST_FILE).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(ManifestRow.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)

    if not rows:
        reasons = Counter(r["reason"].split(":")[0] for r in rejected).most_common(5)
        raise PrepareError(
            f"no usable images in '{label}': found {len(sources)}, rejected {len(rejected)}"
            + (f" (most common reasons: {', '.join(f'{n}x {why}' for why, n in reasons)})" if reasons else "")
            + f". Details: {out / REPORT_FILE}. Point the source at a folder of PNG/JPEG/WebP/TIFF/BMP images"
            f" whose shorter side is at least {needed} px (or lower data.min_side)."
        )
    for split in ("train", "test"):
        if not counts.get(split):
            raise PrepareError(
                f"no image of '{label}' landed in the {split} split ({len(rows)} usable images, data.split = "
                f"{data.split.model_dump()}); add images, change the fractions or set data.split.salt"
            )
    return rows


def prepare(
    data: DataParams, min_side: int | None = None, base: Path = Path("."), source_b: str | None = None
) -> list[ManifestRow]:
    """Run the stage; returns the manifest rows. `min_side` (e.g. the training patch) overrides data.min_side
    when larger. With `source_b` (two-domain tasks), domain A comes from data.source into the prepared folder and
    domain B into its DOMAIN_B_DIR subfolder, each with its own manifest, report and split."""
    out = base / data.prepared_dir
    needed = max(data.min_side, min_side or 0)
    if source_b is None:
        domains = [(list_source(data.source, base), out, data.source)]
    else:
        sources_a, sources_b = domain_sources(data.source, source_b, base)
        domains = [(sources_a, out, data.source), (sources_b, out / DOMAIN_B_DIR, source_b)]
    if out.exists():
        shutil.rmtree(out)
    return [row for sources, folder, label in domains for row in _prepare_into(sources, folder, data, needed, label)]


def prepare_stage(params: Params, base: Path = Path(".")) -> list[ManifestRow]:
    """The prepare stage for the chosen task: its minimum image side, and its second domain where it has one."""
    task = build_task(params.task)
    return prepare(params.data, min_side=task.min_side(params.train.patch_size), base=base, source_b=task.source_b)
