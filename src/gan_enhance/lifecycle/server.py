"""The MLflow server behind `make ui` (and the registry tests): SQLite backend, local artifact store, 127.0.0.1."""

from __future__ import annotations

import errno
import os
import socket
import sys
from pathlib import Path

from gan_enhance.device import TELEMETRY_OFF

HOST = "127.0.0.1"
# MLflow 3's server also starts a job runner (seven huey consumers, for GenAI jobs) that the registry never uses.
NO_JOB_RUNNER = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def server_command(database: Path, artifacts: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """(command, environment) of `mlflow server` over a SQLite file, artifacts proxied from a local folder.
    One worker process: SQLite takes one writer at a time, and a single server process keeps concurrent clients
    from contending for it across processes."""
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{database.resolve()}",
        "--artifacts-destination",
        str(artifacts.resolve()),
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    return command, {**os.environ, **TELEMETRY_OFF, **NO_JOB_RUNNER}


def port_in_use(port: int, host: str = HOST) -> bool:
    """Whether something already listens on host:port (a server started there would fail to bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False
