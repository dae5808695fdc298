"""params.yaml -> typed, validated parameters.

Every way of setting a parameter (params.yaml, `dvc exp run -S`, the CLI's `--set`) ends in
`load_params`, so a bad value fails the same way everywhere: before any work, with the key path,
the value given and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gan_enhance.errors import GanEnhanceError
from gan_enhance.kinds import KINDS, KindName
from gan_enhance.metric_facts import METRICS

DEFAULT_PARAMS_FILE = Path("params.yaml")


class ParamsError(GanEnhanceError, ValueError):
    """Parameters that cannot be used; the message names each bad key and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


class SplitParams(_Section):
    """Fractions of images that go to validation and test; the rest trains."""

    val: Fraction = 0.1
    test: Fraction = 0.2
    salt: str = Field("", description="Changes which images land in which split, keeping it stable.")

    @model_validator(mode="after")
    def _leave_some_for_training(self) -> SplitParams:
        if self.val + self.test >= 0.9:
            raise ValueError(
                f"val + test = {self.val + self.test:.2f} leaves almost nothing to train on; keep it < 0.9"
            )
        return self


class DataParams(_Section):
    source: str = Field("embedded", description="'embedded' or a folder of images (searched recursively).")
    prepared_dir: Path = Path("data/prepared")
    split: SplitParams = SplitParams()
    min_side: int = Field(64, ge=8, description="Images whose shorter side is smaller are rejected.")
    max_pixels: int = Field(50_000_000, ge=1, description="Images with more pixels are rejected (bombs).")

    @field_validator("source")
    def _source_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("source is empty; use 'embedded' or the path of a folder of images")
        return value


class SRParams(_Section):
    kind: ClassVar[KindName] = "paired"
    scale: Literal[2, 3, 4] = 4


class DenoiseParams(_Section):
    kind: ClassVar[KindName] = "paired"
    sigma: float | tuple[float, float] = Field(
        (5.0, 50.0),
        description="Gaussian noise std on the 0-255 scale, fixed or a [low, high] range for training.",
    )
    eval_sigma: float = Field(25.0, gt=0, le=100, description="Noise std used by evaluation.")
    noise: Literal["rgb", "gray", "mixed"] = Field(
        "rgb",
        description="rgb: independent noise in each channel; gray: one noise plane copied to the 3 channels (the "
        "published gray protocol: gray images, read as RGB with equal channels, and gray noise); mixed: training "
        "draws rgb or gray for each patch (one model for both protocols), evaluation uses rgb.",
    )

    @field_validator("sigma")
    def _sigma_range(cls, value: float | tuple[float, float]) -> float | tuple[float, float]:
        low, high = (value, value) if isinstance(value, int | float) else value
        if not 0 < low <= high <= 100:
            raise ValueError(
                f"sigma must lie in (0, 100] and a range must be [low, high] with low <= high; got {value}"
            )
        return value


def _check_range(value: tuple[float, float], low: float, high: float) -> tuple[float, float]:
    if not low <= value[0] <= value[1] <= high:
        raise ValueError(f"must be [min, max] with {low} <= min <= max <= {high}; got {list(value)}")
    return value


class InpaintParams(_Section):
    kind: ClassVar[KindName] = "masked"
    hole_ratio: tuple[float, float] = Field(
        (0.1, 0.4), description="Fraction of pixels masked (strokes and boxes), drawn per image from [min, max]."
    )
    hole_weight: float = Field(6.0, gt=0, description="Weight of the L1 loss inside holes (valid region: 1).")

    @field_validator("hole_ratio")
    def _ratio_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        return _check_range(value, 0.01, 0.8)


class TranslateParams(_Section):
    kind: ClassVar[KindName] = "unpaired"
    source_b: str = Field(
        "warm_film",
        description="Domain B: a folder of images, or 'warm_film': data.source's images, sorted by name, dealt "
        "alternately to A (unchanged) and B (a warm colour grade); a demonstration pair.",
    )
    direction: Literal["a2b", "b2a"] = Field("a2b", description="Which of the two generators is exported.")
    cycle_weight: float = Field(10.0, ge=0, description="Cycle-consistency L1 weight (lambda in CycleGAN).")
    identity_weight: float = Field(0.5, ge=0, description="Identity L1 weight, relative to cycle_weight.")
    pool_size: int = Field(50, ge=0, description="Image history buffer per discriminator; 0 turns it off.")

    @field_validator("source_b")
    def _source_b_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("source_b is empty; use 'warm_film' or the path of a folder of domain-B images")
        return value


