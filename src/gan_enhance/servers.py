"""Local server processes for the tests and benchmarks (MLflow, Prefect, BentoML): a free port on 127.0.0.1, and a
server process that is started in its own process group, awaited until its health URL answers, and stopped with its
workers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from gan_enhance.lifecycle.server import HOST


def free_port() -> int:
    """A TCP port on HOST that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_healthy(process: subprocess.Popen, health_url: str, timeout_s: float, log: Path | None) -> None:
    """Poll `health_url` until it answers 200; RuntimeError with the server's log if the process exits or time runs
    out."""
    deadline = time.monotonic() + timeout_s
    while True:
        output = log.read_text() if log and log.is_file() else "(no log)"
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited before it was ready:\n{output[-5000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(health_url, timeout=2) as response:
            if response.status == 200:
                return
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{health_url} not ready after {timeout_s:.0f} s:\n{output[-5000:]}")
        time.sleep(0.3)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL if it is still there after 30 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def kill_tree(process: subprocess.Popen) -> str:
    """SIGKILL `process` and every process below it, including those in sessions of their own (torchrun's workers
    are), and return what it had written to its stdout pipe."""
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(process.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
    process.kill()
    output, _ = process.communicate()
    return output or ""


@contextlib.contextmanager
def server_process(
    command: list[str],
    health_url: str,
    log: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 180.0,
) -> Iterator[subprocess.Popen]:
    """Start `command` (output appended to `log`), yield the process once `health_url` answers 200, stop it
    afterwards."""
    with open(log, "ab") if log else open(os.devnull, "wb") as output:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends the server and its workers
        )
        try:
            wait_healthy(process, health_url, timeout_s, log)
            yield process
        finally:
            stop(process)
