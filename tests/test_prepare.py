import csv
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from gan_enhance.config import DataParams
from gan_enhance.data.prepare import PrepareError, assign_split, prepare, read_manifest

from .conftest import photo_crops


def _params(source: Path, out: Path, **kwargs) -> DataParams:
    return DataParams(source=str(source), prepared_dir=out, min_side=32, **kwargs)


def test_folder_is_prepared_with_manifest_report_and_rejections(tmp_path: Path, tiny_source: Path):
    source = tmp_path / "src"
    shutil.copytree(tiny_source, source / "nested")
    (source / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    Image.new("RGB", (20, 20)).save(source / "small.png")
    Image.new("L", (40, 40), 50).save(source / "gray.jpg")
    (source / "notes.txt").write_text("ignored: not an image suffix")
    rows = prepare(_params(source, tmp_path / "out"))
    assert len(rows) == 13  # 12 photos + the grayscale one
    assert {r.split for r in rows} == {"train", "val", "test"}
    for row in rows:
        image = Image.open(tmp_path / "out" / row.file)
        assert image.mode == "RGB" and image.size == (row.width, row.height)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    reasons = {r["source"]: r["reason"] for r in report["rejections"]}
    assert "not a readable image" in reasons["broken.png"]
    assert "too small" in reasons["small.png"]
    with (tmp_path / "out" / "manifest.csv").open() as handle:
        assert next(csv.reader(handle)) == ["file", "source", "sha256", "width", "height", "split"]


def test_split_is_stable_when_images_are_added(tmp_path: Path, tiny_source: Path):
    before = {r.sha256: r.split for r in prepare(_params(tiny_source, tmp_path / "a"))}
    grown = tmp_path / "grown"
    shutil.copytree(tiny_source, grown)
    for i, crop in enumerate(photo_crops(20, size=48)[12:]):
        Image.fromarray(crop).save(grown / f"extra_{i}.png")
    after = {r.sha256: r.split for r in prepare(_params(grown, tmp_path / "b"))}
    assert all(after[h] == split for h, split in before.items())
    assert assign_split("ab" * 32, 0.1, 0.2) == assign_split("ab" * 32, 0.1, 0.2)


def test_duplicates_are_rejected(tmp_path: Path, tiny_source: Path):
    source = tmp_path / "dup"
    shutil.copytree(tiny_source, source)
    shutil.copy(source / "photo_00.png", source / "copy_of_photo_00.png")
    prepare(_params(source, tmp_path / "out"))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any("duplicate of" in r["reason"] for r in report["rejections"])


def test_all_rejected_source_fails_with_counts_and_reasons(tmp_path: Path):
    source = tmp_path / "bad"
    source.mkdir()
    for i in range(3):
        (source / f"b{i}.png").write_bytes(b"")
    Image.new("RGB", (10, 10)).save(source / "tiny.png")
    with pytest.raises(PrepareError, match=r"found 4, rejected 4.*3x the file is empty.*1x too small"):
        prepare(_params(source, tmp_path / "out"))


def test_missing_or_empty_source(tmp_path: Path):
    from gan_enhance.data.sources import SourceError

    with pytest.raises(SourceError, match="does not exist"):
        prepare(_params(tmp_path / "nope", tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrepareError, match="found 0"):
        prepare(_params(tmp_path / "empty", tmp_path / "out"))


def test_embedded_source_lists_real_photos(tmp_path: Path):
    rows = prepare(DataParams(source="embedded", prepared_dir=tmp_path / "p"), min_side=96)
    assert len(rows) >= 15
    assert read_manifest(tmp_path / "p") == rows
