"""What the flows share: the repository's parameters, `dvc` run as a child process with a hard timeout, errors that
say whether a retry can help, the retry condition built on them, and what a command-line run needs: a Prefect API
(a temporary server of its own when none runs) and SIGINT/SIGTERM handling that stops it promptly."""

from __future__ import annotations

import contextvars
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from gan_enhance.config import Params, load_params
from gan_enhance.device import TELEMETRY_OFF
from gan_enhance.errors import GanEnhanceError

PARAMS_FILE = "params.yaml"
VENV_BIN = Path(sys.executable).parent
TAIL_LINES = 40
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_children: set[subprocess.Popen] = set()  # run_command's children that are running now
_received: list[int] = []  # the stop signals received since the command line armed `interruptible`
_armed = False


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached a command-line run: stop now, retry nothing, leave things as after a failure.

    A KeyboardInterrupt, so that Prefect's engine and the libraries treat it as Ctrl+C (no `except Exception` swallows
    it; a task it interrupts ends Crashed, not retried)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's code for a command ended by the signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum

    def __str__(self) -> str:
        return f"{signal.Signals(self.signum).name} received"


class StepError(RuntimeError):
    """A step that failed; `transient` says whether running it again may succeed (lock busy, crash, network)."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


# errors that the same inputs will raise again: the project's own (bad params, data, models or registry state,
# each a GanEnhanceError) and timeouts
PERMANENT_ERRORS = (GanEnhanceError, TimeoutError)


def is_transient(exc: BaseException) -> bool:
    """Whether running the step again may succeed; never once the run was interrupted."""
    if _received:
        return False
    if isinstance(exc, StepError):
        return exc.transient
    return not isinstance(exc, PERMANENT_ERRORS)


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry a failed task only when its error may go away (see `is_transient`)."""
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc)
    return False


def repo_params(repo: Path, overrides: dict[str, Any] | None = None) -> Params:
    """<repo>/params.yaml, validated, with the tracking URI resolved the way the stages resolve it in <repo> (so the
    flow's process talks to the same MLflow store as the `dvc repro` children, whatever its working directory)."""
    from gan_enhance.tracking import tracking_uri

    params = load_params(repo / PARAMS_FILE, overrides)
    params.tracking.uri = tracking_uri(params.tracking, repo)
    return params


def use_registry(uri: str) -> None:
    """Point MLflow's process-wide tracking and registry URIs at `uri`. The lifecycle code passes its URI to
    every client, but MLflow resolves `models:/name/version` artifact URIs with the process-wide registry URI
    (ModelsArtifactRepository ignores the one passed in), so downloading a version's artifacts from a process whose
    working directory is not the repository would look in the wrong store."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


def command_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment, telemetry off, and the venv's bin on PATH (stage commands call `gan-enhance`)."""
    env = {**TELEMETRY_OFF, **os.environ, **(extra or {})}
    path = env.get("PATH", "").split(os.pathsep)
    if str(VENV_BIN) not in path:
        env["PATH"] = os.pathsep.join([*path, str(VENV_BIN)])
    return env


def dvc_executable() -> str:
    """`dvc` from PATH, else the one installed beside this Python."""
    return shutil.which("dvc", path=command_env()["PATH"]) or str(VENV_BIN / "dvc")


