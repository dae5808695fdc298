"""Promotion deploys: the deployer keeps its public port serving the version that holds `champion`.

Unit: MLflow's webhook signatures (made by MLflow's own signing code) are accepted and forgeries refused, deliveries
are read for the right model and alias only, the secret comes from the environment or a generated private file.

End to end (slow): a real `mlflow server` (SQLite) with two registered versions, and two real deployers against it,
one triggered by the server's webhook, one by polling only. Under a steady small load on both public ports,
`champion` is moved the way the UI moves it; both must answer /model with the new version, with no failed request,
the first deployer through the webhook, the second through its poll.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from PIL import Image

from gan_enhance.serving.deployer_signature import SECRET_ENV, SignatureError, signature, verify, webhook_secret
from gan_enhance.serving.deployer_webhook import read_event

# --- unit -----------------------------------------------------------------------------------------------------------


def _signed(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """Headers as MLflow's delivery code makes them (mlflow.webhooks.delivery)."""
    from mlflow.webhooks.delivery import _generate_hmac_signature

    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "X-MLflow-Delivery-Id": "d-1",
        "X-MLflow-Timestamp": stamp,
        "X-MLflow-Signature": _generate_hmac_signature(secret, "d-1", stamp, body.decode()),
    }


def test_mlflow_signatures_are_accepted_and_forgeries_refused():
    body = json.dumps({"entity": "model_version_alias", "action": "created", "data": {"name": "m"}}).encode()
    headers = _signed("s3cret", body)
    assert verify("s3cret", headers, body) == "d-1"
    assert headers["X-MLflow-Signature"] == signature("s3cret", "d-1", headers["X-MLflow-Timestamp"], body)
    refused = {
        "another secret": ("other", headers, body),
        "a changed body": ("s3cret", headers, body.replace(b'"m"', b'"x"')),
        "an old delivery": ("s3cret", _signed("s3cret", body, int(time.time()) - 3600), body),
        "no signature": ("s3cret", {k: v for k, v in headers.items() if k != "X-MLflow-Signature"}, body),
        "a bad timestamp": ("s3cret", {**headers, "X-MLflow-Timestamp": "yesterday"}, body),
    }
    for case, (secret, sent, payload) in refused.items():
        with pytest.raises(SignatureError):
            verify(secret, sent, payload)
            pytest.fail(f"{case} was accepted")


def test_only_the_followed_alias_of_the_followed_model_deploys():
    def event(action: str = "created", **data: str) -> dict:
        return {"entity": "model_version_alias", "action": action, "data": {"name": "m", "alias": "champion", **data}}

    wanted = read_event(event(version="3"), "m", "champion")
    assert wanted.wanted and wanted.version == "3"
    assert not read_event(event(alias="challenger", version="3"), "m", "champion").wanted
    assert not read_event(event(name="other", version="3"), "m", "champion").wanted
    assert not read_event(event("deleted"), "m", "champion").wanted
    assert not read_event({"entity": "model_version", "action": "created", "data": {}}, "m", "champion").wanted


