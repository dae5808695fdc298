"""Device choice and process-wide settings the project applies wherever it starts work."""

from __future__ import annotations

import os

import torch

TELEMETRY_OFF = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "BENTOML_DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
}


def disable_telemetry() -> None:
    """Turn off every tool's telemetry for this process and the processes it starts."""
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)


def pick_device(preference: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit choice that is absent fails with the fix."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available(),
        "cpu": True,
    }
    if preference == "auto":
        return torch.device(next(name for name in ("cuda", "mps", "cpu") if available[name]))
    if preference not in available:
        raise ValueError(f"unknown device '{preference}'; use auto, cpu, cuda or mps")
    if not available[preference]:
        raise RuntimeError(f"device '{preference}' is not available on this machine; use train.device=auto or cpu")
    return torch.device(preference)
