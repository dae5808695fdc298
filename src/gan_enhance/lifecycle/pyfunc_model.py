"""The MLflow pyfunc model around the Enhancer, and the layout of a registered model version.

A version is logged as a "model from code" (model_code.py): MLflow runs that file when it loads the version,
and `load_context` rebuilds the generator from the `generator` artifact (generator.safetensors + card.json);
nothing is unpickled. `predict` takes a batch of equal-sized RGB images, N x H x W x 3 uint8, and returns
N x sH x sW x 3 uint8. Device and tiling come from the model config, which a consumer can override:
`mlflow.pyfunc.load_model(uri, model_config={"device": "cpu"})`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types.schema import Schema, TensorSpec

GENERATOR_ARTIFACT = "generator"  # artifacts/generator/ in the version: generator.safetensors + card.json
LINEAGE_ARTIFACT = "lineage"  # artifacts/lineage/: metrics.json, params.yaml, dvc.lock
DEFAULT_CONFIG: dict[str, Any] = {"device": "auto", "tile": 256, "tile_pad": 16}

_IMAGES = TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))
SIGNATURE = ModelSignature(inputs=Schema([_IMAGES]), outputs=Schema([_IMAGES]))


def input_example(side: int = 16) -> np.ndarray:
    """One small uint8 RGB image, as a batch of one."""
    ramp = np.linspace(0, 255, side * side * 3).reshape(1, side, side, 3)
    return ramp.astype(np.uint8)


class EnhancerModel(PythonModel):
    """pyfunc wrapper around the Enhancer (the project's one inference path)."""

    def load_context(self, context: PythonModelContext) -> None:
        from gan_enhance.inference import Enhancer

        config = {**DEFAULT_CONFIG, **(context.model_config or {})}
        self.enhancer = Enhancer.from_dir(
            context.artifacts[GENERATOR_ARTIFACT],
            device=str(config["device"]),
            tile=int(config["tile"]),
            tile_pad=int(config["tile_pad"]),
        )

    def predict(
        self, context: PythonModelContext, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        return np.stack([self.enhancer.enhance_array(np.ascontiguousarray(image)) for image in model_input])