def run_command(
    command: list[str],
    cwd: Path,
    timeout_s: float,
    log: Callable[[str], None],
    env: dict[str, str] | None = None,
) -> tuple[int, list[str]]:
    """Run `command` in its own process group, streaming each output line to `log`; kill the group at the timeout
    (StepError, permanent) or when this thread is interrupted. Returns (exit code, last output lines)."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env=env or command_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                tail.append(line)
                log(line)

    # the caller's context: Prefect's settings (the API URL) and run live in context variables, which a new thread
    # does not inherit; without them the run's log lines would start another, ephemeral, Prefect server
    reader = threading.Thread(target=contextvars.copy_context().run, args=(pump,), daemon=True)
    reader.start()
    started = time.monotonic()
    _children.add(proc)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        reader.join(timeout=5)
        raise StepError(
            f"`{' '.join(command[1:3])}` did not finish within {timeout_s:.0f} s and was stopped "
            f"(last output: {_last(tail)})",
            transient=False,
        ) from None
    finally:
        _children.discard(proc)
        if proc.poll() is None or _received:  # interrupted (Prefect's timeout, a signal): leave no orphan behind
            _kill_group(proc)
    reader.join(timeout=5)
    log(f"({' '.join(command[1:3])} took {time.monotonic() - started:.1f} s, exit {proc.returncode})")
    if _received:  # the signal's handler stopped the child before this thread saw the interruption
        raise Interrupted(_received[0])
    return proc.returncode, list(tail)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the child's process group, SIGKILL 10 s later if its leader is still there; then SIGKILL whatever
    is left in the group (a stage's command that outlived `dvc`)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            break
        except subprocess.TimeoutExpired:
            continue
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _last(lines: list[str] | deque[str], count: int = 3) -> str:
    return " | ".join(list(lines)[-count:]) or "none"


DVC_LOCK_BUSY = "Unable to acquire lock"
STAGE_FAILED = re.compile(r"failed to reproduce '([^']+)': failed to run: (.+), exited with (-?\d+)")


def dvc_failure(args: list[str], code: int, tail: list[str]) -> StepError:
    """Why `dvc <args>` failed, and whether a retry can help: DVC's repository lock busy or a stage command that
    crashed (killed, out of memory, a lost connection) may pass next time; a stage that reports a known error (exit
    2: bad params, data or registry state) or a DVC usage error will not."""
    text = "\n".join(tail)
    shown = f"`dvc {' '.join(args)}`"
    if DVC_LOCK_BUSY in text:
        return StepError(
            f"{shown} could not take DVC's repository lock: another DVC process is running in this repository",
            transient=True,
        )
    match = STAGE_FAILED.search(text)
    errors = [line.removeprefix("error: ") for line in tail if line.startswith("error: ")]
    if match:
        stage, command, exit_code = match.group(1), match.group(2), int(match.group(3))
        if exit_code == 2:
            return StepError(f"stage '{stage}' (`{command}`) failed: {errors[-1] if errors else _last(tail)}", False)
        return StepError(f"stage '{stage}' (`{command}`) exited with {exit_code}: {_last(tail)}", transient=True)
    dvc_errors = [line.removeprefix("ERROR: ") for line in tail if line.startswith("ERROR: ")]
    return StepError(f"{shown} exited with {code}: {dvc_errors[-1] if dvc_errors else _last(tail)}", transient=False)


def run_dvc(args: list[str], repo: Path, timeout_s: float, log: Callable[[str], None]) -> list[str]:
    """`dvc <args>` in `repo`; StepError (transient or not, see `dvc_failure`) when it fails."""
    code, tail = run_command([dvc_executable(), *args], repo, timeout_s, log)
    if code != 0:
        raise dvc_failure(args, code, tail)
    return tail


class FlowStepError(RuntimeError):
    """A flow step failed; the message names the step, its attempts and the reason (the flow run's Failed
    message)."""


def _attempts(state: Any) -> int | None:
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            return client.read_task_run(state.state_details.task_run_id).run_count
    except Exception:
        return None


def run_step(task_obj: Any, *args: Any, timings: dict[str, float] | None = None) -> Any:
    """Call a Prefect task and return its result; on failure (after its retries) raise FlowStepError naming the
    step, how many attempts it made and why it failed. `timings` gets the step's seconds."""
    started = time.perf_counter()
    state = task_obj(*args, return_state=True)
    if timings is not None:
        timings[task_obj.name] = time.perf_counter() - started
    if state.is_completed():
        return state.result()
    exc = state.result(raise_on_failure=False)
    attempts = _attempts(state)
    tried = f" after {attempts} attempt{'s' if attempts != 1 else ''}" if attempts else ""
    reason = str(exc) if isinstance(exc, BaseException) else (state.message or state.name)
    raise FlowStepError(f"step '{task_obj.name}' failed{tried}: {reason}")


