"""The team stack: PostgreSQL, the S3 store, MLflow and Prefect started for real on 127.0.0.1 by
`python -m gan_enhance.stack up` (once for this module), and the project used against it by configuration only:
register -> promote -> load by alias -> serve, concurrent registrations, the retrain flow, `dvc push`/`dvc pull`
through the S3 remote, and PostgreSQL stopped in the middle of a registration. Also, without servers: the generated
.env, pid files (stale ones included) and deploy/compose.yaml.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from gan_enhance.servers import free_port
from gan_enhance.stack import processes, services
from gan_enhance.stack.processes import group_members, running_pid, start_detached, stop_pid_file
from gan_enhance.stack.settings import DEFAULT_PORTS, S3_INTERNAL_PORTS, StackError, StackSettings, load_settings

from .conftest import REPO, tiny_params_tree

STACK = [sys.executable, "-m", "gan_enhance.stack"]
BIN = Path(sys.executable).parent
COMPOSE = REPO / "deploy" / "compose.yaml"
MODEL = "team-sr-x2"
SERVE_ENV = {"GAN_ENHANCE_SERVE_DEVICE": "cpu", "GAN_ENHANCE_SERVE_TILE": "0", "GAN_ENHANCE_SERVE_TORCH_THREADS": "1"}
UP_TIMEOUT_S = 900  # three readiness waits of services.READY_TIMEOUT_S at most, and initdb
DOWN_TIMEOUT_S = 300


def _ports_env(root: Path) -> dict[str, str]:
    """STACK_* choices for a new .env: the folder under `root` and free ports (the defaults may be taken)."""
    ports = {key: str(free_port()) for key in DEFAULT_PORTS}
    internal = ",".join(str(free_port()) for _ in range(S3_INTERNAL_PORTS))
    return {"STACK_DIR": str(root / "data"), **ports, "STACK_S3_INTERNAL_PORTS": internal}


# --- without servers --------------------------------------------------------------------------------------------


def test_env_file_is_generated_once_private_and_random(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for key, value in _ports_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    first = load_settings(tmp_path / "a.env", create=True)
    assert stat.S_IMODE((tmp_path / "a.env").stat().st_mode) == 0o600
    again = load_settings(tmp_path / "a.env", create=True)
    assert again.values == first.values  # read, not regenerated
    other = load_settings(tmp_path / "b.env", create=True)
    for secret in ("POSTGRES_PASSWORD", "STACK_DB_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert len(first.values[secret]) >= 20 and first.values[secret] != other.values[secret]
    assert first.dir == tmp_path / "data"

    exports = subprocess.run(
        [*STACK, "env", "--env-file", str(tmp_path / "a.env")], capture_output=True, text=True, check=True
    ).stdout
    assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{first.values['STACK_MLFLOW_PORT']}" in exports
    assert f"export AWS_SECRET_ACCESS_KEY={first.values['AWS_SECRET_ACCESS_KEY']}" in exports
    assert "export PREFECT_API_URL=http://127.0.0.1:" in exports and "export AWS_ENDPOINT_URL_S3=" in exports

    (tmp_path / "a.env").chmod(0o644)
    with pytest.raises(StackError, match=r"readable by others.*chmod 600"):
        load_settings(tmp_path / "a.env")
    with pytest.raises(StackError, match="make stack-up"):
        load_settings(tmp_path / "missing.env")
    broken = tmp_path / "broken.env"
    broken.write_text("STACK_DIR=/x\n")
    broken.chmod(0o600)
    with pytest.raises(StackError, match="lacks STACK_POSTGRES_PORT"):
        load_settings(broken)


def test_pid_files_stop_the_process_group_and_stale_ones_are_recognised(tmp_path: Path):
    pid_file, log = tmp_path / "sleep.pid", tmp_path / "sleep.log"
    command = ["bash", "-c", "sleep 300 & wait"]  # a child in the group: stop must end both
    process = start_detached(command, dict(os.environ), log, pid_file)
    child = psutil.Process(process.pid)
    deadline = time.monotonic() + 10
    while not child.children() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = child.children()[0]
    assert running_pid(pid_file) == process.pid
    assert stop_pid_file(pid_file) == "stopped"
    assert not pid_file.exists()
    assert not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE  # ended, awaiting its reaper

    dead = subprocess.Popen(["true"])
    dead.wait()
    pid_file.write_text(f"{dead.pid} 12345\n")  # a process that is gone
    assert running_pid(pid_file) is None and not pid_file.exists()
    pid_file.write_text(f"{os.getpid()} 1\n")  # a pid now used by another process (another start time)
    assert stop_pid_file(pid_file) == "stale pid file removed"
    assert stop_pid_file(pid_file) == "not running"


def _start_term_proof_child(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """A group whose leader ends on SIGTERM and whose child (`sleep`) ignores it; returns once the child runs."""
    pid_file = tmp_path / "group.pid"
    process = start_detached(
        ["bash", "-c", "(trap '' TERM; sleep 300) & wait"], dict(os.environ), tmp_path / "log", pid_file
    )
    deadline = time.monotonic() + 10
    while not any(psutil.Process(pid).name() == "sleep" for pid in group_members(process.pid)):
        assert time.monotonic() < deadline, "the child did not start"
        time.sleep(0.05)
    return process, pid_file


def test_stop_ends_the_whole_group_and_gives_up_when_sigkill_does_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    process, pid_file = _start_term_proof_child(tmp_path)
    assert stop_pid_file(pid_file, timeout_s=0.5) == "killed"  # the leader went on SIGTERM, the child did not
    assert not group_members(process.pid) and not pid_file.exists()

    process, pid_file = _start_term_proof_child(tmp_path)
    killpg = os.killpg
    monkeypatch.setattr(processes.os, "killpg", lambda pgid, sig: sig == signal.SIGKILL or killpg(pgid, sig))
    outcome = stop_pid_file(pid_file, timeout_s=0.5, kill_timeout_s=0.5)  # a group that outlives SIGKILL
    assert outcome.startswith("still running after SIGKILL: pids") and pid_file.exists()
    monkeypatch.undo()
    assert stop_pid_file(pid_file, timeout_s=0.5) == "killed"  # the leader gone, its group still found
    assert not group_members(process.pid)


class _Mute(services.Daemon):
    """A server that never answers its health URL."""

    name = "mute"

    def __init__(self, settings: StackSettings, port: int) -> None:
        super().__init__(settings)
        self.url = f"http://127.0.0.1:{port}"
        self.health_url = f"{self.url}/health"

    def command(self) -> list[str]:
        return ["sleep", "300"]


def test_a_server_that_does_not_answer_is_stopped_or_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(services, "READY_TIMEOUT_S", 1.0)
    settings = StackSettings(tmp_path / ".env", {"STACK_DIR": str(tmp_path)})
    port = free_port()
    started = _Mute(settings, port)
    started.start()
    with pytest.raises(StackError, match=r"mute did not start.*not ready after 1 s"):
        started.wait_ready()
    assert started.process.poll() is not None and not started.pid_file.exists()  # the next `up` starts it anew

    earlier = start_detached(["sleep", "300"], dict(os.environ), started.log, started.pid_file)  # an earlier `up`
    try:
        again = _Mute(settings, port)
        again.start()
        assert again.process is None  # running already: not started twice, but awaited all the same
        with pytest.raises(StackError, match=rf"(?s)mute runs \(pid {earlier.pid}\) but does not answer.*restart mute"):
            again.wait_ready()
        assert running_pid(started.pid_file) == earlier.pid
    finally:
        stop_pid_file(started.pid_file)


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("podman") and subprocess.run(["podman", "compose", "version"], capture_output=True).returncode == 0:
        return ["podman", "compose"]
    return None


def test_compose_file_is_valid_and_binds_loopback_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    compose = _compose_command()
    if compose is None:
        pytest.skip("no docker-compose or podman compose here; `make stack-tools` installs docker-compose")
    for key, value in _ports_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    settings = load_settings(tmp_path / ".env", create=True)
    result = subprocess.run(
        [*compose, "--env-file", str(settings.env_file), "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        env={key: value for key, value in os.environ.items() if not key.startswith(("STACK_", "AWS_"))},
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    stack_services = resolved["services"]
    assert set(stack_services) == {"postgres", "s3", "mlflow", "prefect-server", "prefect-worker", "bento"}
    assert stack_services["bento"]["image"] == "gan-enhance:latest"
    for name, service in stack_services.items():
        for port in service.get("ports", []):  # "HOST_IP:PUBLISHED:TARGET", or the long form
            host_ip = port["host_ip"] if isinstance(port, dict) else port.split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond loopback"
    devices = stack_services["prefect-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    # the secrets come from the .env, and only from there
    text = COMPOSE.read_text()
    for secret in ("STACK_DB_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert settings.values[secret] in result.stdout and settings.values[secret] not in text
        assert "${" + secret + ":?" in text  # compose refuses to start without it


# --- the running stack ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack() -> Iterator[StackSettings]:
    """The stack, started by its command on free ports with its data in a fresh folder; stopped and removed after.
    The folder is made outside pytest's temporary folder, which is closed to the 'postgres' user (as root,
    PostgreSQL runs as that user)."""
    root = Path(tempfile.mkdtemp(prefix="gan-enhance-stack-"))
    root.chmod(0o711)
    env_file = root / ".env"
    env = {**os.environ, **_ports_env(root)}
    began = time.monotonic()
    try:
        command = [*STACK, "up", "--env-file", str(env_file)]
        up = subprocess.run(command, env=env, capture_output=True, text=True, timeout=UP_TIMEOUT_S)
        assert up.returncode == 0, up.stdout + up.stderr
        print(f"stack up in {time.monotonic() - began:.1f} s:\n{up.stdout}")
        yield load_settings(env_file)
    finally:  # also after a failed `up`: what it started is stopped (by the pid files) and the folder removed
        try:
            command = [*STACK, "down", "--env-file", str(env_file)]
            down = subprocess.run(command, capture_output=True, text=True, timeout=DOWN_TIMEOUT_S)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    assert down.returncode == 0 and down.stdout.count("stopped") == 4, down.stdout + down.stderr


@pytest.fixture
def client_env(stack: StackSettings, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process configured the way `eval $(python -m gan_enhance.stack env)` configures a shell."""
    exports = stack.client_env()
    for key, value in exports.items():
        monkeypatch.setenv(key, value)
    return exports