class GenerateParams(_Section):
    kind: ClassVar[KindName] = "unconditional"
    image_size: Literal[32, 64] = Field(
        32, description="Side of the generated images; training images are centre-cropped and resized to it."
    )


TaskName = Literal["sr", "denoise", "inpaint", "translate", "generate"]
TaskOptions = SRParams | DenoiseParams | InpaintParams | TranslateParams | GenerateParams


class TaskParams(_Section):
    """The task and each task's own settings; switch with `-S task.name=denoise`."""

    name: TaskName = "sr"
    sr: SRParams = SRParams()
    denoise: DenoiseParams = DenoiseParams()
    inpaint: InpaintParams = InpaintParams()
    translate: TranslateParams = TranslateParams()
    generate: GenerateParams = GenerateParams()

    @property
    def options(self) -> TaskOptions:
        """The chosen task's own section (its `kind` says which trainer, evaluation and inference fit)."""
        return getattr(self, self.name)


class ArchParams(BaseModel):
    """A network by registry name plus its keyword arguments (checked against the network's signature)."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ModelParams(_Section):
    generator: ArchParams = ArchParams(name="srvgg", num_feat=48, num_conv=10)
    discriminator: ArchParams = ArchParams(name="patchgan", num_feat=32, num_layers=3)


class LossWeights(_Section):
    pixel: float = Field(1.0, ge=0)
    adversarial: float = Field(0.005, ge=0)
    feature_matching: float = Field(0.05, ge=0)
    artifact: float = Field(
        0.0, ge=0, description="LDL's artifact loss (Liang et al. 2022) in the adversarial phase; 0 turns it off."
    )


class RandomFeaturesParams(_Section):
    """A randomly weighted VGG19-layout feature network, drawn at start from `seed` (never stored or downloaded)."""

    width: float = Field(
        0.25, gt=0, le=2, description="Channel widths as a fraction of VGG19's (0.25: 16-32-64-128-128 channels)."
    )
    init: Literal["kaiming_normal", "kaiming_uniform", "orthogonal"] = "kaiming_normal"
    seed: int = Field(0, description="Seeds the feature network's weights (the run and the card record it).")


class PerceptualParams(_Section):
    """A perceptual loss on a frozen network's features (ESRGAN: VGG19 conv5_4 before its ReLU, L1, weight 1),
    and a texture loss on the Gram matrices of the same features (EnhanceNet)."""

    network: Literal["none", "random", "vgg19"] = Field(
        "none", description="none: off; random: VGG19's layout with seeded random weights; vgg19: ImageNet weights."
    )
    layers: dict[str, float] = Field(
        default_factory=lambda: {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0},
        description="Feature layer (conv<block>_<n>, before its ReLU) -> its weight; default: Real-ESRGAN's.",
    )
    weight: float = Field(1.0, ge=0, description="Weight of the feature distance in the generator's loss.")
    criterion: Literal["l1", "l2"] = "l1"
    texture_weight: float = Field(0.0, ge=0, description="Weight of the Gram-matrix (texture) distance; 0: off.")
    phase: Literal["all", "adversarial"] = Field(
        "all", description="all: from step 0 (the pixel phase too); adversarial: only after warmup_steps."
    )
    masked: bool = Field(False, description="Weight the feature distance by train.texture_mask as well.")
    vgg19_path: Path | None = Field(
        None, description="torchvision's vgg19-dcbb9e9d.pth; None: torch's hub cache ($TORCH_HOME/hub/checkpoints)."
    )
    random: RandomFeaturesParams = RandomFeaturesParams()

    @field_validator("layers")
    def _vgg19_layers(cls, value: dict[str, float]) -> dict[str, float]:
        from gan_enhance.models.features import layer_indices

        known = layer_indices()
        unknown = sorted(set(value) - set(known))
        if unknown or not value:
            raise ValueError(f"layers must name VGG19 layers ({', '.join(known)}); got {unknown or 'none'}")
        if any(weight < 0 for weight in value.values()):
            raise ValueError(f"layer weights must be >= 0; got {value}")
        return value

    @property
    def enabled(self) -> bool:
        return self.network != "none" and (self.weight > 0 or self.texture_weight > 0)


class TextureMaskParams(_Section):
    """Where the target has texture (Beby-GAN's region-aware mask): the local standard deviation of its luma over
    a window x window neighbourhood exceeds threshold (images in [0, 1]; Beby-GAN's code: 7 and 0.03)."""

    window: int = Field(7, ge=3, le=63, description="Odd side of the neighbourhood, in target pixels.")
    threshold: float = Field(0.03, ge=0, le=0.5)

    @field_validator("window")
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"window must be odd (it is centred on each pixel); got {value}")
        return value


class DistributedParams(_Section):
    """How many training processes, on how many nodes (PyTorch's elastic launcher, torchrun, starts them)."""

    nproc_per_node: int | Literal["auto"] = Field(
        1, description="Processes on each node; 'auto': one per visible GPU, else 1. Each takes batch_size / world."
    )
    nnodes: int = Field(1, ge=1, le=1024, description="Nodes; each runs the same `gan-enhance train`.")
    rdzv_endpoint: str = Field(
        "127.0.0.1:29400", description="host:port of the c10d rendezvous when nnodes > 1 (on one node: a free port)."
    )
    max_restarts: int = Field(0, ge=0, le=100, description="Times the launcher restarts the group after a failure.")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="'auto': nccl on CUDA, gloo on CPU.")

    @field_validator("nproc_per_node")
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"nproc_per_node must be >= 1 or 'auto'; got {value}")
        return value

    @field_validator("rdzv_endpoint")
    def _host_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"rdzv_endpoint must be host:port (e.g. 10.0.0.1:29400); got {value!r}")
        return value


