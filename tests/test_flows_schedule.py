"""The deployments, registered on a real `prefect server` started on 127.0.0.1 (a free port) and read back from its
API: `make flows-serve` (python -m flows.deployments serve) registers retrain/nightly with its cron, and
`make flows-deploy` the work-pool deployment on a `process` pool."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gan_enhance.device import TELEMETRY_OFF
from gan_enhance.servers import HOST, free_port, server_process, stop

from .conftest import REPO

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`prefect server start --host 127.0.0.1` on a free port, with its own PREFECT_HOME (database); yields the
    environment its clients use; stopped afterwards."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(TELEMETRY_OFF, PREFECT_HOME=str(home))
    api = f"http://{HOST}:{port}/api"
    command = [str(BIN / "prefect"), "server", "start", "--host", HOST, "--port", str(port)]
    with server_process(command, f"{api}/health", home / "server.log", env, timeout_s=240):
        yield {**env, "PREFECT_API_URL": api}


def _read_deployment(env: dict[str, str], name: str, wait_s: float = 0.0):
    """The deployment `flow/deployment` read from the server's API (None if absent after `wait_s`)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + wait_s
    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        while True:
            try:
                with get_client(sync_client=True) as client:
                    return client.read_deployment_by_name(name)
            except ObjectNotFound:
                if time.monotonic() >= deadline:
                    return None
                time.sleep(1)


def test_served_retrain_deployment_is_registered_with_its_cron(prefect_server: dict[str, str], tmp_path: Path):
    log = (tmp_path / "serve.log").open("w")
    serve = subprocess.Popen(
        [sys.executable, "-m", "flows.deployments", "serve"],
        cwd=REPO,
        env=prefect_server,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deployment = _read_deployment(prefect_server, "retrain/nightly", wait_s=180)
        assert deployment is not None, (tmp_path / "serve.log").read_text()
        assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]  # nightly
        assert deployment.schedules[0].schedule.timezone == "UTC" and deployment.schedules[0].active
        assert deployment.parameters == {"repo": str(REPO)}
        assert deployment.global_concurrency_limit.limit == 1  # one retrain at a time; more queue
        assert deployment.concurrency_options.collision_strategy == "ENQUEUE"
        evaluation = _read_deployment(prefect_server, "evaluate-champion/benchmark", wait_s=30)
        assert evaluation is not None and evaluation.schedules == []  # run by hand
        assert evaluation.parameters["benchmark"] == "../shared/datasets/Set14"
        assert serve.poll() is None, (tmp_path / "serve.log").read_text()  # still serving

        # a run triggered by hand is picked up and executed by the serving process (here on a folder that is not a
        # DVC repository, so that it ends at once, failing at the lock step)
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: prefect_server["PREFECT_API_URL"]}):
            run = run_deployment("retrain/nightly", parameters={"repo": str(tmp_path)}, timeout=240)
        assert run.state.is_failed(), (run.state, (tmp_path / "serve.log").read_text())
        assert "step 'lock' failed" in run.state.message and "is not a DVC repository" in run.state.message
    finally:
        stop(serve)
        log.close()


def test_work_pool_deployment_is_registered_on_a_process_pool(prefect_server: dict[str, str]):
    done = subprocess.run(
        [sys.executable, "-m", "flows.deployments", "deploy", "--pool", "test-pool", "--cron", "30 2 * * 1-5"],
        cwd=REPO,
        env=prefect_server,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "prefect worker start --pool 'test-pool'" in done.stdout
    deployment = _read_deployment(prefect_server, "retrain/nightly-pool")
    assert deployment is not None and deployment.work_pool_name == "test-pool"
    assert [s.schedule.cron for s in deployment.schedules] == ["30 2 * * 1-5"]
    assert deployment.entrypoint == "flows/retrain.py:retrain"
    assert _read_deployment(prefect_server, "evaluate-champion/benchmark-pool") is not None

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(updates={PREFECT_API_URL: prefect_server["PREFECT_API_URL"]}),
        get_client(sync_client=True) as client,
    ):
        assert client.read_work_pool("test-pool").type == "process"
