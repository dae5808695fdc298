"""The MLflow side of the deployer's webhook: registering it on the tracking server, and reading its deliveries.

MLflow 3 delivers webhooks from the tracking server's REST handlers, and only for SQL-backed registries (SQLite
included): a client that writes a sqlite:/// store directly, without a server, triggers none, so the deployer
registers one only when the tracking URI is an http(s) server, and polls the alias in every case. The server must
be allowed to call a local receiver: MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https and
MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true in its environment (STACK.md; `make ui` sets both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

ALIAS_CREATED = "model_version_alias.created"  # sent when an alias is set, also when it moves to another version
ALIAS_DELETED = "model_version_alias.deleted"
EVENTS = [ALIAS_CREATED, ALIAS_DELETED]
SERVER_SETTINGS = "MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true"


def serves_webhooks(tracking_uri: str) -> bool:
    """Whether alias changes at `tracking_uri` can reach a webhook (a tracking server, not a local store)."""
    return tracking_uri.startswith(("http://", "https://"))


def webhook_name(model_name: str, alias: str) -> str:
    return f"gan-enhance-deployer-{model_name}-{alias}"


@dataclass(frozen=True)
class Registration:
    """The webhook as registered, and whether MLflow's test delivery reached the receiver."""

    webhook_id: str
    url: str
    tested: bool
    test_detail: str


def register(client: MlflowClient, name: str, url: str, secret: str) -> Registration:
    """Create the webhook `name` (or update the one of that name: a new URL and secret, active again) for the alias
    events, then ask MLflow to send it a test delivery. Call while the receiver answers."""
    existing = [hook for hook in _all_webhooks(client) if hook.name == name]
    description = "gan-enhance deployer: rebuild and switch the service when the alias moves"
    if existing:
        hook = client.update_webhook(
            existing[0].webhook_id, url=url, events=EVENTS, secret=secret, status="ACTIVE", description=description
        )
        for duplicate in existing[1:]:
            client.delete_webhook(duplicate.webhook_id)
    else:
        hook = client.create_webhook(name, url, EVENTS, description=description, secret=secret)
    result = client.test_webhook(hook.webhook_id, event=ALIAS_CREATED)
    detail = result.error_message or f"HTTP {result.response_status}"
    return Registration(hook.webhook_id, url, bool(result.success), detail)


def _all_webhooks(client: MlflowClient) -> list[Any]:
    hooks, token = [], None
    while True:
        try:
            page = client.list_webhooks(max_results=100, page_token=token)
        except MlflowException as exc:
            # MLflow encrypts webhook secrets with MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY, else with a key drawn at
            # each server start: after a restart it cannot read the webhooks it stored, and listing fails with HTTP
            # 500 (which MLflow's client reports as "too many 500 error responses" once its retries are spent)
            if "500" not in str(exc):
                raise
            raise MlflowException(
                f"the MLflow server cannot list its webhooks ({exc.message or exc.error_code}); if it was restarted "
                "without a fixed MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY it cannot decrypt those it stored: start it "
                "with one (`make ui` keeps one in .deployer/mlflow-webhook-key)"
            ) from exc
        hooks.extend(page)
        token = page.token
        if not token:
            return hooks


@dataclass(frozen=True)
class Event:
    """A delivery read: `wanted` when it is about the deployer's model and alias, else `reason` says why not."""

    wanted: bool
    reason: str
    version: str | None = None


def read_event(payload: dict[str, Any], model_name: str, alias: str) -> Event:
    """What a delivery body ({"entity", "action", "timestamp", "data": {"name", "alias", "version"}}) means here."""
    event = f"{payload.get('entity')}.{payload.get('action')}"
    data = payload.get("data") or {}
    if event not in EVENTS:
        return Event(False, f"event {event} is not an alias event")
    if data.get("name") != model_name or data.get("alias") != alias:
        return Event(False, f"alias '{data.get('alias')}' of '{data.get('name')}' is not '{alias}' of '{model_name}'")
    if event == ALIAS_DELETED:
        return Event(False, f"'{alias}' was deleted: the service keeps the version it serves")
    return Event(True, f"'{alias}' of '{model_name}' set to version {data.get('version')}", str(data.get("version")))
