"""What the BentoML service (serving/service.py) needs around the Enhancer, kept free of BentoML so it can be
tested on its own: settings from the environment, request errors with a fix, upload decoding, output encoding,
batch validation, the model description for GET /model, and `RequestGuard`, the ASGI middleware that checks
every request's size, content type and form fields before BentoML parses it.

Every refused request gets a 4xx JSON body {"error": <what is wrong>, "fix": <what to do>}.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gan_enhance.data.image_io import ImageError, open_image, to_uint8
from gan_enhance.models.artifact import ModelCard

BENTO_MODEL = "gan-enhance-champion"  # the BentoML model store name the service loads (label: which registry version)
ENV_PREFIX = "GAN_ENHANCE_SERVE_"
INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP")
OUTPUT_FORMATS: dict[str, tuple[str, str]] = {
    "png": ("PNG", "image/png"),
    "jpeg": ("JPEG", "image/jpeg"),
    "jpg": ("JPEG", "image/jpeg"),
    "webp": ("WEBP", "image/webp"),
}
OutputFormat = Literal["png", "jpeg", "jpg", "webp"]
ENHANCE_FIELDS = {"image": "file", "mask": "file", "format": "text", "quality": "text"}
SUPPORTED = "PNG, JPEG, WebP, TIFF or BMP"
CURL_HINT = "e.g. curl -F image=@photo.png -F format=png http://127.0.0.1:3000/enhance -o out.png"
MASK_HINT = (
    "send field 'mask': an image of the same size, white (gray > 127) where to fill in; "
    "e.g. curl -F image=@photo.png -F mask=@holes.png http://127.0.0.1:3000/enhance -o filled.png"
)
GENERATE_HINT = 'send JSON {"n": 8, "seed": 0}: n samples (1 to the limit), the same seed gives the same samples'
BATCH_HINT = (
    'send JSON {"images": [image, ...]} where each image is an H x W x 3 nested list of integers 0-255 '
    "(uint8 RGB); see the schema at /docs.json"
)


class SettingsError(ValueError):
    """A GAN_ENHANCE_SERVE_* variable with a bad value; the message names it and the allowed values."""


class ServeSettings(BaseModel):
    """Service settings, each from $GAN_ENHANCE_SERVE_<NAME> (e.g. GAN_ENHANCE_SERVE_TILE=512)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    tile: int | None = Field(None, ge=0, description="tile side in input pixels; 0 = whole image; None = model's")
    tile_pad: int | None = Field(None, ge=0, description="context around each tile; None = the model's")
    max_upload_mb: float = Field(64.0, gt=0, description="largest /enhance request body")
    max_batch_mb: float = Field(16.0, gt=0, description="largest /enhance_batch request body (JSON)")
    max_pixels: int = Field(16_777_216, gt=0, description="largest input image, width x height")
    max_batch_images: int = Field(32, gt=0, description="most images in one /enhance_batch request")
    max_batch_pixels: int = Field(4_194_304, gt=0, description="most pixels in one /enhance_batch request")
    timeout_s: float = Field(300.0, gt=0, description="a request taking longer gets 504")
    max_concurrency: int = Field(32, gt=0, description="requests in flight beyond this get 429")
    batching: bool = Field(True, description="adaptive batching of /enhance_batch requests")
    max_batch_size: int = Field(16, gt=0, description="most images the batcher puts in one forward pass")
    max_latency_ms: int | None = Field(None, gt=0, description="batcher's latency budget; None = the timeout")
    png_compress_level: int = Field(1, ge=0, le=9, description="zlib level for PNG output (1: fast)")
    threads: int = Field(1, gt=0, description="requests computed at once (each with its own activations)")
    torch_threads: int | None = Field(None, gt=0, description="torch intra-op threads; None = torch's choice")
    max_samples: int = Field(64, gt=0, description="most samples one /generate request may ask for")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServeSettings:
        env = os.environ if environ is None else environ
        names = {ENV_PREFIX + name.upper(): name for name in cls.model_fields}
        unknown = sorted(key for key in env if key.startswith(ENV_PREFIX) and key not in names)
        if unknown:
            raise SettingsError(f"unknown setting {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        values = {name: env[key] for key, name in names.items() if key in env and env[key] != ""}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = [
                f"{ENV_PREFIX}{'.'.join(map(str, e['loc'])).upper()}={values.get(str(e['loc'][0]), '')!r}: {e['msg']}"
                for e in exc.errors()
            ]
            raise SettingsError("; ".join(problems)) from None

    @property
    def latency_budget_ms(self) -> int:
        return self.max_latency_ms or int(self.timeout_s * 1000)


