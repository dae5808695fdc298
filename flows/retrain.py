"""The `retrain` flow: retrain when the data or the parameters changed, register the result, promote it by policy.

    lock -> apply params -> detect changes -> [refresh data] -> pipeline -> read metrics -> register -> promote
         -> [bento] -> report

DVC is the source of truth for what is stale and how each stage runs: the flow calls `dvc status` and
`dvc repro`, never a stage function, so the stage logic, its caching and dvc.lock stay in one place. What DVC does
not track is checked beside it: the content of the data source (a folder's files are not a DVC dependency, only
its path is) against the prepared data's manifest, and whether the last registered version was ever judged.

Parameter overrides are written into params.yaml the way `dvc exp run -S` writes them (comments kept, validated
first, so a bad value fails before anything changes) and stay there when the pipeline succeeds, so that the next
scheduled run finds nothing changed; when the pipeline fails they are taken back out.

Steps that can fail transiently (DVC's repository lock busy, a crashed stage, a lost MLflow connection) are
retried with exponential back-off; known errors (bad params or data, a refused registry operation, a timeout) fail
at once. A failed step leaves the flow Failed with a message naming the step and the reason; a version registered
before the failure stays registered (the registry only ever gains versions). A file lock in .dvc/tmp keeps two
retrains off one repository at the same time.

    python -m flows.retrain [--force] [--set train.steps=5000] [--source PATH] [--no-bento]
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Cancelled, Completed, State
from prefect.tasks import exponential_backoff

from flows.support import (
    PARAMS_FILE,
    FlowStepError,
    Interrupted,
    StepError,
    command_env,
    interruptible,
    repo_params,
    retry_if_transient,
    run_command,
    run_dvc,
    run_from_command_line,
    run_step,
    use_registry,
)
from gan_enhance.device import disable_telemetry
from gan_enhance.metric_facts import present, samples_note

disable_telemetry()

LOCK_FILE = Path(".dvc/tmp/retrain.lock")
SOURCE_HASHES = Path(".dvc/tmp/retrain-source-hashes.json")  # (path, size, mtime) -> content hash of source files
POLICY_STATE = Path(".dvc/tmp/retrain-policy.json")  # the promotion policy the last promote step applied
PIPELINE_TARGET = "evaluate"  # `dvc repro evaluate`: prepare -> train -> evaluate, whichever DVC finds stale
REGISTER_TARGET = "register"
BENTO_OUT = "dist"
SHORT_TIMEOUT_S = 900.0  # status checks, registry calls, the report
REGISTER_TIMEOUT_S = 1800.0


RetrainError = FlowStepError  # a retrain step failed: the message names the step, the attempts and the reason


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _log(message: str) -> None:
    get_run_logger().info(message)


def _logger() -> Callable[[str], None]:
    """The run logger's info, bound here so that threads (a child process's output reader) can use it."""
    return get_run_logger().info


# --- lock --------------------------------------------------------------------------------------------------------


@contextmanager
def retrain_lock(repo: Path, wait_s: float = 0.0) -> Iterator[None]:
    """Hold an exclusive flock on <repo>/.dvc/tmp/retrain.lock for the whole retrain: a second retrain of the same
    repository waits up to `wait_s` (polling with back-off), then fails naming the holder. The operating system
    releases the lock when its holder exits, however it exits, so a killed run leaves no stale lock behind."""
    if not (repo / ".dvc").is_dir():
        raise RetrainError(
            f"step 'lock' failed: {repo} is not a DVC repository (no .dvc folder); pass repo=<the project root>, "
            "where dvc.yaml and params.yaml are"
        )
    path = repo / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline, delay = time.monotonic() + wait_s, 1.0
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    holder = path.read_text().strip() or "holder unknown"
                    raise RetrainError(
                        f"step 'lock' failed: another retrain is running on {repo} ({holder}); two retrains never run "
                        f"at once on one repository, so this one stops (waited {wait_s:g} s; raise lock_wait_s to "
                        "wait longer)"
                    ) from None
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 30.0)
        from prefect.runtime import flow_run

        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, flow run {flow_run.id or '-'}, since {_now()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# --- apply params ------------------------------------------------------------------------------------------------

_MISSING = object()


def _dotted(tree: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


@task(name="apply params", cache_policy=NO_CACHE, timeout_seconds=SHORT_TIMEOUT_S)
def apply_params(repo: Path, overrides: dict[str, Any]) -> dict[str, list[Any]]:
    """Validate the overrides against the typed params, then write those that differ into params.yaml (as
    `dvc exp run -S` does, comments kept). Returns {key: [old, new]} for what changed."""
    if not overrides:
        return {}
    repo_params(repo, overrides)  # ParamsError names the bad key and what is allowed, before anything is written
    path = repo / PARAMS_FILE
    tree = yaml.safe_load(path.read_text()) or {}
    changes = {key: [_dotted(tree, key), value] for key, value in overrides.items() if _dotted(tree, key) != value}
    if not changes:
        _log(f"overrides already in {PARAMS_FILE}: {overrides}")
        return {}
    from dvc.utils.serialize import modify_yaml

    with modify_yaml(path) as data:
        for key, (_, value) in changes.items():
            *parents, leaf = key.split(".")
            node = data
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    shown = {key: [None if old is _MISSING else old, new] for key, (old, new) in changes.items()}
    _log(f"{PARAMS_FILE}: " + ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in shown.items()))
    return shown


# --- detect changes ----------------------------------------------------------------------------------------------


def _describe_status(status: dict[str, Any]) -> list[str]:
    """`dvc status` -> one line per stale stage, e.g. "stage train: changed deps (params.yaml: train modified)"."""
    lines = []
    for key, entries in status.items():
        stage = key.rpartition(":")[2] if key.split(":")[0].endswith(".yaml") else key  # "../dvc.yaml:train"
        parts = []
        for entry in entries:
            if isinstance(entry, str):
                parts.append(entry)
                continue
            for kind, items in entry.items():
                shown = []
                for path, change in (items or {}).items():
                    detail = ", ".join(f"{k} {v}" for k, v in change.items()) if isinstance(change, dict) else change
                    shown.append(f"{path}: {detail}")
                parts.append(f"{kind} ({'; '.join(shown)})" if shown else kind)
        lines.append(f"stage {stage}: {', '.join(parts)}")
    return lines


def dvc_status(repo: Path) -> dict[str, Any]:
    """What `dvc status --json` says, from DVC's Python API (no process start); a busy DVC lock is transient."""
    from dvc.exceptions import DvcException
    from dvc.lock import LockError
    from dvc.repo import Repo

    try:
        with Repo(str(repo)) as dvc_repo:
            return dvc_repo.status()
    except LockError:
        raise StepError(
            "`dvc status` could not take DVC's repository lock: another DVC process is running in this repository",
            transient=True,
        ) from None
    except DvcException as exc:
        raise StepError(f"`dvc status` failed: {exc}", transient=False) from exc


