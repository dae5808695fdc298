"""Promotion deploys: keep a service on 127.0.0.1 serving the registry version that holds `champion`.

The deployer owns a stable public port, a reverse proxy in front of the bento server that is current. When the alias
moves (`gan-enhance promote`, `--force`, `rollback`, or a person in the MLflow UI) it imports the new version and
builds its bento (what `make bento` does), starts it on a free port, waits for /readyz and checks /model, then
switches new requests to it at once; the old server finishes the requests it has and is stopped. A failed build or
start is logged and the old server keeps serving.

Triggers: MLflow's webhook on the alias (a tracking server over a SQL store: SQLite or PostgreSQL), registered at
start, signed with a secret that the receiver checks; and a poll of the alias every --poll-interval seconds, the only
trigger for a local sqlite:/// or file store and a safety net for missed deliveries.

    python -m gan_enhance.serving.deployer [--params params.yaml] [--port 3000] [--control-port 3001]

    http://127.0.0.1:PORT/...               the service (every BentoML route: /enhance, /model, /readyz, ...)
    http://127.0.0.1:CONTROL_PORT/webhook   MLflow's deliveries (HMAC-checked)
    http://127.0.0.1:CONTROL_PORT/status    what is served, the deploys so far, the webhook's registration
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gan_enhance.device import disable_telemetry
from gan_enhance.lifecycle.server import HOST
from gan_enhance.serving import deployer_webhook
from gan_enhance.serving.bento import BENTOFILE
from gan_enhance.serving.deployer_loop import Deployer, Settings
from gan_enhance.serving.deployer_proxy import proxy_app
from gan_enhance.serving.deployer_signature import webhook_secret

log = logging.getLogger("gan_enhance.deployer")
# MLflow's client retries a request to an unreachable server 7 times with doubling waits (minutes), which would hold
# up the deploy loop, webhook-triggered checks included, while the tracking server restarts; fail within seconds
# instead (the next poll or delivery checks again)
REGISTRY_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}


def control_app(deployer: Deployer, server_ref: list[Any]) -> Starlette:
    """The control port: POST /webhook, GET /status, GET /healthz; its lifespan runs the deployer."""

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        s = deployer.settings
        tasks = [asyncio.create_task(deployer.deploy_loop())]
        if s.poll_s > 0:
            tasks.append(asyncio.create_task(deployer.poll_loop()))
        if s.webhook and deployer_webhook.serves_webhooks(s.tracking_uri):
            tasks.append(asyncio.create_task(deployer.register_webhook(server_ref[0])))
        else:
            deployer.webhook = {"registered": False, "detail": f"{s.tracking_uri} is no tracking server: polling only"}
        deployer.trigger("start")
        yield
        await deployer.shutdown()
        for task in tasks:
            task.cancel()

    async def status(_: Request) -> JSONResponse:
        return JSONResponse(deployer.status())

    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    routes = [
        Route("/webhook", deployer.receive, methods=["POST"]),
        Route("/status", status),
        Route("/healthz", healthz),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


class PortDispatch:
    """One ASGI app for both listening sockets: the public port gets the proxy, the control port (and lifespan)
    the control app."""

    def __init__(self, public_port: int, public: Any, control: Any) -> None:
        self.public_port, self.public, self.control = public_port, public, control

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        app = self.public if scope["type"] != "lifespan" and server and server[1] == self.public_port else self.control
        await app(scope, receive, send)


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"error: cannot listen on {HOST}:{port} ({exc.strerror}); pick another port") from None
    sock.listen(128)
    return sock


def serve(settings: Settings) -> None:
    """Run the deployer until SIGINT/SIGTERM (both ports on 127.0.0.1, one uvicorn server)."""
    import uvicorn

    secret = webhook_secret(settings.state_dir / "webhook-secret")
    sockets = [_listen(settings.port), _listen(settings.control_port)]
    deployer = Deployer(settings, secret)
    server_ref: list[Any] = []
    app = PortDispatch(settings.port, proxy_app(deployer.router), control_app(deployer, server_ref))
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=int(settings.drain_s))
    server = uvicorn.Server(config)
    server_ref.append(server)
    log.info(
        "deployer for '%s' of %s at %s: service http://%s:%d, control http://%s:%d (poll every %s s)",
        settings.alias, settings.model_name, settings.tracking_uri, HOST, settings.port, HOST, settings.control_port,
        settings.poll_s or "- (off)",
    )  # fmt: skip
    server.run(sockets=sockets)


def parse_settings(argv: list[str] | None) -> Settings:
    """The command line (and params.yaml: the registered model's name, the tracking URI) as Settings."""
    parser = argparse.ArgumentParser(
        prog="python -m gan_enhance.serving.deployer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="names the model and tracking URI")
    parser.add_argument("--model-name", help="registered model (default: from params, e.g. gan-enhance-sr-x4)")
    parser.add_argument("--alias", default="champion", help="the alias to follow (default: champion)")
    parser.add_argument("--tracking-uri", help="registry (default: params' tracking.uri, $MLFLOW_TRACKING_URI)")
    parser.add_argument("--port", type=int, default=3000, help="the service's public port on 127.0.0.1")
    parser.add_argument("--control-port", type=int, default=3001, help="webhook receiver and /status")
    parser.add_argument("--poll-interval", type=float, default=30.0, help="seconds between alias checks; 0: off")
    parser.add_argument("--drain-timeout", type=float, default=330.0, help="longest wait for an old server's requests")
    parser.add_argument("--no-webhook", action="store_true", help="do not register a webhook (poll only)")
    parser.add_argument("--state-dir", type=Path, default=Path(".deployer"), help="webhook secret, server logs")
    parser.add_argument("--bentofile", type=Path, default=BENTOFILE)
    parser.add_argument("--context", type=Path, default=Path("."), help="build context (the repository root)")
    args = parser.parse_args(argv)

    from gan_enhance.config import ParamsError, TrackingParams, load_params
    from gan_enhance.lifecycle.registry import registered_model_name
    from gan_enhance.tracking import tracking_uri

    try:
        params = load_params(args.params)
    except ParamsError as exc:
        parser.exit(2, f"error: {exc}\n")
    uri = tracking_uri(TrackingParams(uri=args.tracking_uri)) if args.tracking_uri else tracking_uri(params.tracking)
    if args.port == args.control_port:
        parser.exit(2, "error: --port and --control-port must differ\n")
    return Settings(
        model_name=args.model_name or registered_model_name(params),
        alias=args.alias,
        tracking_uri=uri,
        port=args.port,
        control_port=args.control_port,
        poll_s=args.poll_interval,
        drain_s=args.drain_timeout,
        state_dir=args.state_dir.absolute(),
        bentofile=args.bentofile.absolute(),
        context=args.context.absolute(),
        webhook=not args.no_webhook,
    )


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run the deployer until it is stopped."""
    disable_telemetry()
    for key, value in REGISTRY_HTTP.items():
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per proxied request otherwise
    serve(parse_settings(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