class TrainParams(_Section):
    out_dir: Path = Path("models/generator")
    checkpoint_dir: Path = Path("models/checkpoints")
    report_dir: Path = Path("reports/train")
    steps: int = Field(3000, ge=1)
    warmup_steps: int = Field(
        2000, ge=0, description="Paired tasks: steps of pixel loss only before the adversarial phase (<= steps)."
    )
    batch_size: int = Field(16, ge=1, le=4096)
    patch_size: int = Field(96, ge=16, le=1024, description="Side of the target (high-resolution) patches.")
    lr_g: float = Field(5e-4, gt=0, le=1)
    lr_d: float = Field(1e-4, gt=0, le=1)
    betas: tuple[float, float] = (0.9, 0.99)
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    pixel_loss: Literal["l1", "charbonnier", "l2"] = "l1"
    gan_loss: Literal["vanilla", "lsgan", "hinge", "ragan"] = "ragan"
    pixel_lowpass: float = Field(
        0.0,
        ge=0,
        description="Paired tasks, adversarial phase: the pixel loss compares output and target blurred by a "
        "Gaussian of this sigma (target pixels), leaving finer detail to the discriminator; 0: the whole band.",
    )
    weights: LossWeights = LossWeights()
    init_from: str | None = Field(
        None,
        description="Paired tasks: start the generator from a model folder (trained, or made by `gan-enhance "
        "import`) or a registered version, models:/NAME@ALIAS or models:/NAME/VERSION (fine-tuning; with "
        "warmup_steps 0 it goes straight to the adversarial phase). model.generator must describe its network.",
    )
    init_discriminator: Path | None = Field(
        None, description="Paired tasks: start the discriminator from this state dict (.safetensors or .pth)."
    )
    perceptual: PerceptualParams = PerceptualParams()
    adversarial_mask: Literal["none", "texture"] = Field(
        "none",
        description="Paired tasks: texture weights the per-pixel adversarial loss by train.texture_mask (Beby-GAN): "
        "flat regions of the target get no adversarial push.",
    )
    texture_mask: TextureMaskParams = TextureMaskParams()
    r1_gamma: float = Field(0.0, ge=0, description="R1 penalty weight on real images; 0 turns it off.")
    instance_noise: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Paired tasks: std of Gaussian noise added to every image the discriminator sees, real and fake "
        "(instance noise, Sonderby et al. 2017): detail finer than that noise can no longer tell them apart.",
    )
    real_label: float = Field(
        1.0,
        gt=0.5,
        le=1,
        description="Generation: the target for real images in the discriminator's loss; below 1 is one-sided label "
        "smoothing (Salimans et al. 2016): the discriminator never becomes certain, so the generator keeps a gradient.",
    )
    conditional_discriminator: bool = Field(
        False,
        description="Paired tasks: the discriminator sees the input beside the image (upsampled to its size), as "
        "pix2pix's does: it judges whether the detail fits the input, not only whether it looks like some real patch.",
    )
    grad_clip: float = Field(1.0, ge=0, description="Max gradient norm; 0 turns clipping off.")
    ema_halflife_images: int = Field(5000, ge=1, description="EMA half-life counted in training images.")
    ema_rampup: float | None = Field(0.05, ge=0, description="Half-life <= images seen x rampup (short runs).")
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(50, ge=1)
    sample_every: int = Field(500, ge=1)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    amp: bool = Field(
        False, description="bfloat16 autocast on CUDA (ignored on CPU); pays only for large models and batches."
    )
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads per process; None: torch's default (cores / processes when several)."
    )
    prefetch: int | Literal["auto"] = Field(
        "auto",
        description="Batches made ahead of the training step by a background thread; 0: inline; 'auto': 2 on "
        "CUDA, 0 on the CPU (where torch's threads take every core, and one more thread slows the step).",
    )
    distributed: DistributedParams = DistributedParams()

    @field_validator("betas")
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in value):
            raise ValueError(f"betas must each lie in [0, 1); got {list(value)}")
        return value

    @field_validator("prefetch")
    def _prefetch_depth(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 0 <= value <= 64:
            raise ValueError(f"prefetch must be 0-64 batches or 'auto'; got {value}")
        return value


class EvaluateParams(_Section):
    out_dir: Path = Path("reports/eval")
    tile: int = Field(256, ge=0, description="Tile side for large inputs (input pixels); 0 disables tiling.")
    tile_overlap: int = Field(16, ge=0)
    fid_crops: int = Field(192, ge=2, description="Number of seeded crops used for FID/KID.")
    fid_crop_size: int = Field(96, ge=16, description="Side of those crops in target pixels.")
    seed: int = Field(1234, description="Seeds the crops, the evaluation noise and masks, and the bootstrap.")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Level of the reported intervals.")
    bootstrap: int = Field(1000, ge=100, description="Bootstrap resamples of the crops for FID/KID intervals.")
    grid_images: int = Field(4, ge=1, description="Test images shown in the comparison grid.")

    @model_validator(mode="after")
    def _tiles_fit(self) -> EvaluateParams:
        if self.tile and self.tile_overlap * 2 >= self.tile:
            raise ValueError(f"tile_overlap ({self.tile_overlap}) must be < tile / 2 ({self.tile})")
        return self


class TrackingParams(_Section):
    enabled: bool = True
    uri: str | None = Field(None, description="MLflow tracking URI; default: $MLFLOW_TRACKING_URI or ./mlflow.db.")
    experiment: str | None = Field(None, description="Default: gan-enhance-<task>.")


class RegistryParams(_Section):
    """Where `gan-enhance register` puts evaluated generators in the MLflow registry."""

    model_name: str | None = Field(None, description="Registered model; default gan-enhance-<task>[-x<scale>].")
    record: Path = Field(Path("reports/register/registration.json"), description="Which version holds the model.")

    @field_validator("model_name")
    def _name_fits_uris(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError(
                "model_name must be letters, digits, '.', '_' or '-' (it goes into models:/<name>@<alias> URIs); "
                "use null for the default name"
            )
        return value


class PromoteParams(_Section):
    """When `gan-enhance promote` lets the challenger replace the champion: a paired test on the same test images
    and crops (the evidence registered with each version), at `confidence`."""

    primary_metric: str = Field(
        "kid", description="The challenger must beat the champion on this metric, with significance."
    )
    guard_metric: str = Field("psnr", description="...while losing at most guard_tolerance on this one.")
    guard_tolerance: float = Field(0.1, ge=0, description="In the guard metric's units (PSNR: dB).")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Level of the paired tests' two-sided intervals.")
    require_baseline_win: bool = Field(
        True, description="Never make champion a version that does not beat its task's classical baseline."
    )

    @field_validator("primary_metric", "guard_metric")
    def _known_metric(cls, value: str, info: Any) -> str:
        role = info.field_name.removesuffix("_metric")
        candidates = [m.name for m in METRICS.values() if getattr(m, role)]
        if value not in candidates:
            raise ValueError(f"'{value}' cannot be the {role} metric; choose one of {', '.join(candidates)}")
        return value

    @model_validator(mode="after")
    def _two_metrics(self) -> PromoteParams:
        if self.primary_metric == self.guard_metric:
            raise ValueError(f"primary_metric and guard_metric are both '{self.primary_metric}'; pick two metrics")
        return self


class Params(_Section):
    seed: int = 0
    data: DataParams = DataParams()
    task: TaskParams = TaskParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    tracking: TrackingParams = TrackingParams()
    registry: RegistryParams = RegistryParams()
    promote: PromoteParams = PromoteParams()

    @model_validator(mode="after")
    def _networks_exist_and_fit(self) -> Params:
        from gan_enhance.models.registry import check_arch

        try:
            check_arch("generator", self.model.generator.name, self.model.generator.kwargs, task=self.task.name)
        except ValueError as exc:
            raise ValueError(f"model.generator: {exc}") from None
        try:
            check_arch("discriminator", self.model.discriminator.name, self.model.discriminator.kwargs)
        except ValueError as exc:
            raise ValueError(f"model.discriminator: {exc}") from None
        kind = KINDS[self.task.options.kind]
        if "warmup_steps" not in kind.unread_train_keys and self.train.warmup_steps > self.train.steps:
            raise ValueError(f"train.warmup_steps ({self.train.warmup_steps}) exceeds steps ({self.train.steps})")
        scale = self.task.sr.scale if self.task.name == "sr" else 1
        if self.train.patch_size % scale:
            raise ValueError(f"train.patch_size ({self.train.patch_size}) must be a multiple of the scale ({scale})")
        if self.evaluate.fid_crop_size % scale:
            raise ValueError(
                f"evaluate.fid_crop_size ({self.evaluate.fid_crop_size}) must be a multiple of the scale ({scale})"
            )
        return self

    def unread_train_settings(self) -> dict[str, Any]:
        """train.* keys set away from their defaults that the task's trainer does not read, with their values."""
        defaults = TrainParams()
        return {
            key: getattr(self.train, key)
            for key in KINDS[self.task.options.kind].unread_train_keys
            if getattr(self.train, key) != getattr(defaults, key)
        }

    def fingerprint(self, *sections: str) -> str:
        """Stable hash of the named sections (all when none are named)."""
        dumped = self.model_dump(mode="json")
        chosen = {key: dumped[key] for key in (sections or dumped.keys())}
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ParamsError(f"cannot set '{dotted}': '{key}' holds a value, not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn `["train.steps=10", "task.name=denoise"]` into a dotted-key dict with YAML-typed values."""
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ParamsError(f"override '{item}' is not KEY=VALUE (example: train.steps=100)")
        parsed[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    return parsed


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid parameters in {source}:"]
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"] if not str(p).startswith("function-"))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; `gan-enhance params` lists every key and default)"
        given = item.get("input")
        shown = "" if item["type"] in ("extra_forbidden", "missing") or isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"  {path}: {message}{shown}" if path else f"  {message}")
    return "\n".join(lines)


def load_params(path: Path | str | None = DEFAULT_PARAMS_FILE, overrides: dict[str, Any] | None = None) -> Params:
    """Read params (a YAML file, missing file = all defaults only when path is None) and validate them."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ParamsError(f"params file '{path}' not found; run from the project root or pass --params PATH")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ParamsError(f"params file '{path}' is not valid YAML: {exc}") from exc
        if not isinstance(tree, dict):
            raise ParamsError(f"params file '{path}' must hold a mapping of sections, not {type(tree).__name__}")
        source = str(path)
    for dotted, value in (overrides or {}).items():
        _set_dotted(tree, dotted, value)
    if overrides:
        source += " with overrides " + ", ".join(f"{k}={v}" for k, v in overrides.items())
    try:
        return Params.model_validate(tree)
    except ValidationError as exc:
        raise ParamsError(_format_validation_error(exc, source)) from None