def _source_hash(item: Any, max_pixels: int, cache: dict[str, str]) -> str | None:
    """Content hash of a source image as prepare computes it (decoded pixels), cached by path, size and mtime;
    None when the image cannot be read any more."""
    from gan_enhance.data.image_io import ImageError, to_uint8
    from gan_enhance.data.prepare import content_hash

    key = None
    if item.path is not None:
        stat = Path(item.path).stat()
        key = f"{Path(item.path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{max_pixels}"
        if key in cache:
            return cache[key]
    try:
        digest = content_hash(to_uint8(item.read(max_pixels)))
    except (ImageError, OSError):
        return None
    if key:
        cache[key] = digest
    return digest


def source_changes(repo: Path) -> list[str]:
    """How the data source differs from what the last prepare consumed (its manifest and report): images added,
    removed or changed in content. Empty when nothing differs, or when there is no prepared data yet (DVC sees
    that itself). The images whose hash is compared are those prepare accepted; rejected ones by name."""
    from gan_enhance.data.domains import domain_sources
    from gan_enhance.data.prepare import DOMAIN_B_DIR, MANIFEST_FILE, REPORT_FILE, read_manifest
    from gan_enhance.data.sources import list_source
    from gan_enhance.tasks import build_task

    params = repo_params(repo)
    prepared = repo / params.data.prepared_dir
    task_b = build_task(params.task).source_b
    if task_b is None:
        domains = [(params.data.source, list_source(params.data.source, repo), prepared)]
    else:
        sources_a, sources_b = domain_sources(params.data.source, task_b, repo)
        domains = [(params.data.source, sources_a, prepared), (task_b, sources_b, prepared / DOMAIN_B_DIR)]
    cache_path = repo / SOURCE_HASHES
    cache: dict[str, str] = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    reasons = []
    for label, items, folder in domains:
        if not (folder / MANIFEST_FILE).is_file():
            continue
        recorded = {row.source: row.sha256 for row in read_manifest(folder)}
        report = json.loads((folder / REPORT_FILE).read_text()) if (folder / REPORT_FILE).is_file() else {}
        rejected = {entry["source"] for entry in report.get("rejections", [])}
        current = {item.name: item for item in items}
        added = sorted(set(current) - set(recorded) - rejected)
        removed = sorted((set(recorded) | rejected) - set(current))
        changed = sorted(
            name
            for name, sha in recorded.items()
            if name in current and _source_hash(current[name], params.data.max_pixels, cache) != sha
        )
        for what, names in (("added", added), ("removed", removed), ("changed", changed)):
            if names:
                shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
                reasons.append(f"source {label}: {len(names)} image(s) {what} since the last prepare ({shown})")
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cache, sort_keys=True))
    tmp.replace(cache_path)
    return reasons


