"""The BentoML service: the generator that held the registry alias `champion` when the bento was built.

`make bento` imports that version from the MLflow registry into the BentoML model store as `gan-enhance-champion`
(labels: registered model, version, alias) and builds the bento around this file. Every forward pass goes through
the project's Enhancer (overlapping tiles, alpha kept, 16-bit grayscale kept). Request checks, decoding and encoding
live in the gan_enhance.serving package; this file only wires them to HTTP.

    POST /enhance         multipart: image (file), mask (file; inpainting models), format (png|jpeg|webp; else
                          the Accept header's choice, else png), quality (1-100) -> the enhanced image, with a
                          Server-Timing header (validate, decode, enhance, encode)
    POST /enhance_batch   JSON {"images": [H x W x 3 uint8, ...]} -> {"images"-like list}, adaptive batching
    POST /generate        JSON {"n": 8, "seed": 0} -> n seeded samples (generation models)
    GET  /model           registered name, version, alias, task, scale, metrics, serving settings
    GET  /livez, /readyz  liveness; readiness (model loaded and warmed up)   GET /  Swagger UI
    GET  /docs.json       the OpenAPI document: a short description naming the served model, and only its APIs

Settings: GAN_ENHANCE_SERVE_* environment variables (gan_enhance.serving.settings.ServeSettings).
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Annotated, Any

import anyio
import bentoml
import numpy as np
import torch
from bentoml.validators import DType
from fastapi import FastAPI
from PIL import Image
from pydantic import AfterValidator, Field
from starlette.responses import JSONResponse, Response

from gan_enhance.device import disable_telemetry
from gan_enhance.inference import Enhancer
from gan_enhance.inference.accel import dtype_name
from gan_enhance.serving.codec import (
    OutputFormat,
    check_batch,
    check_upload,
    choose_format,
    decode_mask,
    encode_image,
    load_upload,
)
from gan_enhance.serving.errors import RequestError
from gan_enhance.serving.guard import JsonRewrite, RequestGuard, guard_routes
from gan_enhance.serving.model import (
    BENTO_MODEL,
    check_request_kind,
    describe_model,
    generator_dir,
    model_config,
    served_openapi,
)
from gan_enhance.serving.settings import ServeSettings
from gan_enhance.serving.timing import StageTimes

disable_telemetry()
SETTINGS = ServeSettings.from_env()
info_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)  # GET routes; BentoML's are POST only

Images = Annotated[
    list[np.ndarray],
    # checked per request, before adaptive batching joins requests: one bad request cannot fail the others
    AfterValidator(
        functools.partial(check_batch, max_images=SETTINGS.max_batch_images, max_pixels=SETTINGS.max_batch_pixels)
    ),
]


@bentoml.asgi_app(info_app, path="/")
@bentoml.service(
    name="gan_enhance",
    description="GAN image enhancement (super-resolution, denoising, inpainting, translation, generation) with the "
    "MLflow champion model.",
    traffic={"timeout": SETTINGS.timeout_s, "max_concurrency": SETTINGS.max_concurrency},
    workers=SETTINGS.workers,  # each loads its own model copy (2 cores: docs/benchmarks.md, Serving)
)
class EnhanceService:
    bento_model = bentoml.models.BentoModel(f"{BENTO_MODEL}:latest")

    def __init__(self) -> None:
        self.ready = False
        # forward passes at once, over both APIs (default 1: torch already uses every core, memory stays bounded);
        # decoding and encoding run outside it, so they overlap the next request's forward pass
        self.compute = threading.BoundedSemaphore(SETTINGS.threads)
        self.codec = anyio.CapacityLimiter(SETTINGS.max_concurrency)
        if SETTINGS.torch_threads:
            torch.set_num_threads(SETTINGS.torch_threads)
        path = Path(self.bento_model.path)
        registered = model_config(path)
        tile = SETTINGS.tile if SETTINGS.tile is not None else int(registered.get("tile", 256))
        tile_pad = SETTINGS.tile_pad if SETTINGS.tile_pad is not None else int(registered.get("tile_pad", 16))
        self.enhancer = Enhancer.from_dir(
            generator_dir(path),
            device=SETTINGS.device,
            tile=tile,
            tile_pad=tile_pad,
            precision=SETTINGS.precision,
            compile_net=SETTINGS.compile,
        )
        info = self.bento_model.info
        serving = {
            "device": str(self.enhancer.device),
            "tile": tile,
            "tile_pad": tile_pad,
            "precision": dtype_name(self.enhancer.dtype),
            "compile": self.enhancer.run.note,
            "max_pixels": SETTINGS.max_pixels,
            "max_upload_mb": SETTINGS.max_upload_mb,
            "batching": SETTINGS.batching,
            "threads": SETTINGS.threads,
            "workers": SETTINGS.workers,
            "png_compress_level": SETTINGS.png_compress_level,
            "webp_method": SETTINGS.webp_method,
            "torch_threads": torch.get_num_threads(),
            "timeout_s": SETTINGS.timeout_s,
        }
        self.description = describe_model(info.labels, info.metadata, self.enhancer.card, str(info.tag), serving)
        self.model_header = f"{self.description['registered_model']}/{self.description['version']}"
        self.enhancer.warm_up()  # before /readyz says yes
        self.ready = True

    def __is_ready__(self) -> bool:
        return self.ready

    @info_app.get("/model")
    def model(self) -> dict[str, Any]:
        """The served model: registered name, version, alias, task, scale, metrics, and serving settings."""
        return self.description

    @bentoml.api(route="/enhance")
    async def enhance(
        self,
        ctx: bentoml.Context,  # the request (its Accept header)
        image: Path,
        # not `Path | None`: BentoML 1.4 makes only plain Path fields accept uploads (the default stays None)
        mask: Path = None,  # type: ignore[assignment]  # noqa: RUF013
        format: OutputFormat | None = None,
        quality: Annotated[int, Field(ge=1, le=100)] = 95,
    ) -> Image.Image:
        """Enhance one image (PNG, JPEG, WebP, TIFF or BMP). Inpainting models also need `mask`, an image of the
        same size, white where to fill in. Returns `format` when given, else what the Accept header prefers among
        image/png, image/webp and image/jpeg, else PNG; alpha and 16-bit grayscale survive in PNG."""
        try:
            check_request_kind(self.enhancer.card, "/enhance", mask_sent=mask is not None)
            fmt = choose_format(format, ctx.request.headers.get("accept"))
            return await anyio.to_thread.run_sync(self._enhance_file, image, mask, fmt, quality, limiter=self.codec)
        except RequestError as exc:
            ctx.response.status_code = exc.status  # an API that takes ctx answers with ctx's status, not the response's
            return JSONResponse(exc.body(), status_code=exc.status)  # type: ignore[return-value]

    def _enhance_file(self, image: Path, mask: Path | None, fmt: str, quality: int) -> Response:
        times = StageTimes()
        data = image.read_bytes()
        with times.stage("validate"):
            check_upload(data, SETTINGS.max_pixels)
        with times.stage("decode"):
            picture = load_upload(data, SETTINGS.max_pixels)
            holes = None if mask is None else decode_mask(mask.read_bytes(), picture, SETTINGS.max_pixels)
        with self.compute, times.stage("enhance"):  # timed once it has the compute slot: no queueing inside
            result = self.enhancer.enhance_image(picture, mask=holes)
        with times.stage("encode"):
            encoded = encode_image(result, fmt, quality, SETTINGS.png_compress_level, SETTINGS.webp_method)
        headers = {"X-Model": self.model_header, "Vary": "Accept", "Server-Timing": times.header()}
        if encoded.notes:
            headers["X-Conversions"] = "; ".join(encoded.notes)
        return Response(encoded.data, media_type=encoded.media_type, headers=headers)

    @bentoml.api(route="/generate")
    def generate(
        self, n: Annotated[int, Field(ge=1, le=SETTINGS.max_samples)] = 8, seed: Annotated[int, Field(ge=0)] = 0
    ) -> list[Annotated[np.ndarray, DType("uint8")]]:
        """n samples (S x S x 3 uint8) from a generation model; sample i depends only on (seed, i)."""
        try:
            check_request_kind(self.enhancer.card, "/generate")
        except RequestError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)  # type: ignore[return-value]
        with self.compute:
            return list(self.enhancer.sample(n, seed=seed))

    @bentoml.api(
        route="/enhance_batch",
        batchable=SETTINGS.batching,
        max_batch_size=SETTINGS.max_batch_size,
        max_latency_ms=SETTINGS.latency_budget_ms,
    )
    def enhance_batch(self, images: Images) -> list[Annotated[np.ndarray, DType("uint8")]]:
        """Enhance uint8 RGB arrays (H x W x 3, sizes may differ). Concurrent requests are batched adaptively;
        images of the same size share forward passes."""
        try:
            check_request_kind(self.enhancer.card, "/enhance_batch")
        except RequestError as exc:
            raise bentoml.exceptions.InvalidArgument(f"{exc.problem}; {exc.fix}") from None
        with self.compute:
            return self.enhancer.enhance_batch(images)


API_ROUTES = tuple(method.route for method in EnhanceService.apis.values())


def openapi_for_the_served_model(spec: dict[str, Any]) -> dict[str, Any]:
    """BentoML's OpenAPI document as the served model shows it (BentoML cannot hide an API per instance, and it
    puts the bento's whole README in the description)."""
    service = bentoml.get_current_service()
    return served_openapi(spec, service.description, service.enhancer.apis, API_ROUTES)


EnhanceService.add_asgi_middleware(RequestGuard, routes=guard_routes(SETTINGS))
EnhanceService.add_asgi_middleware(JsonRewrite, path="/docs.json", rewrite=openapi_for_the_served_model)
