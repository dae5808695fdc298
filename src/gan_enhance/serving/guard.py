"""`RequestGuard`, the ASGI middleware that checks every POST to the service's API routes (size, content type, form
fields) before BentoML parses it, answers bad ones itself, and adds a "fix" to BentoML's own 400s; and `JsonRewrite`,
which reshapes a JSON answer BentoML builds itself (the service's OpenAPI document)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from gan_enhance.serving.errors import BATCH_HINT, CURL_HINT, GENERATE_HINT, SUPPORTED, RequestError
from gan_enhance.serving.settings import ServeSettings

ENHANCE_FIELDS = {"image": "file", "mask": "file", "format": "text", "quality": "text"}
DRAIN_MIN_BYTES = 64 * 2**20  # an unread body up to max(this, 4 x the route's limit) is read before refusing

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class Route:
    """What the guard lets through to one API route."""

    max_bytes: int
    content_types: tuple[str, ...]
    fix: str  # how to send a good request; added to BentoML's own 400s for this route
    fields: Mapping[str, str] = field(default_factory=dict)  # multipart: name -> "file" | "text"; empty: no check
    required: tuple[str, ...] = ()

    @property
    def drain_bytes(self) -> int:
        """How much of a refused body is read (and discarded) so that the client gets the refusal."""
        return max(4 * self.max_bytes, DRAIN_MIN_BYTES)


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class RequestGuard:
    """Checks POSTs to the service's API routes before BentoML sees them, and answers bad ones itself:
    415 wrong content type, 413 body over the route's limit (by Content-Length, or counted while reading),
    400 malformed multipart, missing/duplicate/unknown fields, or text where a file belongs. It also adds a
    "fix" to BentoML's own 400 validation errors on those routes. Other paths pass untouched."""

    def __init__(self, app: Callable[..., Awaitable[None]], routes: Mapping[str, Route]) -> None:
        self.app, self.routes = app, dict(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if route is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        body_read = False

        async def tracked() -> Message:
            nonlocal body_read
            message = await receive()
            body_read = message["type"] == "http.disconnect" or not message.get("more_body", False)
            return message

        try:
            body = await self._read_checked(scope, tracked, route)
            if route.fields:
                await self._check_form(scope, body, route)
        except RequestError as exc:
            if not body_read:
                # a refusal sent while the client is still sending reaches it as a connection reset (urllib, requests)
                await _drain(scope, tracked, route.drain_bytes)
            await _send_json(send, exc.status, exc.body())
            return
        await self.app(scope, _replay(body), _with_fix(send, route.fix))

    @staticmethod
    def _content_type(scope: Scope) -> str:
        headers = dict(scope.get("headers") or [])
        return headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()

    async def _read_checked(self, scope: Scope, receive: Receive, route: Route) -> bytes:
        content_type = self._content_type(scope)
        if content_type not in route.content_types:
            raise RequestError(415, f"content type '{content_type or 'none'}' is not accepted here", route.fix)
        limit_mb = f"{route.max_bytes / 2**20:g} MiB"
        too_big = RequestError(
            413, f"the request body is over the limit of {limit_mb}", "send a smaller file, or split the request"
        )
        declared = _content_length(scope)
        if declared is not None and declared > route.max_bytes:
            raise too_big
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestError(400, "the client disconnected before the body was complete", "send it again")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > route.max_bytes:
                raise too_big
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _check_form(self, scope: Scope, body: bytes, route: Route) -> None:
        from starlette.exceptions import HTTPException
        from starlette.formparsers import MultiPartException
        from starlette.requests import Request

        request = Request(scope, _replay(body))
        try:
            form = await request.form(max_files=len(route.fields), max_fields=2 * len(route.fields))
        except (MultiPartException, HTTPException) as exc:
            detail = getattr(exc, "detail", None) or getattr(exc, "message", None) or str(exc)
            raise RequestError(400, f"malformed form data ({detail})", route.fix) from None
        try:
            names = list(form.keys())
            unknown = sorted(set(names) - set(route.fields))
            extra = f" (got unknown field(s) {', '.join(unknown)})" if unknown else ""
            for name in route.required:
                if name not in names:
                    raise RequestError(400, f"field '{name}' is missing{extra}", route.fix)
            if unknown:
                raise RequestError(
                    400, f"unknown field(s) {', '.join(unknown)}", f"fields are {', '.join(route.fields)}; {route.fix}"
                )
            for name, kind in route.fields.items():
                values = form.getlist(name)
                if len(values) > 1:
                    raise RequestError(400, f"field '{name}' is sent {len(values)} times", "send it once")
                if values and kind == "file" and isinstance(values[0], str):
                    raise RequestError(400, f"field '{name}' must be a file upload, not text", route.fix)
                if values and kind == "text" and not isinstance(values[0], str):
                    raise RequestError(400, f"field '{name}' must be text, not a file", route.fix)
        finally:
            await form.close()


async def _drain(scope: Scope, receive: Receive, limit: int) -> None:
    """Read and discard the rest of the request body, unless it is (or grows) over `limit` bytes: then the
    connection is closed after the refusal instead."""
    declared = _content_length(scope)
    if declared is not None and declared > limit:
        return
    size = 0
    while size <= limit:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return
        size += len(message.get("body", b""))


def _content_length(scope: Scope) -> int | None:
    declared = dict(scope.get("headers") or []).get(b"content-length")
    return int(declared) if declared is not None and declared.isdigit() else None


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _with_fix(send: Send, fix: str) -> Send:
    """Turn BentoML's 400 validation bodies {"error": "1 validation error for Input", "detail": [...]} into
    {"error": "<field>: <message>; ...", "fix": fix, "detail": [...]}. Other responses pass unchanged."""
    return _rewriting_json(send, 400, lambda raw: _add_fix(raw, fix))


def _rewriting_json(send: Send, status: int, rewrite: Callable[[bytes], bytes]) -> Send:
    """Hold a JSON response with `status` until its body is complete and send `rewrite(body)` instead (with its
    Content-Length). Other responses pass unchanged."""
    held: Message | None = None
    chunks: list[bytes] = []

    async def wrapped(message: Message) -> None:
        nonlocal held
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers") or [])
            if message["status"] == status and headers.get(b"content-type", b"").startswith(b"application/json"):
                held = message
                return
            await send(message)
            return
        if held is None or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        payload = rewrite(b"".join(chunks))
        headers = [(k, v) for k, v in held.get("headers") or [] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(payload)).encode()))
        await send({**held, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return wrapped


class JsonRewrite:
    """Rewrites the JSON that GET `path` answers with (status 200) through `rewrite`, for answers BentoML builds
    itself, such as the OpenAPI document at /docs.json. Other requests pass untouched."""

    def __init__(
        self, app: Callable[..., Awaitable[None]], path: str, rewrite: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> None:
        self.app, self.path, self.rewrite = app, path, rewrite

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "GET" or scope.get("path") != self.path:
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, _rewriting_json(send, 200, self._rewrite_bytes))

    def _rewrite_bytes(self, raw: bytes) -> bytes:
        try:
            document = json.loads(raw)
        except ValueError:
            return raw
        return json.dumps(self.rewrite(document)).encode() if isinstance(document, dict) else raw


def _add_fix(raw: bytes, fix: str) -> bytes:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(body, list) and len(body) == 1 and isinstance(body[0], dict):
        body = body[0]  # BentoML 1.4 wraps a BentoMLException's 4xx body in a one-element list
    if not isinstance(body, dict) or "fix" in body:
        return raw
    detail = body.get("detail")
    if isinstance(detail, list) and detail:
        body["error"] = "; ".join(_problem(item) for item in detail if isinstance(item, dict))
    body["fix"] = fix
    return json.dumps(body).encode()


def _problem(item: Mapping[str, Any]) -> str:
    where = ".".join(str(part) for part in item.get("loc", ()))
    message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
    if item.get("type") == "missing":
        message = "missing"
    return f"{where}: {message}" if where else message


def guard_routes(settings: ServeSettings) -> dict[str, Route]:
    """The service's API routes and what each takes."""
    return {
        "/enhance": Route(
            max_bytes=int(settings.max_upload_mb * 2**20),
            content_types=("multipart/form-data",),
            fix=f"send multipart/form-data with the image file in field 'image' ({SUPPORTED}); {CURL_HINT}",
            fields=ENHANCE_FIELDS,
            required=("image",),
        ),
        "/enhance_batch": Route(
            max_bytes=int(settings.max_batch_mb * 2**20),
            content_types=("application/json",),
            fix=BATCH_HINT,
        ),
        "/generate": Route(max_bytes=4096, content_types=("application/json",), fix=GENERATE_HINT),
    }