def undecided_registration(repo: Path) -> list[str]:
    """A version that the last run registered but never judged (it failed before promote): run again to judge it."""
    from gan_enhance.lifecycle.registry import CHAMPION, DECISION_TAG, client_for, get_version

    params = repo_params(repo)
    record_path = repo / params.registry.record
    if not (params.tracking.enabled and record_path.is_file()):
        return []
    record = json.loads(record_path.read_text())
    if not record.get("version"):
        return []
    version = get_version(client_for(params.tracking.uri), record["model_name"], str(record["version"]))
    if CHAMPION in version.aliases or DECISION_TAG in version.tags:
        return []
    return [f"version {version.version} of {record['model_name']} was registered but never judged by the policy"]


def policy_changes(repo: Path) -> list[str]:
    """The promotion policy (params.yaml `promote:`, not a DVC stage parameter) changed since the last promote step
    applied it: the registered challenger is judged again."""
    path = repo / POLICY_STATE
    if not path.is_file():
        return []
    before = json.loads(path.read_text())
    now = repo_params(repo).promote.model_dump(mode="json")
    changed = sorted(key for key in set(before) | set(now) if before.get(key) != now.get(key))
    return [f"promotion policy changed ({', '.join(f'promote.{key}' for key in changed)})"] if changed else []


@task(name="detect changes", cache_policy=NO_CACHE, timeout_seconds=SHORT_TIMEOUT_S)
def detect_changes(repo: Path) -> dict[str, Any]:
    """DVC's view (params, code, data and outputs against dvc.lock), the source's content against the manifest, an
    unjudged registration and a changed promotion policy. {'changed', 'reasons', 'source_changed'}."""
    reasons = _describe_status(dvc_status(repo))
    source = source_changes(repo)
    reasons += source
    if not reasons:
        reasons += undecided_registration(repo) + policy_changes(repo)
    for reason in reasons or ["nothing changed since the last run"]:
        _log(reason)
    return {"changed": bool(reasons), "reasons": reasons, "source_changed": bool(source)}


# --- pipeline ----------------------------------------------------------------------------------------------------


@task(name="refresh data", cache_policy=NO_CACHE)
def refresh_data(repo: Path, timeout_s: float) -> None:
    """`dvc repro --force --single-item prepare`: re-read the data source, whose content DVC does not track; the
    stages after it run only if the prepared data came out different."""
    run_dvc(["repro", "--force", "--single-item", "prepare"], repo, timeout_s, _logger())


@task(name="pipeline", cache_policy=NO_CACHE)
def run_pipeline(repo: Path, timeout_s: float) -> None:
    """`dvc repro evaluate`: prepare, train and evaluate, each only when DVC finds it stale."""
    run_dvc(["repro", PIPELINE_TARGET], repo, timeout_s, _logger())


