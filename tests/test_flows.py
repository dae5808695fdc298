"""The Prefect flows end to end, with tiny params, against `prefect_test_harness` (a temporary Prefect API).

One temporary git + DVC repository (dvc.yaml and src/ copied in, tiny params, MLflow in SQLite inside it) goes
through the retrain flow's story in order: the first retrain registers and promotes; a second one with nothing
changed skips; a deliberately worse setting registers but is refused (and a stricter policy judges it again); DVC's
repository lock held by another process fails a step transiently, which is retried and then passes, or keeps failing
and fails the flow with the step and the reason; a missing data source fails at once and leaves params.yaml as it
was; a second retrain of the same repository waits for the first or stops. evaluate_champion re-evaluates the
champion on a benchmark folder. Nothing here is mocked: the lock failures are DVC's own, made by a `dvc` on PATH
that holds the real lock from another process for its first calls.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
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


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, tiny_source: Path) -> Path:
    root = tmp_path_factory.mktemp("flows") / "repo"
    root.mkdir()
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    tree = tiny_params_tree(tiny_source, root)
    tree["evaluate"].update(fid_crops=4, kid_subset_size=2)  # the Inception passes dominate a tiny run
    (root / "params.yaml").write_text(PARAMS_HEADER + yaml.safe_dump(tree, sort_keys=False))
    _run(["git", "init", "-q"], root)
    _run([str(BIN / "dvc"), "init", "-q"], root)
    _run([str(BIN / "dvc"), "config", "core.analytics", "false"], root)
    return root


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
    # every task ran once
    assert all(counts == [1] for counts in _task_runs(first_run).values())


def test_second_retrain_with_nothing_changed_skips(repo: Path, first_run):
    from flows.retrain import retrain

    state = retrain(repo=str(repo), return_state=True, **FAST_RETRY)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["status"] == "skipped" and summary["changes"] == []
    assert set(_task_runs(state)) == {"apply params", "detect changes", "report"}
    assert _versions(repo) == ["1"]


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


def test_evaluate_champion_logs_the_benchmark_to_mlflow(repo: Path, first_run, tiny_source: Path, tmp_path: Path):
    from flows.evaluate_champion import evaluate_champion

    benchmark = tmp_path / "Bench4"
    benchmark.mkdir()
    for path in sorted(tiny_source.glob("*.png"))[:4]:
        Image.open(path).save(benchmark / path.name)
    state = evaluate_champion(benchmark=str(benchmark), repo=str(repo), device="cpu", return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["version"] == _champion(repo) and result["images"] == 4
    client = _registry(repo)
    run = client.get_run(result["run_id"])
    version = client.get_model_version(MODEL, result["version"])
    assert run.data.tags["mlflow.parentRunId"] == version.run_id  # nested under the champion's registration run
    assert run.data.tags["benchmark"] == "Bench4" and run.data.tags["model_version"] == result["version"]
    assert run.data.metrics["model_psnr"] == pytest.approx(result["metrics"]["psnr"])
    assert "bicubic_psnr" in run.data.metrics and "model_fid" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")} == {
        "evaluation/metrics.json",
        "evaluation/per_image.csv",
        "evaluation/comparison.png",
    }
    assert version.tags["benchmark.Bench4.run_id"] == run.info.run_id
    assert "| model |" in _artifact("evaluate-gan-enhance-sr-x2-bench4", state)
