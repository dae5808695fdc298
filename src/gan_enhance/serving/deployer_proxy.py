"""The deployer's stable public endpoint: a reverse proxy on 127.0.0.1 that forwards every request to the bento
server that is current, and switches to another one atomically.

A request takes the current upstream and counts itself in flight on it in one step of the event loop, so after
`switch()` no new request reaches the old upstream, and `drain()` waits for those still running on it to finish
(their answers stream back unchanged) before the old server is stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

log = logging.getLogger("gan_enhance.deployer")

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded; Host is the upstream's
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding"}
    | {"upgrade", "host"}
)
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@dataclass(eq=False)
class Upstream:
    """A running bento server: its URL, the registry version it serves, the requests in flight on it, and what
    stops it (`close`, run in a thread once it is drained)."""

    url: str
    version: str
    bento: str
    close: Callable[[], None] = lambda: None
    started_at: float = field(default_factory=time.time)
    inflight: int = 0
    served: int = 0
    client: httpx.AsyncClient | None = None

    def http(self) -> httpx.AsyncClient:
        """The connection pool to this upstream (made on first use, inside the event loop)."""
        if self.client is None:
            # no read timeout here: the bento server enforces its own request timeout (504)
            self.client = httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(None, connect=10.0))
        return self.client


class Router:
    """Which upstream takes new requests. Touch it from the event loop's thread only."""

    def __init__(self) -> None:
        self.current: Upstream | None = None

    def switch(self, new: Upstream) -> Upstream | None:
        """Send every new request to `new`; returns the upstream it replaces."""
        old, self.current = self.current, new
        return old

    @staticmethod
    async def drain(old: Upstream, timeout_s: float) -> bool:
        """Wait until no request is in flight on `old` (True), or `timeout_s` passed (False); close its pool."""
        deadline = time.monotonic() + timeout_s
        while old.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        drained = old.inflight == 0
        if old.client is not None:
            await old.client.aclose()
        return drained


def _error(status: int, problem: str, fix: str) -> JSONResponse:
    return JSONResponse({"error": problem, "fix": fix}, status_code=status)


def proxy_app(router: Router) -> Starlette:
    """The public ASGI app: every path and method goes to `router.current`, request and answer streamed."""

    async def forward(request: Request) -> Response:
        upstream = router.current
        if upstream is None:
            return _error(503, "no model is deployed yet", "wait for the deployer's first bento to be ready")
        upstream.inflight += 1  # same loop step as reading router.current: drain() sees this request
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                upstream.inflight -= 1
                upstream.served += 1

        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
        outgoing = upstream.http().build_request(
            request.method,
            request.url.path,
            params=request.query_params.multi_items(),
            headers=headers,
            content=request.stream() if has_body else None,
        )
        try:
            answer = await upstream.http().send(outgoing, stream=True)
        except httpx.HTTPError as exc:
            release()
            log.error("forwarding %s %s to %s failed: %r", request.method, request.url.path, upstream.url, exc)
            return _error(502, f"the model server did not answer ({type(exc).__name__})", "retry the request")
        except BaseException:
            release()
            raise

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in answer.aiter_raw():
                    yield chunk
            finally:
                await answer.aclose()
                release()

        kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
        return StreamingResponse(body(), status_code=answer.status_code, headers=kept)

    return Starlette(routes=[Route("/{path:path}", forward, methods=METHODS)])


async def stop_upstream(old: Upstream, timeout_s: float) -> dict[str, Any]:
    """Drain `old`, then stop its server (in a thread); what happened, for the deploy record."""
    drained = await Router.drain(old, timeout_s)
    if not drained:
        log.warning(
            "%d request(s) still running on %s after %.0f s; stopping it anyway", old.inflight, old.url, timeout_s
        )
    try:
        await asyncio.to_thread(old.close)
    except Exception as exc:  # the new server is serving already: report, do not fail the deploy
        log.error("stopping the old server %s (version %s) failed: %r", old.url, old.version, exc)
    return {"drained": drained, "left_in_flight": old.inflight, "served": old.served}