@task(name="read metrics", cache_policy=NO_CACHE, timeout_seconds=SHORT_TIMEOUT_S)
def read_metrics(repo: Path) -> dict[str, Any]:
    """The evaluate stage's metrics.json: the model's numbers and its task's classical baseline's, and the intervals'
    level."""
    from gan_enhance.evaluation.report import METRICS_FILE, MODEL

    path = repo / repo_params(repo).evaluate.out_dir / METRICS_FILE
    if not path.is_file():
        raise StepError(f"no evaluation at {path} after the pipeline ran; see the pipeline step's log", False)
    result = json.loads(path.read_text())
    baseline = result["protocol"].get("classical_baseline")
    numbers = {key: value for key, value in result[MODEL].items() if isinstance(value, int | float)}
    _log("challenger metrics: " + ", ".join(f"{m.name} {m.show_interval(numbers)}" for m in present(numbers)))
    return {
        "model": numbers,
        "baseline": baseline if baseline in result else None,
        "baseline_metrics": result.get(baseline, {}),
        "confidence": result["protocol"].get("confidence"),
    }


@task(name="register", cache_policy=NO_CACHE)
def register_challenger(repo: Path, timeout_s: float) -> dict[str, Any]:
    """`dvc repro register` (the register stage: a new version with alias challenger, or the version that already
    holds this model); returns its record, with `new` telling whether this run created the version."""
    from gan_enhance.lifecycle.registry import client_for, registered_model_name

    params = repo_params(repo)
    name = registered_model_name(params)
    before: set[str] = set()
    if params.tracking.enabled:
        client = client_for(params.tracking.uri)
        before = {str(v.version) for v in client.search_model_versions(f"name = '{name}'")}
    run_dvc(["repro", REGISTER_TARGET], repo, timeout_s, _logger())
    record = json.loads((repo / params.registry.record).read_text())
    version = record.get("version")
    record["new"] = bool(version) and str(version) not in before
    if version:
        _log(f"{'registered' if record['new'] else 'already registered:'} {name} version {version}")
    else:
        _log(f"nothing registered: {record.get('reason')}")
    return record


@task(name="promote", cache_policy=NO_CACHE, timeout_seconds=SHORT_TIMEOUT_S)
def promote_challenger(repo: Path, version: str) -> dict[str, Any]:
    """The promotion policy (gan_enhance.lifecycle.promotion.promote) on the registered version; returns the
    outcome with the challenger's and the (previous) champion's metrics."""
    from gan_enhance.lifecycle.promotion import promote
    from gan_enhance.lifecycle.registry import (
        CHAMPION,
        client_for,
        get_version,
        registered_model_name,
        version_by_alias,
        version_metrics,
    )

    params = repo_params(repo)
    use_registry(params.tracking.uri)
    name = registered_model_name(params)
    client = client_for(params.tracking.uri)
    champion = version_by_alias(client, name, CHAMPION)
    challenger = get_version(client, name, version)
    outcome = promote(params, version=version)
    _log(f"{outcome.verdict}: {name} version {version}: {outcome.reason}")
    (repo / POLICY_STATE).write_text(json.dumps(params.promote.model_dump(mode="json"), sort_keys=True) + "\n")
    return {
        "verdict": outcome.verdict,
        "reason": outcome.reason,
        "model_name": name,
        "version": str(version),
        "champion": outcome.champion,
        "champion_before": str(champion.version) if champion else None,
        "challenger_metrics": version_metrics(challenger),
        "champion_metrics": version_metrics(champion) if champion else {},
    }


@task(name="bento", cache_policy=NO_CACHE)
def bento_for_champion(repo: Path, enabled: bool, timeout_s: float) -> dict[str, Any]:
    """Build the bento for the new champion with the serving module (`python -m gan_enhance.serving.bento`, what
    `make bento` runs), in a child process so that BentoML's state stays out of the flow; skipped with the reason
    when disabled or when serving is not there."""
    if not enabled:
        return {"status": "skipped", "reason": "build_bento is false"}
    missing = [module for module in ("gan_enhance.serving.bento", "bentoml") if find_spec(module) is None]
    if missing or not (repo / "serving" / "bentofile.yaml").is_file():
        reason = f"serving is not installed ({', '.join(missing) or 'serving/bentofile.yaml'} missing)"
        _log(f"bento skipped: {reason}")
        return {"status": "skipped", "reason": reason}
    from gan_enhance.serving.bento import CONTAINERFILE_PROBLEMS

    env = command_env({"BENTOML_HOME": os.environ.get("BENTOML_HOME", str(repo / "bentoml_home"))})
    command = [sys.executable, "-m", "gan_enhance.serving.bento", "--params", PARAMS_FILE, "--out", BENTO_OUT]
    code, tail = run_command(command, repo, timeout_s, _logger(), env)
    text = "\n".join(tail)
    if code not in (0, CONTAINERFILE_PROBLEMS):
        errors = [line for line in tail if line.startswith("error:")]
        reason = errors[-1] if errors else " | ".join(tail[-3:])
        raise StepError(f"`python -m gan_enhance.serving.bento` exited with {code}: {reason}", transient=code != 2)
    built = re.search(r"built bento (\S+)", text)
    archive = re.search(r"exported (\S+)", text)
    return {
        "status": "built",
        "bento": built.group(1) if built else None,
        "archive": archive.group(1) if archive else None,
        "problems": [line.strip() for line in tail if "MISSING:" in line],
    }


