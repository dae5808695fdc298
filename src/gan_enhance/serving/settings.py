"""The service's settings, each from a GAN_ENHANCE_SERVE_* environment variable."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gan_enhance.errors import GanEnhanceError

ENV_PREFIX = "GAN_ENHANCE_SERVE_"


class SettingsError(GanEnhanceError, ValueError):
    """A GAN_ENHANCE_SERVE_* variable with a bad value; the message names it and the allowed values."""


class ServeSettings(BaseModel):
    """Service settings, each from $GAN_ENHANCE_SERVE_<NAME> (e.g. GAN_ENHANCE_SERVE_TILE=512)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    tile: int | None = Field(None, ge=0, description="tile side in input pixels; 0 = whole image; None = model's")
    tile_pad: int | None = Field(None, ge=0, description="context around each tile; None = the model's")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="compute dtype: auto = bf16 on a GPU that has it (else fp16), fp32 on the CPU"
    )
    compile: bool = Field(False, description="torch.compile the network (GPU; falls back to eager when it fails)")
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
    png_compress_level: int = Field(1, ge=0, le=9, description="zlib level for PNG output (0: none, 1: fast)")
    webp_method: int = Field(0, ge=0, le=6, description="libwebp effort for WebP output (0: fastest, 6: smallest)")
    workers: int = Field(1, gt=0, description="worker processes, each with its own copy of the model")
    threads: int = Field(1, gt=0, description="requests computed at once (each with its own activations)")
    torch_threads: int | None = Field(None, gt=0, description="torch intra-op threads; None = torch's choice")
    max_samples: int = Field(64, gt=0, description="most samples one /generate request may ask for")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServeSettings:
        """The settings from `environ` (default: os.environ); SettingsError for unknown names or bad values."""
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
        """The adaptive batcher's latency budget: max_latency_ms, or the request timeout."""
        return self.max_latency_ms or int(self.timeout_s * 1000)
