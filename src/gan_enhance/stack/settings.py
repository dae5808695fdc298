"""The team stack's settings: one `.env` file, generated once with random secrets (mode 0600, git-ignored), that
every later command reads. It holds the data folder, the ports and the credentials; nothing here is a constant
secret. The same file feeds deploy/compose.yaml (`--env-file .env`)."""

from __future__ import annotations

import base64
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from gan_enhance.errors import GanEnhanceError
from gan_enhance.lifecycle.server import HOST, port_in_use
from gan_enhance.servers import free_port

DEFAULT_ENV_FILE = Path(".env")
DEFAULT_DIR = Path(".stack")
DB_USER = "gan_enhance"
MLFLOW_DB = "mlflow"
PREFECT_DB = "prefect"
MLFLOW_BUCKET = "mlflow"
DVC_BUCKET = "dvc"
REGION = "us-east-1"
S3_INTERNAL_PORTS = 9  # SeaweedFS's own servers: s3 gRPC, master, volume, filer, admin (HTTP and gRPC each)
DEFAULT_PORTS = {
    "STACK_POSTGRES_PORT": 5433,
    "STACK_S3_PORT": 8333,
    "STACK_MLFLOW_PORT": 5050,
    "STACK_PREFECT_PORT": 4250,
}


class StackError(GanEnhanceError, RuntimeError):
    """The team stack cannot do what was asked; the message names the problem and the fix."""


@dataclass(frozen=True)
class StackSettings:
    """Everything the stack's processes and its users need, as read from the .env file."""

    env_file: Path
    values: dict[str, str]

    @property
    def dir(self) -> Path:
        return Path(self.values["STACK_DIR"])

    def port(self, key: str) -> int:
        return int(self.values[key])

    @property
    def s3_internal_ports(self) -> list[int]:
        return [int(p) for p in self.values["STACK_S3_INTERNAL_PORTS"].split(",")]

    @property
    def db_user(self) -> str:
        return self.values["STACK_DB_USER"]

    @property
    def db_password(self) -> str:
        return self.values["STACK_DB_PASSWORD"]

    def database_url(self, database: str, driver: str) -> str:
        """SQLAlchemy URL without the password: the processes get it as PGPASSWORD (libpq and asyncpg read it), so
        it never shows in a command line."""
        return f"postgresql+{driver}://{self.db_user}@{HOST}:{self.port('STACK_POSTGRES_PORT')}/{database}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.port('STACK_MLFLOW_PORT')}"

    @property
    def prefect_api_url(self) -> str:
        return f"http://{HOST}:{self.port('STACK_PREFECT_PORT')}/api"

    @property
    def s3_url(self) -> str:
        return f"http://{HOST}:{self.port('STACK_S3_PORT')}"

    def s3_credentials(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.values["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": self.values["AWS_SECRET_ACCESS_KEY"],
            "AWS_DEFAULT_REGION": REGION,
        }

    def client_env(self) -> dict[str, str]:
        """What a user exports so that the project's commands, flows and DVC use the stack: MLflow's tracking and
        registry, Prefect's API, and the S3 store (for DVC's remote and direct artifact access)."""
        return {
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
            "AWS_ENDPOINT_URL_S3": self.s3_url,  # botocore (DVC's s3 remote, boto3) reads it
            **self.s3_credentials(),
            "PREFECT_API_URL": self.prefect_api_url,
        }


def _generated(environ: dict[str, str]) -> dict[str, str]:
    """A new .env's values: STACK_* from `environ` where given, else the defaults (a default port that is taken
    becomes a free one); fresh random secrets."""
    values = {"STACK_DIR": str(Path(environ.get("STACK_DIR", DEFAULT_DIR)).resolve())}
    taken: set[int] = set()
    for key, default in DEFAULT_PORTS.items():
        port = int(environ.get(key, default))
        if key not in environ and (port_in_use(port) or port in taken):
            port = _free_port_not_in(taken)
        taken.add(port)
        values[key] = str(port)
    internal = environ.get("STACK_S3_INTERNAL_PORTS") or ",".join(
        str(_free_port_not_in(taken)) for _ in range(S3_INTERNAL_PORTS)
    )
    values["STACK_S3_INTERNAL_PORTS"] = internal
    values.update(
        {
            "POSTGRES_PASSWORD": secrets.token_hex(24),
            "STACK_DB_USER": DB_USER,
            "STACK_DB_PASSWORD": secrets.token_hex(24),
            "AWS_ACCESS_KEY_ID": "GE" + secrets.token_hex(9).upper(),
            "AWS_SECRET_ACCESS_KEY": secrets.token_hex(32),
            # the key MLflow encrypts stored webhook secrets with (a Fernet key): fixed, so that both workers and
            # a restarted server can read the deployer's webhook
            "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        }
    )
    return values


def _free_port_not_in(taken: set[int]) -> int:
    while True:
        port = free_port()
        if port not in taken:
            taken.add(port)
            return port


def write_env_file(env_file: Path, values: dict[str, str]) -> None:
    """Create `env_file` (mode 0600 from the start, never world-readable) with `values`; refuses to overwrite."""
    env_file.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(f"{key}={value}\n" for key, value in values.items())
    header = "# gan-enhance team stack: generated by `python -m gan_enhance.stack up`; secret, keep out of git\n"
    fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(header + body)


def read_env_file(env_file: Path) -> dict[str, str]:
    """KEY=VALUE lines (comments and blank lines skipped)."""
    values = {}
    for number, line in enumerate(env_file.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise StackError(f"{env_file} line {number} is not KEY=VALUE: {line!r}; fix or delete the file")
        values[key.strip()] = value.strip()
    return values


REQUIRED = (
    "STACK_DIR",
    *DEFAULT_PORTS,
    "STACK_S3_INTERNAL_PORTS",
    "POSTGRES_PASSWORD",
    "STACK_DB_USER",
    "STACK_DB_PASSWORD",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY",
)


def load_settings(env_file: Path = DEFAULT_ENV_FILE, create: bool = False) -> StackSettings:
    """The settings in `env_file`; with `create`, the file is generated first when missing (STACK_* variables of
    this process's environment choose the folder and ports). Refuses a file others can read, or one that lacks a
    key."""
    env_file = env_file.resolve()
    if not env_file.is_file():
        if not create:
            raise StackError(f"no stack settings at {env_file}; start the stack with `make stack-up` first")
        write_env_file(env_file, _generated(dict(os.environ)))
    mode = stat.S_IMODE(env_file.stat().st_mode)
    if mode & 0o077:
        raise StackError(f"{env_file} holds secrets but is readable by others (mode {mode:o}); chmod 600 {env_file}")
    values = read_env_file(env_file)
    missing = [key for key in REQUIRED if not values.get(key)]
    if missing:
        raise StackError(
            f"{env_file} lacks {', '.join(missing)}; stop the stack, move the file away and run `make stack-up` "
            "to generate a complete one"
        )
    return StackSettings(env_file, values)