# --- report ------------------------------------------------------------------------------------------------------


def artifact_key(model_name: str) -> str:
    """Prefect artifact keys take lowercase letters, digits and dashes."""
    return "retrain-" + re.sub(r"[^a-z0-9-]+", "-", model_name.lower()).strip("-")


def current_champion(repo: Path) -> dict[str, Any] | None:
    """The version holding `champion` now and its metrics (its registry tags); None when tracking is off or no
    version holds the alias."""
    from gan_enhance.lifecycle.registry import (
        CHAMPION,
        client_for,
        registered_model_name,
        version_by_alias,
        version_metrics,
    )

    params = repo_params(repo)
    if not params.tracking.enabled:
        return None
    name = registered_model_name(params)
    version = version_by_alias(client_for(params.tracking.uri), name, CHAMPION)
    if version is None:
        return None
    return {"model_name": name, "version": str(version.version), "metrics": version_metrics(version)}


def describe_champion(champion: dict[str, Any]) -> str:
    """'version 3 (psnr 31.61 [31.02, 32.20], ssim 0.8285 [0.8101, 0.8469], ...)': each metric with its interval."""
    metrics = champion["metrics"]
    shown = ", ".join(f"{m.name} {m.show_interval(metrics)}" for m in present(metrics))
    return f"version {champion['version']}" + (f" ({shown})" if shown else "")