def _registry(stack: StackSettings):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)


def _s3(stack: StackSettings):
    import boto3

    credentials = stack.s3_credentials()
    return boto3.client(
        "s3",
        endpoint_url=stack.s3_url,
        aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
        region_name=credentials["AWS_DEFAULT_REGION"],
    )


def _keys(stack: StackSettings, bucket: str) -> list[str]:
    pages = _s3(stack).get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


@pytest.mark.slow
def test_stack_runs_on_loopback_with_no_secret_in_a_command_line(stack: StackSettings):
    result = subprocess.run([*STACK, "status", "--env-file", str(stack.env_file)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    print(result.stdout)
    assert stat.S_IMODE(stack.dir.stat().st_mode) == 0o711
    for name in ("s3", "mlflow", "prefect"):  # artifacts, logs, the S3 identity: the user's only
        assert stat.S_IMODE((stack.dir / name).stat().st_mode) == 0o700
    assert stat.S_IMODE((stack.dir / "postgres" / "data").stat().st_mode) == 0o700
    secrets = [stack.values[key] for key in ("POSTGRES_PASSWORD", "STACK_DB_PASSWORD", "AWS_SECRET_ACCESS_KEY")]
    for state in services.status(stack):
        root = psutil.Process(state.pid)
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                listening = [c for c in process.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
                assert all(c.laddr.ip == "127.0.0.1" for c in listening), (state.name, listening)
                command_line = " ".join(process.cmdline())
                assert not any(secret in command_line for secret in secrets), state.name


@pytest.fixture(scope="module")
def champion(stack: StackSettings, tiny_source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny generator registered and promoted in the stack's registry (serving.local's register_champion, with
    tracking.uri the stack's MLflow)."""
    from gan_enhance.serving.local import register_champion

    root = tmp_path_factory.mktemp("champion")
    tree = tiny_params_tree(tiny_source, root)
    tree["tracking"]["uri"] = stack.mlflow_url
    tree["registry"] = {"model_name": MODEL}
    return register_champion(root, tree)


def _photo(size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.mark.slow
def test_register_promote_load_by_alias_and_serve(
    stack: StackSettings, champion: dict, tmp_path: Path, client_env: dict[str, str]
):
    from gan_enhance.lifecycle.registry import load_enhancer
    from gan_enhance.serving.bento import import_champion
    from gan_enhance.serving.local import bentoml_home, serve_process

    version = _registry(stack).get_model_version_by_alias(MODEL, "champion")
    assert str(version.version) == champion["version"] == "1"
    stored = _keys(stack, "mlflow")
    assert any(key.endswith("artifacts/generator/generator.safetensors") for key in stored), stored[:20]

    enhancer = load_enhancer(MODEL, "champion", device="cpu", tile=0)  # $MLFLOW_TRACKING_URI: the stack
    expected = enhancer.enhance_array(_photo())

    with bentoml_home(tmp_path / "bentoml"):
        import_champion(MODEL)
        # a server process of its own: the service module imported in this process by other tests resolved
        # `gan-enhance-champion:latest` in their BentoML home
        with serve_process(env=SERVE_ENV) as (url, _):
            buffer = io.BytesIO()
            Image.fromarray(_photo()).save(buffer, "PNG")
            response = httpx.post(f"{url}/enhance", files={"image": ("in.png", buffer.getvalue())}, timeout=120)
    assert response.status_code == 200, response.text
    served = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
    assert served.shape == expected.shape == (96, 96, 3)
    assert np.abs(served.astype(int) - expected.astype(int)).max() <= 1


def _variant(champion: dict, dest: Path, seed: int) -> Path:
    """The champion's project with perturbed weights (seed 0: unchanged): another registration key."""
    shutil.copytree(champion["params_file"].parent, dest)
    if seed:
        weights = dest / "models/generator/generator.safetensors"
        generator = torch.Generator().manual_seed(seed)
        state = load_file(str(weights))
        save_file(
            {k: v + 0.05 * v.std() * torch.randn(v.shape, generator=generator) for k, v in state.items()}, str(weights)
        )
    return dest


def _register_process(project: Path, model: str) -> subprocess.Popen:
    command = [str(BIN / "gan-enhance"), "register", "-S", f"registry.model_name={model}"]
    return subprocess.Popen(command, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_concurrent_registrations_number_versions_once_each(stack: StackSettings, champion: dict, tmp_path: Path):
    name = "team-concurrent"
    projects = [_variant(champion, tmp_path / f"v{seed}", seed) for seed in (1, 2)]
    twin = _variant(champion, tmp_path / "twin", 1)  # the same model as v1, registered at the same time
    registrations = [_register_process(project, name) for project in [*projects, twin]]
    deadline = time.monotonic() + 300
    try:
        outputs = [process.communicate(timeout=max(deadline - time.monotonic(), 0))[0] for process in registrations]
    except subprocess.TimeoutExpired:
        for process in registrations:
            process.kill()
        pytest.fail(f"registrations still running after 300 s: {[p.communicate()[0] for p in registrations]}")
    assert all(process.returncode == 0 for process in registrations), outputs

    versions = _registry(stack).search_model_versions(f"name = '{name}'")
    # the twins may both create a version; the later one is deleted again (a number is never reused)
    assert len(versions) == 2 and {int(v.version) for v in versions} <= {1, 2, 3}, outputs
    assert len({v.tags["registration_key"] for v in versions}) == 2
    records = [json.loads((p / "reports/register/registration.json").read_text()) for p in [*projects, twin]]
    assert records[0]["version"] == records[2]["version"]  # the twin kept the one version of that model
    assert len({r["version"] for r in records[:2]}) == 2
    challenger = _registry(stack).get_model_version_by_alias(name, "challenger")
    assert str(challenger.version) in {r["version"] for r in records}


@pytest.mark.slow
def test_postgres_stopped_during_a_registration_loses_nothing(
    stack: StackSettings, champion: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from gan_enhance.config import load_params
    from gan_enhance.lifecycle import register as register_module
    from gan_enhance.lifecycle.errors import RegistryError
    from gan_enhance.lifecycle.register import register

    client = _registry(stack)
    champion_before = client.get_model_version_by_alias(MODEL, "champion")
    project = _variant(champion, tmp_path / "outage", 7)
    params = load_params(project / "params.yaml")
    runs_before = len(client.search_runs(_experiments(client), "tags.stage = 'register'"))

    outcome: dict[str, object] = {}

    def registration() -> None:
        try:
            outcome["result"] = register(params, base=project)
        except RegistryError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=registration)
    worker.start()
    deadline = time.monotonic() + 120
    while len(client.search_runs(_experiments(client), "tags.stage = 'register'")) == runs_before:
        assert worker.is_alive() and time.monotonic() < deadline, outcome
        time.sleep(0.1)
    postgres = services.by_name(stack, "postgres")  # the registration's run exists: it is under way
    try:
        assert postgres.stop() == "stopped"
        time.sleep(3)
    finally:
        postgres.start()
    worker.join(timeout=600)
    assert not worker.is_alive()
    server_log = (stack.dir / "mlflow" / "mlflow.log").read_text()
    print(f"registration across the outage: {outcome}; {server_log.count('OperationalError')} database errors")

    champion_after = client.get_model_version_by_alias(MODEL, "champion")
    assert champion_after.version == champion_before.version
    from gan_enhance.lifecycle.registry import check_artifacts

    check_artifacts(client, MODEL, str(champion_after.version))  # still loads
    key = _key(project)
    versions = client.search_model_versions(f"name = '{MODEL}' AND tags.registration_key = '{key}'")
    if "error" in outcome:  # clearly failed: named as such, nothing half-made holds an alias
        assert "register" in str(outcome["error"]) and "again" in str(outcome["error"])
        assert all("challenger" not in v.aliases for v in versions)
    else:  # retried: exactly one version of this model, the challenger
        assert outcome["result"].status == "registered"
        assert [str(v.version) for v in versions] == [outcome["result"].version]
        assert str(client.get_model_version_by_alias(MODEL, "challenger").version) == outcome["result"].version

    # away for longer than the retries (made short here): the registration fails saying so, and half-made nothing
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setattr(register_module, "RETRY_DELAY_S", 0.2)
    late = _variant(champion, tmp_path / "late", 8)
    late_params = load_params(late / "params.yaml")
    try:
        assert postgres.stop() == "stopped"
        with pytest.raises(RegistryError, match=r"failed 3 times.*champion is unchanged.*again"):
            register(late_params, base=late)
    finally:
        postgres.start()
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion_before.version
    assert not client.search_model_versions(f"name = '{MODEL}' AND tags.registration_key = '{_key(late)}'")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    again = register(late_params, base=late)  # run again: done
    assert again.status == "registered"
    assert str(client.get_model_version_by_alias(MODEL, "challenger").version) == again.version


def _experiments(client) -> list[str]:
    return [e.experiment_id for e in client.search_experiments()]


def _key(project: Path) -> str:
    from gan_enhance.lifecycle.register import registration_key

    return registration_key(project / "models/generator", project / "reports/eval/metrics.json")


@pytest.fixture(scope="module")
def flow_repo(stack: StackSettings, tiny_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC repository with the project's pipeline and tiny params whose tracking.uri is left out: the
    environment (the stack's exports) decides."""
    from .test_flows import _make_repo

    repo = _make_repo(tmp_path_factory.mktemp("team-flow") / "repo", tiny_source)
    text = (repo / "params.yaml").read_text()
    tree = yaml.safe_load(text)
    tree["tracking"]["uri"] = None
    (repo / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    return repo


@pytest.fixture(scope="module")
def retrained(stack: StackSettings, flow_repo: Path):
    """The retrain flow run once against the stack: Prefect's API, MLflow and (after) DVC's remote all the stack's."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.retrain import retrain

    saved = {key: os.environ.get(key) for key in stack.client_env()}
    os.environ.update(stack.client_env())
    began = time.monotonic()
    try:
        with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api_url}):
            state = retrain(repo=str(flow_repo), return_state=True, retries=1, retry_delay_s=0.5, build_bento=False)
            flow_run = _flow_run(state)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    print(f"retrain flow on the stack: {time.monotonic() - began:.1f} s")
    return state, flow_run


def _flow_run(state):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id)


@pytest.mark.slow
def test_retrain_flow_runs_on_the_stack(stack: StackSettings, flow_repo: Path, retrained):
    state, flow_run = retrained
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["status"] == "promoted", summary
    assert flow_run.state.is_completed()  # recorded by the stack's Prefect server, in PostgreSQL
    champion = _registry(stack).get_model_version_by_alias("gan-enhance-sr-x2", "champion")
    assert str(champion.version) == summary["registration"]["version"] == "1"
    assert not (flow_repo / "mlflow.db").exists()  # nothing fell back to the local SQLite store


@pytest.mark.slow
def test_dvc_push_and_pull_through_the_s3_remote(
    stack: StackSettings, flow_repo: Path, retrained, client_env: dict[str, str]
):
    def dvc(*args: str) -> str:
        result = subprocess.run([str(BIN / "dvc"), *args], cwd=flow_repo, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    dvc("remote", "add", "-d", "-f", "team", "s3://dvc/team-flow")  # endpoint and keys: the environment's
    dvc("push")
    assert "in sync" in dvc("status", "--cloud")
    pushed = [key for key in _keys(stack, "dvc") if key.startswith("team-flow/")]
    weights = flow_repo / "models/generator/generator.safetensors"
    before = weights.read_bytes()
    assert len(pushed) >= 10, pushed

    shutil.rmtree(flow_repo / ".dvc/cache")  # the cached outputs: the prepared data and the generator
    shutil.rmtree(flow_repo / "models/generator")
    shutil.rmtree(flow_repo / "data/prepared")
    dvc("pull")
    assert weights.read_bytes() == before
    status = dvc("status")
    assert "up to date" in status, status
