"""Intervals and paired differences (evaluation/uncertainty.py) and the evidence file they are computed from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from gan_enhance.evaluation.evidence import Evidence
from gan_enhance.evaluation.uncertainty import Measured, difference, estimate, mean_interval, summarize
from gan_enhance.metric_facts import METRICS

from .evidence_support import synthetic_evidence

pytestmark = pytest.mark.numeric  # also run on a second CPU code path (make test-cpu-path)


def test_mean_interval_is_students_t_and_infinite_for_one_value():
    values = np.array([30.1, 31.4, 29.8, 30.9])
    interval = mean_interval(values, 0.95)
    half = stats.t.ppf(0.975, 3) * values.std(ddof=1) / 2
    assert interval.value == pytest.approx(values.mean())
    assert (interval.low, interval.high) == pytest.approx((values.mean() - half, values.mean() + half))
    assert interval.n == 4
    single = mean_interval(np.array([30.0]), 0.95)
    assert single.value == 30.0 and single.low == -np.inf and single.high == np.inf


def test_image_metric_differences_pair_image_by_image():
    better = Measured.of(synthetic_evidence(noise=0.5, psnr=30.5))
    worse = Measured.of(synthetic_evidence(noise=0.5, psnr=30.0))
    diff = difference(better, "model", worse, "model", "psnr", 0.95, 100, 0)
    # the same spread on every image: the per-image differences are all 0.5, so the interval has no width
    assert diff.paired and diff.interval.value == pytest.approx(0.5)
    assert diff.interval.low == pytest.approx(0.5) and diff.interval.high == pytest.approx(0.5)
    assert diff.significantly_better
    assert "PSNR 30.50 vs 30.00, difference +0.50" in diff.text() and "3 paired images" in diff.text()


def test_crop_metric_intervals_contain_the_value_and_shrink_with_more_crops():
    small = Measured.of(synthetic_evidence(noise=0.5, psnr=30.0, crops=48))
    large = Measured.of(synthetic_evidence(noise=0.5, psnr=30.0, crops=192))
    for name in ("fid", "kid"):
        narrow, wide = (estimate(m, "model", name, 0.95, 300, 0) for m in (large, small))
        assert wide.low < wide.value < wide.high and narrow.low < narrow.value < narrow.high
        assert narrow.high - narrow.low < wide.high - wide.low
        assert (narrow.n, wide.n) == (192, 48)


def test_a_difference_on_the_same_crops_is_paired_and_narrower_than_unpaired():
    # two models whose errors share their crop-to-crop pattern (the same seed, 0.5 vs 0.6 of it): measured on the
    # same crops that pattern cancels in the difference; on other crops it does not
    ours = Measured.of(synthetic_evidence(noise=0.5, psnr=30.0, seed=1))
    theirs = Measured.of(synthetic_evidence(noise=0.6, psnr=30.0, seed=1))
    elsewhere = Measured.of(synthetic_evidence(noise=0.6, psnr=30.0, seed=1, crop_seed=1))
    for name in ("kid", "fid"):
        paired = difference(ours, "model", theirs, "model", name, 0.95, 300, 0)
        unpaired = difference(ours, "model", elsewhere, "model", name, 0.95, 300, 0)
        assert paired.paired and not unpaired.paired
        width = paired.interval.high - paired.interval.low
        assert width < 0.5 * (unpaired.interval.high - unpaired.interval.low), name
        assert paired.significantly_better and "64 paired crops" in paired.text()


def test_summarize_gives_every_metric_its_interval_and_each_gain_its_sign():
    summary, gains = summarize(synthetic_evidence(noise=0.5, psnr=30.0), 0.95, 200, 0)
    assert set(summary) == {"model", "bicubic"}
    for method in summary.values():
        for name in ("psnr", "ssim", "fid", "kid"):
            assert method[f"{name}_low"] <= method[name] <= method[f"{name}_high"]
        assert (method["psnr_n"], method["fid_n"]) == (3, 64)
    # the model is better on every metric: every gain is positive, lower-is-better ones included
    for name in ("psnr", "ssim", "fid", "kid"):
        assert gains[f"{name}_vs_bicubic"] > 0 and gains[f"{name}_vs_bicubic_low"] > 0, name
        assert gains[f"{name}_vs_bicubic_low"] <= gains[f"{name}_vs_bicubic"] <= gains[f"{name}_vs_bicubic_high"]
    kid = METRICS["kid"]
    assert gains["kid_vs_bicubic"] == pytest.approx(kid.gain(summary["model"]["kid"], summary["bicubic"]["kid"]))


def test_evidence_round_trips_through_its_file(tmp_path: Path):
    evidence = synthetic_evidence(noise=0.5, psnr=30.0, baseline="nl_means")
    evidence.save(tmp_path / "evidence.npz")
    loaded = Evidence.load(tmp_path / "evidence.npz")
    assert loaded.images == evidence.images and loaded.methods == ["model", "nl_means"]
    assert loaded.same_crops(evidence) and loaded.metrics("model") == ["psnr", "ssim", "fid", "kid"]
    np.testing.assert_array_equal(loaded.features["nl_means"], evidence.features["nl_means"])
    np.testing.assert_array_equal(loaded.per_image["model"]["psnr"], evidence.per_image["model"]["psnr"])
