"""The evidence of an evaluation: what a paired test between two models (or a model and its baseline) needs.

Per method: the per-image values of each image metric (in test-image order) and the Inception features of its
evaluation crops; once: the features of the reference crops, the crop positions and the test images' hashes.
evidence.npz is written beside metrics.json and registered with the model, so that promotion can test a challenger
against the champion (and its baseline) on the same images and crops without the models or the data: the features
are 2048 float32 per crop, a few MB per version, and recomputing them would need both models and the test split at
promotion time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gan_enhance.metric_facts import CROP_METRICS

EVIDENCE_FILE = "evidence.npz"
_PER_IMAGE, _FEATURES = "per_image", "features"


@dataclass
class Evidence:
    images: list[str]  # sha256 of each test image, the order of the per-image values
    per_image: dict[str, dict[str, np.ndarray]]  # method -> image metric -> value per image
    reference: np.ndarray  # N x D float32 Inception features of the reference (real) crops
    features: dict[str, np.ndarray]  # method -> N x D float32 features of its crops
    positions: np.ndarray  # N x 3 int (image index, top, left) of the crops (N x 0 when not crops of the images)
    methods: list[str] = field(default_factory=list)  # evaluation order: the model first, then the baselines

    def __post_init__(self) -> None:
        if not self.methods:
            self.methods = list(dict.fromkeys([*self.per_image, *self.features]))

    def metrics(self, method: str) -> list[str]:
        """The metrics this evidence can compute for `method`."""
        crop = list(CROP_METRICS) if method in self.features else []
        return [*self.per_image.get(method, {}), *crop]

    def same_images(self, other: Evidence) -> bool:
        return self.images == other.images

    def same_crops(self, other: Evidence) -> bool:
        """Whether both evaluations took their crops at the same places of the same images (so crop-level
        statistics pair crop by crop)."""
        return (
            self.same_images(other)
            and self.positions.shape == other.positions.shape
            and bool(np.array_equal(self.positions, other.positions))
            and self.reference.shape == other.reference.shape
            and bool(np.array_equal(self.reference, other.reference))
        )

    def save(self, path: Path) -> None:
        arrays: dict[str, np.ndarray] = {
            "images": np.array(self.images, dtype=str),
            "methods": np.array(self.methods, dtype=str),
            "reference": self.reference.astype(np.float32),
            "positions": self.positions.astype(np.int64),
        }
        for method, values in self.per_image.items():
            for name, array in values.items():
                arrays[f"{_PER_IMAGE}/{method}/{name}"] = np.asarray(array, dtype=np.float64)
        for method, array in self.features.items():
            arrays[f"{_FEATURES}/{method}"] = array.astype(np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            np.savez_compressed(handle, **arrays)

    @classmethod
    def load(cls, path: Path) -> Evidence:
        with np.load(path, allow_pickle=False) as data:
            per_image: dict[str, dict[str, np.ndarray]] = {}
            features: dict[str, np.ndarray] = {}
            for key in data.files:
                kind, _, rest = key.partition("/")
                if kind == _PER_IMAGE:
                    method, _, name = rest.partition("/")
                    per_image.setdefault(method, {})[name] = data[key]
                elif kind == _FEATURES:
                    features[rest] = data[key]
            return cls(
                images=[str(s) for s in data["images"]],
                per_image=per_image,
                reference=data["reference"],
                features=features,
                positions=data["positions"],
                methods=[str(s) for s in data["methods"]],
            )