def render_report(summary: dict[str, Any]) -> str:
    """Markdown: the decision, the challenger's metrics beside the champion's (and the baseline's), each with its
    interval, what changed, the registration, the bento and each step's time."""
    model = summary.get("model_name") or "the model"
    lines = [f"# Retrain of `{model}`: {summary['status']}", ""]
    if summary.get("error"):
        lines += [f"**{'Interrupted' if summary['status'] == 'interrupted' else 'Failed'}**: {summary['error']}", ""]
    promotion = summary.get("promotion") or {}
    if promotion:
        lines += [f"**Decision**: {promotion['verdict']}: {promotion['reason']}", ""]
        champion = promotion.get("champion_before")
        evaluated = summary.get("metrics") or {}
        baseline = evaluated.get("baseline")
        ours, theirs = promotion["challenger_metrics"], promotion["champion_metrics"]
        base_metrics = evaluated.get("baseline_metrics") or {}
        held = f"v{champion}" if champion else "(none)"
        header = f"| metric | challenger v{promotion['version']} | champion {held} |"
        lines += [header + (f" {baseline} |" if baseline else ""), "|---|---:|---:|" + ("---:|" if baseline else "")]
        shown = present({**theirs, **ours})
        for m in shown:
            arrow = {"lower": "↓", "higher": "↑"}[m.direction]
            row = f"| {m.name} {arrow} | {m.show_interval(ours)} | {m.show_interval(theirs)} |"
            lines.append(row + (f" {m.show_interval(base_metrics)} |" if baseline else ""))
        note = samples_note(ours, shown, evaluated.get("confidence"))
        lines += ["", note, ""] if note else [""]
    elif summary.get("reason"):
        lines += [f"**Decision**: {summary['reason']}", ""]
    champion = summary.get("champion")
    if champion:
        lines += [f"**Champion now**: {describe_champion(champion)}, `models:/{model}@champion`", ""]
    lines += ["## What changed", ""]
    lines += [f"- {reason}" for reason in summary.get("changes") or ["nothing"]]
    for key, (old, new) in (summary.get("applied") or {}).items():
        lines.append(f"- params.yaml: `{key}` {old!r} -> {new!r}")
    registration = summary.get("registration") or {}
    if registration.get("version"):
        state = "new version" if registration.get("new") else "already registered as version"
        uri, run = registration.get("model_uri"), registration.get("run_id")
        lines += ["", f"**Registration**: {state} {registration['version']} (`{uri}`, MLflow run `{run}`)"]
    bento = summary.get("bento")
    if bento:
        shown = bento.get("bento") or bento.get("reason")
        lines += ["", f"**Bento**: {bento['status']}" + (f" ({shown})" if shown else "")]
        lines += [f"- {problem}" for problem in bento.get("problems", [])]
    timings = summary.get("timings") or {}
    if timings:
        lines += ["", "| step | seconds |", "|---|---:|"] + [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    lines += ["", f"Repository `{summary['repo']}`, started {summary['started']}."]
    return "\n".join(lines) + "\n"


@task(name="report", cache_policy=NO_CACHE, timeout_seconds=SHORT_TIMEOUT_S)
def publish_report(summary: dict[str, Any]) -> str:
    """A Prefect markdown artifact (Artifacts page, and the flow run's Artifacts tab); returns its key."""
    key = artifact_key(summary.get("model_name") or "model")
    create_markdown_artifact(
        markdown=render_report(summary), key=key, description=f"retrain {summary['status']} ({summary['started']})"
    )
    return key


# --- the flow ----------------------------------------------------------------------------------------------------


def _step(summary: dict[str, Any], task_obj: Any, *args: Any) -> Any:
    return run_step(task_obj, *args, timings=summary["timings"])


@flow(name="retrain", log_prints=True)
def retrain(
    overrides: dict[str, Any] | None = None,
    source: str | None = None,
    force: bool = False,
    repo: str = ".",
    build_bento: bool = True,
    retries: int = 2,
    retry_delay_s: float = 30.0,
    pipeline_timeout_s: float = 6 * 3600.0,
    lock_wait_s: float = 0.0,
) -> dict[str, Any] | State:
    """Retrain when the data or the params changed (or when forced), register the challenger, promote it by policy.

    The run ends Completed with the summary; Completed named Skipped when nothing changed; Failed naming the step
    that failed; Cancelled when a command-line run is interrupted (SIGINT, SIGTERM).

    Args:
        overrides: dotted params to set first, as with `dvc exp run -S`, e.g. {"train.steps": 5000}.
        source: a data source (folder or 'embedded'); shorthand for overrides {"data.source": ...}.
        force: run the steps even when nothing changed (the source is read again; DVC still decides what is stale).
        repo: the project root (dvc.yaml, params.yaml).
        build_bento: build the bento when a new champion results (skipped when serving is absent).
        retries: retries of a step that failed transiently; the back-off doubles from retry_delay_s.
        pipeline_timeout_s: limit of `dvc repro` (training included); stopped and failed when exceeded.
        lock_wait_s: how long to wait for another retrain of this repository to finish before failing.
    """
    root = Path(repo).resolve()
    wanted = {**(overrides or {}), **({"data.source": source} if source else {})}
    summary: dict[str, Any] = {"status": "running", "repo": str(root), "started": _now(), "timings": {}}
    retry = {
        "retries": retries,
        "retry_delay_seconds": exponential_backoff(retry_delay_s),
        "retry_jitter_factor": 0.2,
        "retry_condition_fn": retry_if_transient,
    }
    summary["model_name"] = _model_name(root)

    with interruptible():
        try:
            with retrain_lock(root, lock_wait_s):
                try:
                    _run_steps(summary, root, wanted, force, build_bento, retry, pipeline_timeout_s)
                except RetrainError as exc:
                    summary.update(status="failed", error=str(exc))
                    _finish(summary)
                    raise
        except Interrupted as exc:
            summary.update(status="interrupted", error=str(exc))
            return Cancelled(message=f"interrupted: {exc}", data=_finish(summary))
    _finish(summary)
    if summary["status"] == "skipped":
        return Completed(name="Skipped", message=summary["reason"], data=summary)
    return summary


def _run_steps(
    summary: dict[str, Any],
    root: Path,
    wanted: dict[str, Any],
    force: bool,
    build_bento: bool,
    retry: dict[str, Any],
    pipeline_timeout_s: float,
) -> None:
    """The steps after the lock, recorded into `summary`; RetrainError names a step that failed."""
    long_run = {**retry, "timeout_seconds": pipeline_timeout_s + 60}
    original_params = (root / PARAMS_FILE).read_text() if (root / PARAMS_FILE).is_file() else None
    try:  # until the pipeline has run on them, overrides are taken back out of params.yaml if the run stops
        summary["applied"] = _step(summary, apply_params, root, wanted)
        detected = _step(summary, detect_changes.with_options(**retry), root)
        summary["changes"] = detected["reasons"]
        summary["model_name"] = _model_name(root)
        if not (detected["changed"] or force):
            summary.update(status="skipped", reason="nothing changed since the last run (and force is false)")
            return
        if force or detected["source_changed"]:
            _step(summary, refresh_data.with_options(**long_run), root, pipeline_timeout_s)
        _step(summary, run_pipeline.with_options(**long_run), root, pipeline_timeout_s)
    except BaseException:  # a failed step, an interruption, a runner's cancellation
        if summary.get("applied") and original_params is not None:
            (root / PARAMS_FILE).write_text(original_params)
            print(f"{PARAMS_FILE} is back as it was before this run's overrides")
        raise
    summary["metrics"] = _step(summary, read_metrics, root)
    register = register_challenger.with_options(**retry, timeout_seconds=REGISTER_TIMEOUT_S + 60)
    registration = summary["registration"] = _step(summary, register, root, REGISTER_TIMEOUT_S)
    if not registration.get("version"):
        summary.update(status="not registered", reason=registration.get("reason"))
        return
    promote = promote_challenger.with_options(**retry)
    promotion = summary["promotion"] = _step(summary, promote, root, str(registration["version"]))
    summary["status"] = promotion["verdict"]
    new_champion = promotion["verdict"] in ("promoted", "forced") or (
        registration["new"] and promotion["champion"] == promotion["version"]
    )
    if new_champion:
        once = min(retry["retries"], 1)
        bento = bento_for_champion.with_options(retries=once, retry_condition_fn=retry_if_transient)
        summary["bento"] = _step(summary, bento, root, build_bento, REGISTER_TIMEOUT_S)


def _model_name(repo: Path) -> str | None:
    from gan_enhance.lifecycle.registry import registered_model_name

    try:
        return registered_model_name(repo_params(repo))
    except Exception:
        return None


def _finish(summary: dict[str, Any]) -> dict[str, Any]:
    """Add the current champion (unless the run failed or was interrupted), publish the report (a failure to read the
    champion or to publish is logged, never hides the run's own outcome), print the outcome and return the summary."""
    summary["timings"] = {key: round(value, 2) for key, value in summary["timings"].items()}
    if summary["status"] not in ("failed", "interrupted"):
        try:
            summary["champion"] = current_champion(Path(summary["repo"]))
        except Exception as exc:
            print(f"warning: the champion could not be read from the registry ({exc})")
    state = publish_report(summary, return_state=True)
    if state.is_completed():
        summary["artifact"] = state.result()
    else:
        print(f"warning: the report could not be published ({state.message})")
    why = summary.get("reason") or summary.get("error")
    champion = summary.get("champion")
    print(
        f"retrain {summary['status']}"
        + (f": {why}" if why else "")
        + (f"; champion: {describe_champion(champion)}" if champion else "")
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.retrain`: one run; exit 0 when it completed (skipped included), 1 when it failed, 128 + the
    signal's number when SIGINT or SIGTERM stopped it."""
    import argparse

    from gan_enhance.config import parse_overrides

    parser = argparse.ArgumentParser(description="Run the retrain flow once (see flows/README.md).")
    parser.add_argument("--set", "-S", action="append", default=[], help="KEY=VALUE param override (repeatable)")
    parser.add_argument("--source", help="data source: a folder of images or 'embedded'")
    parser.add_argument("--force", action="store_true", help="run even when nothing changed")
    parser.add_argument("--no-bento", action="store_true", help="do not build a bento for a new champion")
    parser.add_argument("--repo", default=".", help="project root (default: the current directory)")
    parser.add_argument("--summary", type=Path, help="write the run's summary (JSON) to this file")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.set)
    state, interrupted = run_from_command_line(
        lambda: retrain(
            overrides=overrides,
            source=args.source,
            force=args.force,
            repo=args.repo,
            build_bento=not args.no_bento,
            return_state=True,
        )
    )
    if args.summary:
        if state is not None and state.is_completed():
            summary = state.result()
        else:
            error = state.message if state is not None else f"interrupted: {interrupted}"
            summary = {"status": "interrupted" if interrupted else "failed", "error": error}
        args.summary.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if interrupted:
        return interrupted.exit_code
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
