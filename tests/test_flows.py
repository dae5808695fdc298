"""The Prefect flows end to end, with tiny params, against `prefect_test_harness` (a temporary Prefect API).

One temporary git + DVC repository (dvc.yaml and src/ copied in, tiny params, MLflow in SQLite inside it) goes
through the retrain flow's story in order: the first retrain registers and promotes; a second one with nothing
changed skips (a run state named Skipped, the champion's numbers in its report); a deliberately worse setting
registers but is refused (and a stricter policy judges it again); DVC's repository lock held by another process fails
a step transiently, which is retried and then passes, or keeps failing and fails the flow with the step and the
reason; a missing data source fails at once and leaves params.yaml as it was; a second retrain of the same repository
waits for the first or stops. evaluate_champion re-evaluates the champion on a benchmark folder, prints the table and
keeps the report. Last, `python -m flows.retrain` on a fresh repository (its own temporary Prefect server, no
harness) is stopped by SIGTERM while it trains. Nothing here is mocked: the lock failures are DVC's own, made by a
`dvc` on PATH that holds the real lock from another process for its first calls.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from .conftest import REPO, tiny_params_tree

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
FAST_RETRY = {"retries": 2, "retry_delay_s": 0.5, "build_bento": False}
MODEL = "gan-enhance-sr-x2"
PARAMS_HEADER = "# tiny params for the flow tests (this comment must survive overrides)\n"


def _run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="session")
def prefect_api():
    """A temporary Prefect API for the whole session (slow to start: once)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=240):
        yield


def _make_repo(root: Path, source: Path) -> Path:
    """A git + DVC repository at `root` with the project's dvc.yaml and src/ and tiny params reading `source`."""
    root.mkdir(parents=True)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    tree = tiny_params_tree(source, root)
    tree["evaluate"].update(fid_crops=4)  # the Inception passes dominate a tiny run
    (root / "params.yaml").write_text(PARAMS_HEADER + yaml.safe_dump(tree, sort_keys=False))
    _run(["git", "init", "-q"], root)
    _run([str(BIN / "dvc"), "init", "-q"], root)
    _run([str(BIN / "dvc"), "config", "core.analytics", "false"], root)
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, tiny_source: Path) -> Path:
    return _make_repo(tmp_path_factory.mktemp("flows") / "repo", tiny_source)


