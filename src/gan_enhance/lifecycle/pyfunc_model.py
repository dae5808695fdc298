"""The MLflow pyfunc model around the Enhancer, and the layout of a registered model version.

A version is logged as a "model from code" (model_code.py): MLflow runs that file when it loads the version,
and `load_context` rebuilds the generator from the `generator` artifact (generator.safetensors + card.json);
nothing is unpickled. `predict` takes what the generator takes, as the signature says:
- image models: a batch of equal-sized RGB images, N x H x W x 3 uint8 -> N x sH x sW x 3 uint8;
- inpainting (image+mask): N x H x W x 4 uint8, RGB plus the hole mask (nonzero = fill in) -> N x H x W x 3 uint8;
- generation (latent): N int64 seeds -> N x S x S x 3 uint8, sample i drawn from seed i (`Enhancer.sample`).
Device and tiling come from the model config, which a consumer can override:
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


def _inference_class(inputs: str) -> Any:
    from gan_enhance.kinds import inference_ref, load

    return load(inference_ref(inputs))


def signature(inputs: str) -> ModelSignature:
    """The signature of a version whose generator takes `inputs` (a model card's `inputs`): the batch its
    inference class declares in, uint8 images out."""
    dtype, shape = _inference_class(inputs).batch
    return ModelSignature(
        inputs=Schema([TensorSpec(dtype, shape)]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
    )


def input_example(inputs: str = "image") -> np.ndarray:
    """A batch of one: a small uint8 image (with a square hole in the mask channel for inpainting), or a seed."""
    return _inference_class(inputs).input_example()


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
        return self.enhancer.predict_batch(model_input)