def test_the_secret_is_generated_once_private_and_the_environment_wins(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    path = tmp_path / "state" / "webhook-secret"
    first = webhook_secret(path)
    assert len(first) >= 32 and webhook_secret(path) == first
    assert path.stat().st_mode & 0o777 == 0o600
    assert webhook_secret(tmp_path / "elsewhere") != first  # random, not a constant
    monkeypatch.setenv(SECRET_ENV, "from-the-environment")
    assert webhook_secret(path) == "from-the-environment"


# --- end to end -----------------------------------------------------------------------------------------------------

WEBHOOK_SERVER_ENV = {
    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
    # the server caches the webhook list per event for 60 s by default; the versions' aliases were set (and the
    # empty list cached) just before the deployer registers its webhook
    "MLFLOW_WEBHOOK_CACHE_TTL": "1",
}
SERVE_ENV = {"GAN_ENHANCE_SERVE_DEVICE": "cpu", "GAN_ENHANCE_SERVE_TORCH_THREADS": "1", "GAN_ENHANCE_SERVE_TILE": "64"}
READY_TIMEOUT_S = 300


@dataclass
class Deployer:
    name: str
    url: str
    control: str
    log: Path

    def status(self) -> dict:
        return httpx.get(f"{self.control}/status", timeout=10).json()


@dataclass
class Registry:
    url: str
    model_name: str
    params_file: Path
    deployers: dict[str, Deployer] = field(default_factory=dict)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), (90, 140, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def _wait(condition, timeout: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    tails = "\n".join(f"--- {log}:\n{log.read_text()[-4000:]}" for log in logs if log.is_file())
    raise AssertionError(f"{what} not within {timeout:.0f} s\n{tails}")


@contextlib.contextmanager
def _deployer(registry: Registry, name: str, root: Path, options: list[str]) -> Iterator[Deployer]:
    """`python -m gan_enhance.serving.deployer` as `make deploy` runs it, with a BentoML home and state of its own;
    stopped with SIGTERM (it stops its bento server and deletes its webhook)."""
    from gan_enhance.servers import free_port, stop
    from gan_enhance.serving.local import REPO

    port, control = free_port(), free_port()
    state = root / f"deployer-{name}"
    state.mkdir()
    command = [sys.executable, "-m", "gan_enhance.serving.deployer", "--params", str(registry.params_file)]
    command += ["--port", str(port), "--control-port", str(control), "--state-dir", str(state), *options]
    env = {**os.environ, **SERVE_ENV, "BENTOML_HOME": str(state / "bentoml")}
    env.pop(SECRET_ENV, None)  # the deployer generates its secret
    log = state / "deployer.log"
    with open(log, "ab") as output:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    deployer = Deployer(name, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{control}", log)
    registry.deployers[name] = deployer
    try:
        yield deployer
        served = deployer.status()["serving"]["url"]
    finally:
        stop(process)
    with pytest.raises(httpx.ConnectError):  # SIGTERM stopped its bento server too
        httpx.get(f"{served}/readyz", timeout=5)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, tiny_source: Path) -> Iterator[Registry]:
    """mlflow server (SQLite, webhooks allowed to 127.0.0.1) with version 1 (champion) and version 2 of a tiny
    model, and two deployers following its champion: `webhook` (its poll, hourly, does not come into play) and
    `poll` (no webhook, a poll every 2 s)."""
    from mlflow import MlflowClient

    from gan_enhance.lifecycle.server import HOST, server_command
    from gan_enhance.servers import free_port, server_process
    from gan_enhance.serving.local import register_champion

    from .conftest import tiny_params_tree

    root = tmp_path_factory.mktemp("deploy")
    port = free_port()
    command, env = server_command(root / "mlflow.db", root / "mlartifacts", port)
    url = f"http://{HOST}:{port}"
    with server_process(command, f"{url}/health", root / "mlflow.log", {**env, **WEBHOOK_SERVER_ENV}):
        tree = tiny_params_tree(tiny_source, root)
        tree["tracking"]["uri"] = url
        champion = register_champion(root, tree)
        client = MlflowClient(url, registry_uri=url)
        first = client.get_model_version(champion["model_name"], champion["version"])
        # a second version of the same artifacts: the two bentos differ in the registry version they serve
        second = client.create_model_version(first.name, f"models:/{first.name}/{first.version}", tags=first.tags)
        assert (first.version, second.version) == ("1", "2")
        found = Registry(url, champion["model_name"], champion["params_file"])
        with (
            _deployer(found, "webhook", root, ["--poll-interval", "3600"]),
            _deployer(found, "poll", root, ["--no-webhook", "--poll-interval", "2"]),
        ):
            logs = [d.log for d in found.deployers.values()]
            for deployer in found.deployers.values():
                _wait(lambda d=deployer: _version(d.url) == "1", READY_TIMEOUT_S, f"{deployer.name} serving v1", logs)
            _wait(lambda: found.deployers["webhook"].status()["webhook"].get("registered"), 60, "webhook", logs)
            yield found
        assert list(client.list_webhooks()) == []  # the webhook deployer deleted its webhook when it stopped


def _version(url: str) -> str | None:
    return httpx.get(f"{url}/model", timeout=10).json().get("version")


@dataclass
class Load:
    """A steady small load on one public port: GET /model then POST /enhance, every 0.1 s, one thread."""

    url: str
    results: list[tuple[float, str, int, str | None]] = field(default_factory=list)  # (time, request, status, version)
    errors: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        image = _png()
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.done.is_set():
                for request in ("model", "enhance"):
                    try:
                        if request == "model":
                            answer = client.get("/model")
                            version = answer.json().get("version") if answer.status_code == 200 else None
                        else:
                            answer = client.post("/enhance", files={"image": ("in.png", image)})
                            version = answer.headers.get("x-model", "/").rsplit("/", 1)[-1] or None
                        self.results.append((time.monotonic(), request, answer.status_code, version))
                    except httpx.HTTPError as exc:
                        self.errors.append(f"{request}: {exc!r}")
                time.sleep(0.1)

    @property
    def failed(self) -> list:
        return self.errors + [r for r in self.results if r[2] != 200]


@pytest.fixture(scope="module")
def handover(registry: Registry) -> dict:
    """Both public ports under load; champion moved 1 -> 2 with the client (as the UI does); once both serve
    version 2 and have stopped version 1, the load stops. Returns per deployer its load and its deploy record."""
    from mlflow import MlflowClient

    loads = {name: Load(d.url) for name, d in registry.deployers.items()}
    threads = [threading.Thread(target=load.run, daemon=True) for load in loads.values()]
    for thread in threads:
        thread.start()
    time.sleep(2)  # some answers from version 1 first
    moved = time.monotonic()
    MlflowClient(registry.url, registry_uri=registry.url).set_registered_model_alias(
        registry.model_name, "champion", "2"
    )
    logs = [d.log for d in registry.deployers.values()]
    for name, deployer in registry.deployers.items():
        _wait(lambda d=deployer: _version(d.url) == "2", READY_TIMEOUT_S, f"{name} serving version 2", logs)
        _wait(lambda d=deployer: "old" in d.status()["deploys"][-1], 60, f"{name} stopping version 1", logs)
    time.sleep(1)
    for load in loads.values():
        load.done.set()
    for thread in threads:
        thread.join(timeout=120)
    out = {}
    for name, deployer in registry.deployers.items():
        record = deployer.status()["deploys"][-1]
        load = loads[name]
        seen = next(t for t, _, _, version in load.results if version == "2") - moved
        print(
            f"{name}: version 2 answering {seen:.1f} s after the alias moved "
            f"(deployer: {record['handover_s']} s, build {record['build_s']} s, server start {record['start_s']} s); "
            f"{len(load.results)} requests, "
            f"{len(load.failed)} failed; version 1 served {record['old']['served']} in all"
        )
        out[name] = {"load": load, "record": record, "seen_s": seen, "moved": moved}
    return out


@pytest.mark.slow
@pytest.mark.parametrize("trigger", ["webhook", "poll"])
def test_moving_champion_switches_the_service_without_a_failed_request(handover: dict, trigger: str):
    load, record = handover[trigger]["load"], handover[trigger]["record"]
    assert record["trigger"] == trigger and record["status"] == "serving"
    assert (record["version"], record["replaces"]) == ("2", "1")
    assert load.failed == []
    versions = [version for _, _, _, version in load.results]
    switch = versions.index("2")
    # answers from version 1 until the switch, then only from version 2 (one client: the switch is atomic)
    assert set(versions[:switch]) == {"1"} and set(versions[switch:]) == {"2"}, versions
    during = [r for r in load.results if handover[trigger]["moved"] <= r[0]]
    assert len([v for _, _, _, v in during if v == "1"]) >= 5  # the old version kept serving during the build
    assert record["old"]["drained"] and record["old"]["left_in_flight"] == 0


@pytest.mark.slow
def test_the_public_port_passes_every_route_through(registry: Registry):
    """Swagger, the OpenAPI document, refusals with their JSON body and status, and a larger upload streamed both
    ways, through the deployer's proxy as from the bento server itself."""
    import numpy as np

    url = registry.deployers["webhook"].url
    assert "swagger" in httpx.get(f"{url}/").text.lower()
    assert "/enhance" in httpx.get(f"{url}/docs.json").json()["paths"]
    refused = httpx.post(f"{url}/enhance", files={"image": ("x.png", b"not an image")})
    assert refused.status_code == 415 and set(refused.json()) >= {"error", "fix"}
    noise = np.random.default_rng(0).integers(0, 256, (400, 600, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG")
    answer = httpx.post(f"{url}/enhance", files={"image": ("big.png", buffer.getvalue())}, timeout=120)
    assert answer.status_code == 200, answer.text
    assert Image.open(io.BytesIO(answer.content)).size == (1200, 800)  # x2


@pytest.mark.slow
def test_a_failed_deploy_leaves_the_serving_version_in_place(registry: Registry, handover: dict):
    """champion moved to a version whose artifacts are not a model: the import fails, both deployers log it and
    keep serving version 2; the polling one does not rebuild the broken version at every poll."""
    from mlflow import MlflowClient

    client = MlflowClient(registry.url, registry_uri=registry.url)
    run_id = client.get_model_version(registry.model_name, "1").run_id
    broken = client.create_model_version(registry.model_name, f"runs:/{run_id}/no-model-here", run_id=run_id)
    client.set_registered_model_alias(registry.model_name, "champion", broken.version)
    logs = [d.log for d in registry.deployers.values()]
    for name, deployer in registry.deployers.items():
        _wait(lambda d=deployer: d.status()["deploys"][-1].get("status") == "failed", 120, f"{name} failing", logs)
        record, status = deployer.status()["deploys"][-1], deployer.status()
        assert record["version"] == broken.version and record["error"], record
        assert status["serving"]["version"] == "2" and status["failed_versions"] == [broken.version]
        assert _version(deployer.url) == "2"
        assert f"deploy of version {broken.version} failed; version 2 keeps serving" in deployer.log.read_text()
    attempts = len(registry.deployers["poll"].status()["deploys"])
    time.sleep(4.5)  # two more polls
    assert len(registry.deployers["poll"].status()["deploys"]) == attempts


@pytest.mark.slow
def test_the_receiver_refuses_bad_signatures_and_other_models(registry: Registry):
    deployer = registry.deployers["webhook"]
    secret = (deployer.log.parent / "webhook-secret").read_text().strip()
    body = json.dumps(
        {
            "entity": "model_version_alias",
            "action": "created",
            "data": {"name": registry.model_name, "alias": "champion", "version": "1"},
        }
    ).encode()
    forged = httpx.post(f"{deployer.control}/webhook", content=body, headers=_signed("not-the-secret", body))
    assert forged.status_code == 401 and "signature" in forged.json()["error"]
    unsigned = httpx.post(f"{deployer.control}/webhook", content=body)
    assert unsigned.status_code == 401
    other = body.replace(registry.model_name.encode(), b"another-model")
    ignored = httpx.post(f"{deployer.control}/webhook", content=other, headers=_signed(secret, other))
    assert ignored.status_code == 200 and "another-model" in ignored.json()["ignored"]
    before = len(deployer.status()["deploys"])
    time.sleep(1)
    assert len(deployer.status()["deploys"]) == before  # nothing was deployed for them
    status = deployer.status()
    assert status["webhook"]["registered"] and status["webhook"]["tested"], status["webhook"]
