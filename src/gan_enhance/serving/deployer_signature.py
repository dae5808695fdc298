"""The deployer's webhook secret and the check of MLflow's webhook signatures.

MLflow 3 signs each delivery like Standard Webhooks: header `X-MLflow-Signature: v1,<base64 HMAC-SHA256>` over
`<X-MLflow-Delivery-Id>.<X-MLflow-Timestamp>.<raw body>`, keyed with the webhook's secret. The secret comes from
GAN_ENHANCE_DEPLOY_WEBHOOK_SECRET, else from a file the deployer generates once (mode 0600, git-ignored); it is
never a constant in the code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path

SECRET_ENV = "GAN_ENHANCE_DEPLOY_WEBHOOK_SECRET"
SIGNATURE_HEADER = "x-mlflow-signature"
TIMESTAMP_HEADER = "x-mlflow-timestamp"
DELIVERY_HEADER = "x-mlflow-delivery-id"
SIGNATURE_VERSION = "v1"
MAX_AGE_S = 300  # older (or further in the future) deliveries are refused as replays


class SignatureError(ValueError):
    """A webhook delivery whose signature, timestamp or headers do not check out."""


def webhook_secret(path: Path) -> str:
    """The webhook secret: $GAN_ENHANCE_DEPLOY_WEBHOOK_SECRET, else the contents of `path`, which is created with a
    new random secret (readable by the owner only) when it does not exist."""
    from_env = os.environ.get(SECRET_ENV, "").strip()
    if from_env:
        return from_env
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    secret = path.read_text().strip()
    if not secret:
        raise SignatureError(f"the webhook secret file {path} is empty; delete it and a new secret is generated")
    return secret


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The `X-MLflow-Signature` value MLflow sends for this delivery."""
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: float | None = None) -> str:
    """Check a delivery's signature and age; returns its delivery id. SignatureError names what is wrong."""
    lowered = {key.lower(): value for key, value in headers.items()}
    missing = [name for name in (SIGNATURE_HEADER, TIMESTAMP_HEADER, DELIVERY_HEADER) if not lowered.get(name)]
    if missing:
        raise SignatureError(
            f"missing header(s) {', '.join(missing)}: register the webhook with the deployer's secret "
            "(`python -m gan_enhance.serving.deployer` does it at start)"
        )
    delivery_id, timestamp = lowered[DELIVERY_HEADER], lowered[TIMESTAMP_HEADER]
    try:
        age = (time.time() if now is None else now) - int(timestamp)
    except ValueError:
        raise SignatureError(f"timestamp '{timestamp}' is not a Unix time in seconds") from None
    if abs(age) > MAX_AGE_S:
        raise SignatureError(f"timestamp is {age:.0f} s off this machine's clock (at most {MAX_AGE_S} s)")
    expected = signature(secret, delivery_id, timestamp, body)
    sent = [value.strip() for value in lowered[SIGNATURE_HEADER].split(" ")]  # several may be sent, space-separated
    if not any(hmac.compare_digest(value, expected) for value in sent):
        raise SignatureError(
            "signature does not match: the webhook was registered with another secret; restart the deployer "
            f"(it re-registers the webhook) or set {SECRET_ENV} to the secret the webhook has"
        )
    return delivery_id
