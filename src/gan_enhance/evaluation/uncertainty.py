"""Every number with its uncertainty, and differences between two methods with theirs.

- Image metrics (PSNR, SSIM, inside the holes too) are means over test images: a Student-t interval of the mean,
  and for a difference the paired t interval of the per-image differences. With the few test images an evaluation
  has (the default split: 4), the percentile bootstrap over images is far too narrow (at n = 4 it has 4^4 = 256
  distinct resamples and covers 80 % where it claims 95 %, simulated with normal values); the t interval is exact
  for normal per-image values.
- Crop metrics (FID, KID) are statistics of the whole crop set: a bootstrap over crops (`resamples` draws of the
  crop indices), the same draw for the reference crops and every method's crops, so a difference between two
  methods on the same crops is paired crop by crop. Resampling with replacement repeats crops, which biases FID
  and KID upwards by O(1/n); the intervals are therefore the bootstrap deviations around the full-sample value
  (point + quantiles of replicate - mean of replicates). FID and KID are computed for all draws from Gram matrices
  of the features (computed once), so a thousand resamples cost seconds.
- KID is the unbiased MMD^2 with torchmetrics' cubic polynomial kernel over all crops, with the cross term taken
  over distinct pairs (i != j). torchmetrics' KernelInceptionDistance averages the cross term over all pairs, which
  is unbiased for independent sets but not for paired ones: here reference crop i and output crop i are the same
  place of the same image, so the n matching pairs are far more alike than the rest and pull KID down by O(1/n)
  (measured on the default run: 0.0252 at 64 crops vs 0.0305 at 256). Over distinct pairs it is unbiased either
  way; tests/test_metrics.py checks it against torchmetrics' terms.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats

from gan_enhance.evaluation.evidence import Evidence
from gan_enhance.metric_facts import METRICS, metric

CHUNK = 64  # bootstrap draws per batched computation (R x n x n tensors)


@dataclass(frozen=True)
class Interval:
    """A value with its two-sided interval at `confidence` and the number of samples behind it."""

    value: float
    low: float
    high: float
    n: int
    confidence: float


@dataclass(frozen=True)
class Difference:
    """a - b of one metric, with its interval; paired when both were measured on the same samples."""

    metric: str
    a: float
    b: float
    interval: Interval
    paired: bool

    @property
    def significantly_better(self) -> bool:
        """a is better than b: the whole interval lies on the metric's better side of zero."""
        lower = METRICS[self.metric].direction == "lower"
        return self.interval.high < 0 if lower else self.interval.low > 0

    def text(self) -> str:
        m = METRICS[self.metric]
        fmt = m.fmt
        i = self.interval
        return (
            f"{m.label} {self.a:{fmt}} vs {self.b:{fmt}}, difference {i.value:+{fmt}} ({i.confidence:.0%} interval "
            f"{i.low:+{fmt}}..{i.high:+{fmt}}, {i.n} {'paired ' if self.paired else ''}{m.per}s)"
        )


def mean_interval(values: np.ndarray, confidence: float) -> Interval:
    """Student-t interval of the mean of `values` (infinite with a single value)."""
    values = np.asarray(values, dtype=np.float64)
    n, mean = len(values), float(np.mean(values))
    if n < 2:
        return Interval(mean, -np.inf, np.inf, n, confidence)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * np.std(values, ddof=1) / np.sqrt(n))
    return Interval(mean, mean - half, mean + half, n, confidence)