def _registry(repo: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _versions(repo: Path) -> list[str]:
    return sorted((str(v.version) for v in _registry(repo).search_model_versions(f"name = '{MODEL}'")), key=int)


def _champion(repo: Path) -> str:
    return str(_registry(repo).get_model_version_by_alias(MODEL, "champion").version)


def _task_runs(state) -> dict[str, list[int]]:
    """Task name -> run counts (attempts) of each of its runs in the flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    found: dict[str, list[int]] = {}
    for run in runs:
        found.setdefault(run.name.rsplit("-", 1)[0], []).append(run.run_count)
    return found


def _artifact(key: str, state) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
            )
        )
    assert found, f"no artifact '{key}' in the flow run"
    return found[0].data


@pytest.fixture(scope="module")
def first_run(repo: Path, prefect_api):
    from flows.retrain import retrain

    return retrain(repo=str(repo), return_state=True, **FAST_RETRY)


def test_first_retrain_registers_and_promotes(repo: Path, first_run):
    assert first_run.is_completed(), first_run.message
    summary = first_run.result()
    assert summary["status"] == "promoted", summary
    assert summary["registration"]["version"] == "1" and summary["registration"]["new"]
    assert "first champion" in summary["promotion"]["reason"]
    assert _versions(repo) == ["1"] and _champion(repo) == "1"
    assert any(reason.startswith("stage train:") for reason in summary["changes"])
    assert summary["bento"] == {"status": "skipped", "reason": "build_bento is false"}
    assert json.loads((repo / "reports/register/registration.json").read_text())["version"] == "1"
    report = _artifact("retrain-gan-enhance-sr-x2", first_run)
    assert "promoted" in report and "challenger v1" in report and "champion (none)" in report
    assert "| fid ↓ |" in report and "| psnr ↑ |" in report
    assert "intervals over" in report and re.search(r"\| psnr ↑ \| [\d.]+ \[[\d.]+, [\d.]+\] \|", report)
    # every task ran once
    assert all(counts == [1] for counts in _task_runs(first_run).values())


def test_second_retrain_with_nothing_changed_skips(repo: Path, first_run):
    from flows.retrain import retrain

    state = retrain(repo=str(repo), return_state=True, **FAST_RETRY)
    assert state.is_completed(), state.message
    assert state.name == "Skipped" and "nothing changed" in state.message  # not a Completed like a real retrain
    summary = state.result()
    assert summary["status"] == "skipped" and summary["changes"] == []
    assert set(_task_runs(state)) == {"apply params", "detect changes", "report"}
    assert _versions(repo) == ["1"]
    # the report shows the champion the skipped run leaves in place, with its numbers from the registry
    psnr = float(_registry(repo).get_model_version(MODEL, "1").tags["metric.psnr"])
    assert summary["champion"]["version"] == "1" and summary["champion"]["metrics"]["psnr"] == pytest.approx(psnr)
    report = _artifact("retrain-gan-enhance-sr-x2", state)
    assert f"**Champion now**: version 1 (psnr {psnr:.2f} [" in report


def test_worse_setting_registers_but_does_not_promote(repo: Path, first_run):
    from flows.retrain import retrain

    worse = {"train.lr_g": 0.5}  # a learning rate that wrecks the generator in a few steps
    state = retrain(repo=str(repo), overrides=worse, return_state=True, **FAST_RETRY)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["applied"] == {"train.lr_g": [0.0005, 0.5]}
    assert summary["registration"]["version"] == "2" and summary["registration"]["new"]
    assert summary["status"] == "refused", summary["promotion"]
    assert _versions(repo) == ["1", "2"] and _champion(repo) == "1"
    version = _registry(repo).get_model_version(MODEL, "2")
    assert version.tags["promotion.decision"] == "refused" and "challenger" in version.aliases
    assert "bento" not in summary  # no new champion, no bento
    # the override stays in params.yaml (as `dvc exp run -S` leaves it), comments kept; the next run finds no change
    text = (repo / "params.yaml").read_text()
    assert text.startswith(PARAMS_HEADER) and yaml.safe_load(text)["train"]["lr_g"] == 0.5
    report = _artifact("retrain-gan-enhance-sr-x2", state)
    assert "refused" in report and "challenger v2" in report and "champion v1" in report


def test_policy_change_judges_the_challenger_again(repo: Path, first_run):
    from flows.retrain import retrain

    stricter = {"promote.guard_tolerance": 0.0}  # cannot turn the refusal into a promotion
    state = retrain(repo=str(repo), overrides=stricter, return_state=True, **FAST_RETRY)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["changes"] == ["promotion policy changed (promote.guard_tolerance)"]  # DVC saw nothing
    assert summary["registration"] == {**summary["registration"], "version": "2", "new": False}
    assert summary["status"] == "refused" and _champion(repo) == "1"


FLAKY_DVC = """#!/bin/bash
# `dvc` for the tests: its first {fails} `dvc repro` calls run while another process holds DVC's repository lock
# (they fail as a busy repository makes them fail); every other call is the real dvc.
count_file="{count}"
if [ "$1" = "repro" ]; then
  n=$(cat "$count_file" 2>/dev/null || echo 0)
  echo $((n + 1)) > "$count_file"
  if [ "$n" -lt {fails} ]; then
    rm -f "{ready}"
    "{python}" "{holder}" "{ready}" &
    holder=$!
    for _ in $(seq 200); do [ -e "{ready}" ] && break; sleep 0.05; done
    "{dvc}" "$@"; rc=$?
    kill $holder; wait $holder 2>/dev/null
    exit $rc
  fi
fi
exec "{dvc}" "$@"
"""
HOLD_DVC_LOCK = """import sys, time
import zc.lockfile

lock = zc.lockfile.LockFile(".dvc/tmp/lock")  # DVC's repository lock, as a running `dvc` command holds it
open(sys.argv[1], "w").close()
time.sleep(120)
"""


@pytest.fixture
def flaky_dvc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Put a `dvc` first on PATH whose first N `repro` calls meet DVC's lock held by another process; returns a
    function that arms it for N failures and returns the file counting the calls."""

    def arm(fails: int) -> Path:
        folder = tmp_path / "bin"
        folder.mkdir(exist_ok=True)
        count = tmp_path / "repro-calls"
        holder = tmp_path / "hold_dvc_lock.py"
        holder.write_text(HOLD_DVC_LOCK)
        script = folder / "dvc"
        fields = {"count": count, "ready": tmp_path / "held", "python": sys.executable, "holder": holder}
        script.write_text(FLAKY_DVC.format(fails=fails, dvc=BIN / "dvc", **fields))
        script.chmod(0o755)
        monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
        return count

    return arm


def test_transient_failure_is_retried_then_succeeds(repo: Path, first_run, flaky_dvc):
    from flows.retrain import retrain

    calls = flaky_dvc(2)
    state = retrain(repo=str(repo), force=True, return_state=True, **FAST_RETRY)
    assert state.is_completed(), state.message
    attempts = _task_runs(state)
    assert attempts["refresh data"] == [3]  # failed twice on the busy lock, passed the third time
    assert attempts["pipeline"] == [1] and attempts["register"] == [1]
    assert int(calls.read_text()) == 5  # 3 x refresh, pipeline, register
    assert state.result()["registration"]["new"] is False  # nothing new to register: the same version 2
    assert _versions(repo) == ["1", "2"] and _champion(repo) == "1"


def test_step_that_keeps_failing_fails_the_flow_with_the_step_and_the_reason(repo: Path, first_run, flaky_dvc):
    from flows.retrain import retrain

    params_before = (repo / "params.yaml").read_text()
    flaky_dvc(99)
    state = retrain(repo=str(repo), force=True, return_state=True, **FAST_RETRY)
    assert state.is_failed()
    assert "step 'refresh data' failed after 3 attempts" in state.message
    assert "another DVC process is running" in state.message
    assert _task_runs(state)["refresh data"] == [3]
    report = _artifact("retrain-gan-enhance-sr-x2", state)
    assert "**Failed**: step 'refresh data'" in report
    # nothing registered is lost, nothing else changed
    assert _versions(repo) == ["1", "2"] and _champion(repo) == "1"
    assert (repo / "params.yaml").read_text() == params_before


def test_missing_source_fails_at_once_and_restores_params(repo: Path, first_run):
    from flows.retrain import retrain

    params_before = (repo / "params.yaml").read_text()
    state = retrain(repo=str(repo), source=str(repo / "no-such-folder"), return_state=True, **FAST_RETRY)
    assert state.is_failed()
    assert "step 'detect changes' failed after 1 attempt:" in state.message  # a permanent error: no retries
    assert "no-such-folder' does not exist" in state.message
    assert (repo / "params.yaml").read_text() == params_before


def test_bad_override_fails_before_anything_changes(repo: Path, first_run):
    from flows.retrain import retrain

    params_before = (repo / "params.yaml").read_text()
    state = retrain(repo=str(repo), overrides={"train.gan_loss": "wgan"}, return_state=True, **FAST_RETRY)
    assert state.is_failed()
    assert "step 'apply params' failed" in state.message and "train.gan_loss" in state.message
    assert (repo / "params.yaml").read_text() == params_before


def test_two_retrains_never_run_at_once(repo: Path, first_run):
    from flows.retrain import LOCK_FILE, retrain

    with (repo / LOCK_FILE).open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running retrain holds
        state = retrain(repo=str(repo), return_state=True, **FAST_RETRY)
        assert state.is_failed()
        assert "step 'lock' failed: another retrain is running on" in state.message

        release = threading.Timer(3.0, fcntl.flock, (held, fcntl.LOCK_UN))
        release.start()
        waited = retrain(repo=str(repo), lock_wait_s=60, return_state=True, **FAST_RETRY)
        release.join()
    assert waited.is_completed(), waited.message
    assert waited.result()["status"] == "skipped"


def test_evaluate_champion_logs_the_benchmark_to_mlflow(
    repo: Path, first_run, tiny_source: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    from flows.evaluate_champion import evaluate_champion

    benchmark = tmp_path / "Bench4"
    benchmark.mkdir()
    for path in sorted(tiny_source.glob("*.png"))[:4]:
        Image.open(path).save(benchmark / path.name)
    state = evaluate_champion(benchmark=str(benchmark), repo=str(repo), device="cpu", return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["version"] == _champion(repo) and result["images"] == 4
    # the numbers are printed (the model, the baseline, the gain; the flow's prints go to its run log and the
    # console), the report kept in the repository
    printed = caplog.text
    report_dir = repo / "reports/benchmarks/Bench4"
    assert result["out_dir"] == str(report_dir) and f"report: {report_dir}" in printed
    assert {"metrics.json", "per_image.csv", "comparison.png"} <= {path.name for path in report_dir.iterdir()}
    model = json.loads((report_dir / "metrics.json").read_text())["model"]
    model_row = next(line for line in printed.splitlines() if line.startswith("model "))
    assert f"{model['psnr']:.4g}" in model_row and f"{model['ssim']:.4g}" in model_row
    assert "\nbicubic " in printed and "\ngain vs bicubic " in printed
    client = _registry(repo)
    run = client.get_run(result["run_id"])
    version = client.get_model_version(MODEL, result["version"])
    assert run.data.tags["mlflow.parentRunId"] == version.run_id  # nested under the champion's registration run
    assert run.data.tags["benchmark"] == "Bench4" and run.data.tags["model_version"] == result["version"]
    assert run.data.metrics["model_psnr"] == pytest.approx(result["metrics"]["psnr"])
    assert "bicubic_psnr" in run.data.metrics and "model_fid" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")} >= {
        "evaluation/metrics.json",
        "evaluation/per_image.csv",
        "evaluation/comparison.png",
    }
    assert version.tags["benchmark.Bench4.run_id"] == run.info.run_id
    assert "| model |" in _artifact("evaluate-gan-enhance-sr-x2-bench4", state)


def _processes_with(marker: str) -> dict[int, str]:
    """pid -> command line of the processes whose environment holds `marker` (this test's PREFECT_HOME=...)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:  # gone, or not ours
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="finds the processes it started in /proc")
def test_sigterm_stops_the_retrain_command_promptly(tiny_source: Path, tmp_path: Path):
    """`python -m flows.retrain` with no Prefect server (it starts a temporary one), stopped by SIGTERM to its process
    group (what a terminal's Ctrl+C or a supervisor does) while `dvc repro` trains: it exits at once with 143 and one
    line, its children and its server gone, the flow run Cancelled, params.yaml and the lock as after a failure."""
    import sqlite3

    from gan_enhance.device import TELEMETRY_OFF
    from gan_enhance.servers import free_port

    root = _make_repo(tmp_path / "repo", tiny_source)
    params_before = (root / "params.yaml").read_text()
    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(TELEMETRY_OFF, PREFECT_HOME=str(home), PREFECT_SERVER_API_PORT=str(free_port()))
    marker = f"PREFECT_HOME={home}"
    command = [sys.executable, "-m", "flows.retrain", "--repo", str(root), "--no-bento", "-S", "train.steps=100000"]
    log = tmp_path / "retrain.log"
    with log.open("w") as output:
        proc = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 300
        while not any("gan-enhance train" in line for line in _processes_with(marker).values()):
            assert proc.poll() is None, f"the retrain ended before training:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no training after 300 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        time.sleep(1)
        signalled = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 60 s after SIGTERM:\n{log.read_text()[-3000:]}")
        took = time.monotonic() - signalled
    finally:  # leave nothing behind when the test fails
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _processes_with(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    output = log.read_text()
    assert code == 128 + signal.SIGTERM, output[-3000:]
    assert "interrupted: SIGTERM received; the flow run ended Cancelled" in output
    assert "Connection refused" not in output and "Error logging to API" not in output  # no retries of a dead API
    time.sleep(1)  # the server's workers, when the kernel has not reaped them yet
    assert _processes_with(marker) == {}  # dvc, the training and the temporary Prefect server are gone
    assert took < 30, f"took {took:.0f} s"
    # as after a failed pipeline step: the override taken back out, the lock free
    assert (root / "params.yaml").read_text() == params_before
    with (root / ".dvc/tmp/retrain.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with contextlib.closing(sqlite3.connect(home / "prefect.db")) as db:  # the temporary server's database
        assert db.execute("SELECT state_type FROM flow_run").fetchall() == [("CANCELLED",)]


def test_retrain_report_screenshot(first_run, tmp_path: Path):
    """The first run's report, as the Prefect UI shows it (the tests' API server has no UI: a real `prefect server`
    with its UI gets the same markdown)."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.retrain import artifact_key, render_report
    from flows.support import command_env
    from gan_enhance.servers import HOST, free_port, server_process

    from .browser import screenshot

    summary = first_run.result()
    port = free_port()
    base = f"http://{HOST}:{port}"
    env = command_env({"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_UI_API_URL": f"{base}/api"})
    env.pop("PREFECT_API_URL", None)
    command = [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", HOST, "--port", str(port)]
    with server_process(command, f"{base}/api/health", tmp_path / "server.log", env, timeout_s=180):
        key = artifact_key(summary["model_name"])
        with temporary_settings(updates={PREFECT_API_URL: f"{base}/api"}):
            artifact = create_markdown_artifact(key=key, markdown=render_report(summary), description="retrain report")
        screenshot(f"{base}/artifacts/artifact/{artifact}", tmp_path / "prefect-retrain-report.png", size=(1280, 1100))