@contextmanager
def command_line_api() -> Iterator[None]:
    """For a flow run started from the command line: the local Prefect server when one answers on 127.0.0.1 (its
    port: PREFECT_SERVER_API_PORT, default 4200), so the run shows in its UI; else a temporary server for this run.
    An explicit PREFECT_API_URL is left alone.

    The temporary server is this module's, not Prefect's: Prefect starts its own in the caller's process group, so
    Ctrl+C (the terminal signals the whole group) stopped it before the flow run could record its end, and the run
    then retried the dead API for minutes and stayed Running. This one has its own session, the same database
    (PREFECT_HOME), no UI or scheduler, and is stopped once the flow run has ended, however it ended."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_SERVER_API_PORT,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    from gan_enhance.servers import HOST, free_port, server_process

    if PREFECT_API_URL.value():
        yield
        return
    url = f"http://{HOST}:{PREFECT_SERVER_API_PORT.value()}/api"
    if _answers(f"{url}/health"):
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield
        return
    port = free_port()
    url = f"http://{HOST}:{port}/api"
    home = Path(PREFECT_HOME.value())
    home.mkdir(parents=True, exist_ok=True)
    log = home / "temporary-server.log"
    log.unlink(missing_ok=True)
    print(f"no Prefect server on {HOST}:{PREFECT_SERVER_API_PORT.value()}: starting a temporary one at {url} ({log})")
    env = command_env(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
            "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
        }
    )
    command = [str(VENV_BIN / "prefect"), "server", "start", "--host", HOST, "--port", str(port)]
    timeout = max(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value(), 120)
    try:
        with (
            server_process(command, f"{url}/health", log, env, timeout_s=timeout),
            temporary_settings(updates={PREFECT_API_URL: url}),
        ):
            try:
                yield
            finally:
                # a stop signal during the server's stop would leave it running: it waits until that is done
                signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
                _drain_prefect_workers()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _drain_prefect_workers() -> None:
    """Send the logs and events this process still queues (task runs' states among them) to the API."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def _on_stop_signal(signum: int, frame: Any) -> None:
    """The first SIGINT/SIGTERM: terminate the running children and raise Interrupted in the main thread. A later
    one kills the children outright and lets the clean-up that the first one started finish."""
    first = not _received
    _received.append(signum)
    for proc in list(_children):
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM if first else signal.SIGKILL)
    if first:
        raise Interrupted(signum)


@contextmanager
def interruptible(arm: bool = False) -> Iterator[None]:
    """While inside: SIGINT and SIGTERM terminate the running children and raise Interrupted (main thread only).

    The command-line entry points arm it (`arm=True`); the flows' bodies enter it too, to take SIGTERM back from
    Prefect's engine, which would end the run Crashed. Unarmed (a deployment run under a worker or `serve`, the
    tests), a flow body's entry changes nothing: there SIGTERM is how the runner cancels a run."""
    global _armed
    if not (arm or _armed) or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _on_stop_signal) for sig in STOP_SIGNALS}
    was_armed, _armed = _armed, True
    try:
        yield
    finally:
        _armed = was_armed
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: a handler set outside Python
        if arm:
            _received.clear()


def interruption() -> Interrupted | None:
    """The interruption of this command-line run, if a stop signal came."""
    return Interrupted(_received[0]) if _received else None


def run_from_command_line(start: Callable[[], Any]) -> tuple[Any, Interrupted | None]:
    """Run a flow once from the command line: `start` calls it with return_state=True, under a Prefect API (see
    `command_line_api`), SIGINT and SIGTERM stopping it (see `interruptible`). Returns the flow run's final state
    (None when a signal came before the run had one) and the interruption, if any, after printing its one line."""
    state = None
    with interruptible(arm=True):
        try:
            with command_line_api():
                state = start()
        except Interrupted:
            pass
        stopped = interruption()
    if stopped:
        ended = f"; the flow run ended {state.name}" if state is not None else ""
        print(f"interrupted: {stopped}{ended}", file=sys.stderr, flush=True)
    return state, stopped
