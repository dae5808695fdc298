"""The deployer's state and deploy loop: what triggers a check (start, webhook, poll, recheck), the check of the
alias against the served version, a deploy (build, start, switch, drain the old server in the background), the
webhook's registration and its deliveries, and the record GET /status shows."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from gan_enhance.lifecycle.server import HOST
from gan_enhance.serving import deployer_webhook
from gan_enhance.serving.deployer_proxy import Router, Upstream, stop_upstream
from gan_enhance.serving.deployer_release import build_release, start_server
from gan_enhance.serving.deployer_signature import SignatureError, verify

log = logging.getLogger("gan_enhance.deployer")
SEEN_DELIVERIES = 1000  # delivery ids remembered, to answer MLflow's retries of one delivery only once


@dataclass(frozen=True)
class Settings:
    """Where the deployer listens, what it follows and how (see --help)."""

    model_name: str
    alias: str
    tracking_uri: str
    port: int
    control_port: int
    poll_s: float
    drain_s: float
    state_dir: Path
    bentofile: Path
    context: Path
    webhook: bool = True

    @property
    def webhook_url(self) -> str:
        return f"http://{HOST}:{self.control_port}/webhook"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Deployer:
    """The deploy loop, its triggers and its record. Runs on one event loop; builds and server starts run in
    threads, one deploy at a time."""

    def __init__(self, settings: Settings, secret: str) -> None:
        self.settings = settings
        self.secret = secret
        self.router = Router()
        self.wake = asyncio.Event()
        self.pending: list[tuple[str, str]] = []  # (trigger, when) since the last check
        self.failed: set[str] = set()
        self.deploys: list[dict[str, Any]] = []
        self.webhook: dict[str, Any] = {"registered": False, "detail": "not registered yet"}
        self.seen: deque[str] = deque(maxlen=SEEN_DELIVERIES)
        self.stopping = False
        self.busy = False
        self.retiring: set[asyncio.Task] = set()  # old servers being drained and stopped

    def trigger(self, source: str) -> None:
        """Ask the deploy loop to compare the alias with what is served."""
        self.pending.append((source, _now()))
        self.wake.set()

    def champion_version(self) -> str | None:
        """The version holding the alias now (a registry read); None when no version holds it."""
        from gan_enhance.lifecycle.registry import client_for, version_by_alias

        held = version_by_alias(client_for(self.settings.tracking_uri), self.settings.model_name, self.settings.alias)
        return None if held is None else str(held.version)

    async def deploy_loop(self) -> None:
        while not self.stopping:
            await self.wake.wait()
            self.wake.clear()
            triggers, self.pending = self.pending, []
            if triggers and not self.stopping:
                self.busy = True
                try:
                    await self.reconcile(triggers)
                finally:
                    self.busy = False

    async def reconcile(self, triggers: list[tuple[str, str]]) -> None:
        """Deploy the alias's version unless it is served already. Failures are logged and recorded; the server
        that was serving keeps serving."""
        s = self.settings
        serving = self.router.current.version if self.router.current else None
        checked = time.monotonic()
        try:
            target = await asyncio.to_thread(self.champion_version)
        except Exception as exc:
            log.error("cannot read '%s' of %s at %s: %s", s.alias, s.model_name, s.tracking_uri, exc)
            return
        if target is None:
            log.warning("no version of %s holds '%s'; serving version %s unchanged", s.model_name, s.alias, serving)
            return
        sources = [source for source, _ in triggers]
        if target == serving or (target in self.failed and set(sources) <= {"poll", "recheck"}):
            return
        source, at = triggers[0]
        record: dict[str, Any] = {
            "version": target,
            "replaces": serving,
            "trigger": source,  # the first of the triggers this check answered
            "triggers": sorted(set(sources)),
            "triggered_at": at,
        }
        self.deploys.append(record)
        log.info(
            "%s of %s is version %s (serving %s; trigger %s): building", s.alias, s.model_name, target, serving, source
        )
        try:
            release = await asyncio.to_thread(
                build_release, s.model_name, s.tracking_uri, s.alias, s.bentofile, s.context
            )
            record.update(version=release.version, bento=release.bento, build_s=round(release.build_s, 2))
            if self.stopping:
                raise RuntimeError("the deployer is stopping")
            started = time.monotonic()
            upstream = await asyncio.to_thread(start_server, release, s.state_dir / "logs")
            record["start_s"] = round(time.monotonic() - started, 2)
        except Exception as exc:
            self.failed.add(target)
            record.update(status="failed", error=str(exc)[-2000:])
            log.error("deploy of version %s failed; version %s keeps serving: %s", target, serving, exc)
            return
        if self.stopping:
            await asyncio.to_thread(upstream.close)
            return
        old = self.router.switch(upstream)
        self.failed.discard(release.version)
        record.update(
            status="serving", url=upstream.url, switched_at=_now(), handover_s=round(time.monotonic() - checked, 2)
        )
        log.info(
            "version %s serves at %s (bento %s, %.1f s after the check that found it; trigger %s)",
            release.version, upstream.url, release.bento, record["handover_s"], source,
        )  # fmt: skip
        if old is not None:  # drained beside the loop: a long request on it does not hold up the next deploy
            task = asyncio.create_task(self._retire(old, record))
            self.retiring.add(task)
            task.add_done_callback(self.retiring.discard)
        self.trigger("recheck")  # the alias may have moved again while this one was built

    async def _retire(self, old: Upstream, record: dict[str, Any]) -> None:
        record["old"] = await stop_upstream(old, self.settings.drain_s)
        drained = record["old"]["drained"]
        log.info("version %s stopped after %d requests (drained: %s)", old.version, old.served, drained)

    async def poll_loop(self) -> None:
        while not self.stopping:
            await asyncio.sleep(self.settings.poll_s)
            self.trigger("poll")

    async def register_webhook(self, server: Any) -> None:
        """Register the webhook once the receiver listens (MLflow sends a test delivery at once)."""
        s = self.settings
        while not server.started:
            await asyncio.sleep(0.05)
        from gan_enhance.lifecycle.registry import client_for

        name = deployer_webhook.webhook_name(s.model_name, s.alias)
        try:
            done = await asyncio.to_thread(
                deployer_webhook.register, client_for(s.tracking_uri), name, s.webhook_url, self.secret
            )
        except Exception as exc:
            self.webhook = {"registered": False, "detail": f"registration failed: {exc}"}
            log.error(
                "could not register the webhook at %s (%s); polling every %.0f s instead. The MLflow server needs %s",
                s.tracking_uri, exc, s.poll_s, deployer_webhook.SERVER_SETTINGS,
            )  # fmt: skip
            return
        self.webhook = {"registered": True, "id": done.webhook_id, "url": done.url, "test": done.test_detail}
        self.webhook["tested"] = done.tested
        if done.tested:
            log.info("webhook %s registered at %s and tested: %s", name, s.tracking_uri, done.test_detail)
        else:
            log.error(
                "webhook %s registered, but MLflow's test delivery to %s failed (%s): polling covers; the MLflow "
                "server needs %s", name, done.url, done.test_detail, deployer_webhook.SERVER_SETTINGS,
            )  # fmt: skip

    def unregister_webhook(self) -> None:
        if not self.webhook.get("registered"):
            return
        from gan_enhance.lifecycle.registry import client_for

        try:
            client_for(self.settings.tracking_uri).delete_webhook(self.webhook["id"])
            log.info("deleted webhook %s at %s", self.webhook["id"], self.settings.tracking_uri)
        except Exception as exc:
            log.error("could not delete webhook %s at %s: %s", self.webhook["id"], self.settings.tracking_uri, exc)

    async def receive(self, request: Request) -> JSONResponse:
        """POST /webhook: a signed MLflow delivery; 401 when the signature does not check out."""
        body = await request.body()
        try:
            delivery = verify(self.secret, request.headers, body)
        except SignatureError as exc:
            log.warning("refused a webhook delivery from %s: %s", request.client.host if request.client else "?", exc)
            return JSONResponse({"error": f"bad signature: {exc}", "fix": "see the deployer's log"}, status_code=401)
        if delivery in self.seen:
            return JSONResponse({"ignored": f"delivery {delivery} was received before"})
        self.seen.append(delivery)
        try:
            payload = json.loads(body)
        except ValueError:
            return JSONResponse({"error": "the body is not JSON", "fix": "send MLflow's webhook payload"}, 400)
        event = deployer_webhook.read_event(payload, self.settings.model_name, self.settings.alias)
        if not event.wanted:
            log.info("webhook delivery %s ignored: %s", delivery, event.reason)
            return JSONResponse({"ignored": event.reason})
        log.info("webhook delivery %s: %s", delivery, event.reason)
        self.trigger("webhook")
        return JSONResponse({"accepted": event.reason}, status_code=202)

    def status(self) -> dict[str, Any]:
        current = self.router.current
        s = self.settings
        return {
            "model": s.model_name,
            "alias": s.alias,
            "tracking_uri": s.tracking_uri,
            "public_url": f"http://{HOST}:{s.port}",
            "serving": None
            if current is None
            else {
                "version": current.version,
                "bento": current.bento,
                "url": current.url,
                "in_flight": current.inflight,
            },
            "deploying": self.busy,
            "deploys": self.deploys,
            "failed_versions": sorted(self.failed),
            "webhook": self.webhook,
            "poll_interval_s": s.poll_s,
        }

    async def shutdown(self) -> None:
        """Stop the loops, wait for a deploy in progress, stop the served bento, delete the webhook."""
        self.stopping = True
        self.wake.set()
        if self.busy:
            log.info("waiting for the deploy in progress to end")
        while self.busy:
            await asyncio.sleep(0.2)
        await asyncio.gather(*self.retiring)
        if self.router.current is not None:
            await stop_upstream(self.router.current, timeout_s=0)
            log.info("stopped the server of version %s", self.router.current.version)
        await asyncio.to_thread(self.unregister_webhook)