class CropStatistics:
    """FID and KID of each method's crop features against the reference features, for the full crop set or any
    resample of it; Gram matrices are computed once."""

    def __init__(self, reference: np.ndarray, features: dict[str, np.ndarray]) -> None:
        ref = torch.from_numpy(np.asarray(reference, dtype=np.float64))
        self.dim = ref.shape[1]
        self.n_reference = len(ref)
        self.rr = ref @ ref.T
        self.ff, self.rf, self.n = {}, {}, {}
        for method, array in features.items():
            fake = torch.from_numpy(np.asarray(array, dtype=np.float64))
            self.ff[method], self.rf[method], self.n[method] = fake @ fake.T, ref @ fake.T, len(fake)

    def point(self, method: str, name: str) -> float:
        return float(
            self.draws(method, name, torch.arange(self.n_reference)[None], torch.arange(self.n[method])[None])[0]
        )

    def draws(self, method: str, name: str, ref_idx: torch.Tensor, fake_idx: torch.Tensor) -> torch.Tensor:
        """The metric for each row of the index tensors (R x n_reference, R x n_fake)."""
        return torch.cat([self._chunk(method, name, r, f) for r, f in _chunks(ref_idx, fake_idx)])

    def _chunk(self, method: str, name: str, r: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        rr = self.rr[r[:, :, None], r[:, None, :]]
        ff = self.ff[method][f[:, :, None], f[:, None, :]]
        rf = self.rf[method][r[:, :, None], f[:, None, :]]
        if name == "fid":
            return _fid(rr, ff, rf)
        if name == "kid":
            return _kid(rr, ff, rf, self.dim)
        raise KeyError(f"'{name}' is not a crop metric")


def _chunks(a: torch.Tensor, b: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(a), CHUNK):
        yield a[start : start + CHUNK], b[start : start + CHUNK]


def _fid(rr: torch.Tensor, ff: torch.Tensor, rf: torch.Tensor) -> torch.Tensor:
    """FID from Gram matrices (R x n x n): ||mu_r - mu_f||^2 + Tr(S_r) + Tr(S_f) - 2 Tr(sqrt(S_r S_f)), where the
    last trace is the nuclear norm of the doubly centred cross Gram matrix over sqrt((n_r - 1)(n_f - 1))."""
    n_r, n_f = rr.shape[-1], ff.shape[-1]
    mean_term = rr.mean((1, 2)) + ff.mean((1, 2)) - 2 * rf.mean((1, 2))
    trace_r = (torch.diagonal(rr, dim1=1, dim2=2).sum(1) - rr.sum((1, 2)) / n_r) / (n_r - 1)
    trace_f = (torch.diagonal(ff, dim1=1, dim2=2).sum(1) - ff.sum((1, 2)) / n_f) / (n_f - 1)
    centred = rf - rf.mean(2, keepdim=True) - rf.mean(1, keepdim=True) + rf.mean((1, 2), keepdim=True)
    nuclear = torch.linalg.svdvals(centred).sum(1) / ((n_r - 1) * (n_f - 1)) ** 0.5
    return mean_term + trace_r + trace_f - 2 * nuclear


def _kid(rr: torch.Tensor, ff: torch.Tensor, rf: torch.Tensor, dim: int) -> torch.Tensor:
    """Unbiased MMD^2 with the kernel (x.y / dim + 1)^3; the cross term over distinct pairs where the two sets are
    crops of the same places (equal counts), over all pairs otherwise."""
    k_rr, k_ff, k_rf = ((g / dim + 1) ** 3 for g in (rr, ff, rf))
    m, n = k_rr.shape[-1], k_ff.shape[-1]
    within_r = (k_rr.sum((1, 2)) - torch.diagonal(k_rr, dim1=1, dim2=2).sum(1)) / (m * (m - 1))
    within_f = (k_ff.sum((1, 2)) - torch.diagonal(k_ff, dim1=1, dim2=2).sum(1)) / (n * (n - 1))
    if m != n:
        return within_r + within_f - 2 * k_rf.mean((1, 2))
    across = (k_rf.sum((1, 2)) - torch.diagonal(k_rf, dim1=1, dim2=2).sum(1)) / (n * (n - 1))
    return within_r + within_f - 2 * across


def _draws(n: int, resamples: int, rng: np.random.Generator) -> torch.Tensor:
    return torch.from_numpy(rng.integers(0, n, size=(resamples, n)))


def _centred(value: float, draws: np.ndarray, n: int, confidence: float) -> Interval:
    deviations = draws - draws.mean()
    low, high = np.quantile(deviations, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return Interval(value, value + float(low), value + float(high), n, confidence)


@dataclass
class Measured:
    """One evaluation's evidence with its crop statistics built once, and the bootstrap draws made so far (the
    draws of a seed are the same for every method, so a paired difference reuses each side's)."""

    evidence: Evidence
    crops: CropStatistics | None
    _draws: dict[tuple[str, str, int, int], torch.Tensor] = field(default_factory=dict)

    @classmethod
    def of(cls, evidence: Evidence) -> Measured:
        crops = CropStatistics(evidence.reference, evidence.features) if evidence.features else None
        return cls(evidence, crops)

    def bootstrap(self, method: str, name: str, resamples: int, seed: int) -> torch.Tensor:
        """The metric over `resamples` draws of the crops, seeded: the same indices for every method."""
        key = (method, name, resamples, seed)
        if key not in self._draws:
            crops = _crops_of(self)
            rng = np.random.default_rng(seed)
            ref_idx = _draws(crops.n_reference, resamples, rng)
            fake_idx = ref_idx if crops.n[method] == crops.n_reference else _draws(crops.n[method], resamples, rng)
            self._draws[key] = crops.draws(method, name, ref_idx, fake_idx)
        return self._draws[key]


def estimate(measured: Measured, method: str, name: str, confidence: float, resamples: int, seed: int) -> Interval:
    """`method`'s value of metric `name` with its interval."""
    ev = measured.evidence
    if metric(name).per == "image":
        return mean_interval(ev.per_image[method][name], confidence)
    crops = _crops_of(measured)
    draws = measured.bootstrap(method, name, resamples, seed).numpy()
    return _centred(crops.point(method, name), draws, crops.n[method], confidence)


def _crops_of(measured: Measured) -> CropStatistics:
    if measured.crops is None:
        raise ValueError("this evaluation measured no crop metrics (no Inception features in its evidence)")
    return measured.crops


def difference(
    a: Measured, method_a: str, b: Measured, method_b: str, name: str, confidence: float, resamples: int, seed: int
) -> Difference:
    """a's method_a minus b's method_b on metric `name`, with its interval: paired image by image (image metrics:
    the same test images) or crop by crop (crop metrics: the same crops of the same images, e.g. a model and its
    baseline in one evaluation, or two models evaluated with the same protocol and seed), else the two bootstraps
    drawn independently."""
    m = metric(name)
    ev_a, ev_b = a.evidence, b.evidence
    if m.per == "image":
        if not ev_a.same_images(ev_b):
            raise ValueError(f"{m.label} differences need the same test images in both evaluations")
        values_a, values_b = ev_a.per_image[method_a][name], ev_b.per_image[method_b][name]
        diff = mean_interval(np.asarray(values_a) - np.asarray(values_b), confidence)
        return Difference(name, float(np.mean(values_a)), float(np.mean(values_b)), diff, paired=True)
    crops_a, crops_b = _crops_of(a), _crops_of(b)
    paired = a is b or ev_a.same_crops(ev_b)
    # paired: both sides resampled with the same indices; else independently (another seed for b's draws)
    seed_b = seed if paired else seed + 1
    draws = (a.bootstrap(method_a, name, resamples, seed) - b.bootstrap(method_b, name, resamples, seed_b)).numpy()
    value_a, value_b = crops_a.point(method_a, name), crops_b.point(method_b, name)
    n = min(crops_a.n[method_a], crops_b.n[method_b])
    return Difference(name, value_a, value_b, _centred(value_a - value_b, draws, n, confidence), paired)


def summarize(
    evidence: Evidence, confidence: float, resamples: int, seed: int
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """metrics.json's numbers: per method each metric with <metric>_low/_high/_n, and per baseline the model's
    gain on each metric (positive = better) with its paired interval (gain.<metric>_vs_<baseline>[_low/_high])."""
    measured = Measured.of(evidence)
    summary: dict[str, dict[str, float]] = {}
    for method in evidence.methods:
        summary[method] = {}
        for name in evidence.metrics(method):
            summary[method].update(_flat(name, estimate(measured, method, name, confidence, resamples, seed)))
    model, *baselines = evidence.methods
    gains: dict[str, float] = {}
    for baseline in baselines:
        for name in evidence.metrics(model):
            if name not in evidence.metrics(baseline):
                continue
            diff = difference(measured, model, measured, baseline, name, confidence, resamples, seed).interval
            sign = 1 if METRICS[name].direction == "higher" else -1
            low, high = sorted((sign * diff.low, sign * diff.high))
            gains.update(_flat(f"{name}_vs_{baseline}", Interval(sign * diff.value, low, high, diff.n, confidence)))
    return summary, gains


def _flat(name: str, interval: Interval) -> dict[str, float]:
    return {name: interval.value, f"{name}_low": interval.low, f"{name}_high": interval.high, f"{name}_n": interval.n}