class RequestError(Exception):
    """A request the service refuses: HTTP status, what is wrong, and what to do instead."""

    def __init__(self, status: int, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.status, self.problem, self.fix = status, problem, fix

    def body(self) -> dict[str, Any]:
        return {"error": self.problem, "fix": self.fix}


# --- uploads -------------------------------------------------------------------------------------------------------


def decode_upload(data: bytes, max_pixels: int, field_name: str = "image") -> Image.Image:
    """Uploaded bytes -> a fully loaded PIL image, or RequestError: 400 empty/truncated, 413 too many pixels,
    415 not an image or a format the service does not take."""
    if not data:
        raise RequestError(
            400, f"the file in field '{field_name}' is empty (0 bytes)", f"send the image file; {CURL_HINT}"
        )
    too_many = f"downscale the image, or raise the server's limit ({ENV_PREFIX}MAX_PIXELS, now {max_pixels:,} pixels)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:  # reads the header only
                fmt, (width, height) = probe.format, probe.size
    except Image.DecompressionBombError:
        raise RequestError(413, f"the image in '{field_name}' has far more pixels than the limit", too_many) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise RequestError(
            415, f"the file in '{field_name}' is not an image in a supported format", f"send a {SUPPORTED} image"
        ) from None
    if fmt not in INPUT_FORMATS:
        raise RequestError(415, f"image format {fmt} is not supported", f"convert it to {SUPPORTED}")
    if width * height > max_pixels:
        raise RequestError(
            413,
            f"the image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}",
            too_many,
        )
    try:
        return open_image(data, max_pixels)
    except ImageError as exc:  # header fine, pixel data not: truncated or corrupt
        raise RequestError(
            400, str(exc).replace("upload: ", f"'{field_name}': ", 1), "upload the complete file, or re-export it"
        ) from None


# --- outputs -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedImage:
    data: bytes
    media_type: str
    notes: tuple[str, ...] = ()  # conversions the format forced (alpha flattened, 16 bits reduced to 8)


def encode_image(image: Image.Image, fmt: str, quality: int = 95, png_compress_level: int = 1) -> EncodedImage:
    """PNG keeps everything (alpha, 16-bit grayscale); JPEG has no alpha (flattened onto white) and neither JPEG nor
    WebP has 16 bits (reduced to 8)."""
    pil_format, media_type = OUTPUT_FORMATS[fmt]
    notes: list[str] = []
    buffer = io.BytesIO()
    if pil_format == "PNG":
        image.save(buffer, "PNG", compress_level=png_compress_level)
        return EncodedImage(buffer.getvalue(), media_type)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = Image.fromarray(to_uint8(np.asarray(image).astype(np.uint16)), "L").convert("RGB")
        notes.append("16-bit reduced to 8-bit")
    if pil_format == "JPEG" and image.mode in ("RGBA", "LA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        image = background
        notes.append("alpha flattened onto white")
    image.save(buffer, pil_format, quality=quality)
    return EncodedImage(buffer.getvalue(), media_type, tuple(notes))


# --- batches -------------------------------------------------------------------------------------------------------


def check_batch(images: list[np.ndarray], max_images: int, max_pixels: int) -> list[np.ndarray]:
    """A request's images -> uint8 H x W x 3 arrays; ValueError naming the first bad image (pydantic passes it on)."""
    if not images:
        raise ValueError("no images; send at least one")
    if len(images) > max_images:
        raise ValueError(f"{len(images)} images is over the limit of {max_images} per request; split the request")
    checked, total = [], 0
    for i, image in enumerate(images):
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
            raise ValueError(f"image {i} has shape {array.shape}; each image must be H x W x 3 (RGB)")
        if array.dtype.kind not in "ui":
            raise ValueError(f"image {i} holds {array.dtype} values; send integers 0-255 (uint8 RGB)")
        if array.dtype != np.uint8 and (array.min() < 0 or array.max() > 255):
            raise ValueError(f"image {i} has values {array.min()}..{array.max()}; uint8 images hold 0-255")
        total += array.shape[0] * array.shape[1]
        if total > max_pixels:
            raise ValueError(f"the images add up to more than {max_pixels:,} pixels; send fewer or smaller images")
        checked.append(np.ascontiguousarray(array, dtype=np.uint8))
    return checked


def enhance_uint8_batch(enhancer: Any, images: list[np.ndarray]) -> list[np.ndarray]:
    """Enhance uint8 H x W x 3 images; images of the same size share forward passes, in input order.

    The uint8 <-> [0, 1] conversion is Enhancer.enhance_array's, so each output equals
    `enhancer.enhance_array(image)` up to the batched convolution's rounding."""
    out: list[np.ndarray | None] = [None] * len(images)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(image.shape, []).append(i)
    for indices in groups.values():
        if len(indices) == 1:
            out[indices[0]] = enhancer.enhance_array(images[indices[0]])
            continue
        stacked = torch.from_numpy(np.stack([images[i] for i in indices]).astype(np.float32) / 255.0)
        result = enhancer.enhance_tensor(stacked.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
        result = np.clip(np.round(result * 255.0), 0, 255).astype(np.uint8)
        for j, i in enumerate(indices):
            out[i] = result[j]
    return [o for o in out if o is not None]


# --- the model -----------------------------------------------------------------------------------------------------


def generator_dir(model_path: Path) -> Path:
    """The generator folder (generator.safetensors + card.json) inside an imported BentoML mlflow model."""
    folder = Path(model_path) / "mlflow_model" / "artifacts" / "generator"
    if not (folder / "card.json").is_file():
        raise FileNotFoundError(
            f"no generator/card.json in the BentoML model at {model_path}; re-import the champion (`make bento`)"
        )
    return folder


def model_config(model_path: Path) -> dict[str, Any]:
    """The pyfunc model config (device, tile, tile_pad) the version was registered with; {} when absent."""
    import yaml

    mlmodel = Path(model_path) / "mlflow_model" / "MLmodel"
    if not mlmodel.is_file():
        return {}
    flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {})
    return dict(flavors.get("python_function", {}).get("config") or {})


def check_request_kind(card: ModelCard, api: str, mask_sent: bool = False) -> None:
    """RequestError (400) when `api` does not fit the served model: /enhance and /enhance_batch take images
    (inpainting models: /enhance with a mask), /generate is for models that make images from noise."""
    if card.inputs == "latent" and api != "/generate":
        raise RequestError(
            400, f"the served '{card.task}' model makes images from noise; it enhances no uploads", GENERATE_HINT
        )
    if card.inputs != "latent" and api == "/generate":
        raise RequestError(
            400, f"the served '{card.task}' model enhances images; it does not sample", f"POST /enhance; {CURL_HINT}"
        )
    if card.inputs == "image+mask" and api == "/enhance" and not mask_sent:
        raise RequestError(400, "field 'mask' is missing: the served inpainting model fills in a mask", MASK_HINT)
    if card.inputs == "image+mask" and api == "/enhance_batch":
        raise RequestError(400, "the served inpainting model needs a mask per image", f"POST /enhance; {MASK_HINT}")
    if card.inputs != "image+mask" and mask_sent:
        raise RequestError(400, f"the served '{card.task}' model takes no mask", f"leave out field 'mask'; {CURL_HINT}")


def decode_mask(data: bytes, image: Image.Image, max_pixels: int) -> Image.Image:
    """An uploaded mask (white = fill in) -> a loaded image of the image's size, or RequestError naming the problem."""
    mask = decode_upload(data, max_pixels, field_name="mask")
    if mask.size != image.size:
        (mw, mh), (iw, ih) = mask.size, image.size
        raise RequestError(400, f"the mask is {mw}x{mh} but the image is {iw}x{ih}", MASK_HINT)
    return mask


def describe_model(
    labels: Mapping[str, str], metadata: Mapping[str, Any], card: ModelCard, bento_tag: str, serving: Mapping[str, Any]
) -> dict[str, Any]:
    """The body of GET /model: which registry version this is, what it does, how well, and how it is served."""
    return {
        "registered_model": labels.get("registered_model"),
        "version": labels.get("registered_version"),
        "alias": labels.get("alias"),
        "task": card.task,
        "scale": card.scale,
        "arch": card.arch,
        "metrics": dict(metadata.get("metrics") or {}),
        "run_id": metadata.get("run_id"),
        "tracking_uri": metadata.get("tracking_uri"),
        "imported_at": metadata.get("imported_at"),
        "bento_model": bento_tag,
        "serving": dict(serving),
    }


# --- the request guard (ASGI middleware) ---------------------------------------------------------------------------

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
        try:
            body = await self._read_checked(scope, receive, route)
            if route.fields:
                await self._check_form(scope, body, route)
        except RequestError as exc:
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
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > route.max_bytes:
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
    held: Message | None = None
    chunks: list[bytes] = []

    async def wrapped(message: Message) -> None:
        nonlocal held
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers") or [])
            if message["status"] == 400 and headers.get(b"content-type", b"").startswith(b"application/json"):
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
        payload = _add_fix(b"".join(chunks), fix)
        headers = [(k, v) for k, v in held.get("headers") or [] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(payload)).encode()))
        await send({**held, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return wrapped


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
