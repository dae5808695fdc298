"""Registry logic that needs no server: the promotion policy, its params, naming, lineage and registration keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gan_enhance.config import ParamsError, PromoteParams, load_params
from gan_enhance.evaluation.evidence import Evidence
from gan_enhance.evaluation.report import protocol_differences
from gan_enhance.lifecycle.promotion import Candidate, Policy, decide
from gan_enhance.lifecycle.register import dvc_data_hash, registration_key
from gan_enhance.lifecycle.registry import registered_model_name
from tests.evidence_support import synthetic_evidence

PROTOCOL = {"test_set_hash": "abc", "fid_crops": 64, "torchmetrics": "1.9.0", "metric_space": "y", "seed": 1}
POLICY = Policy(PromoteParams(), "bicubic", 400)  # KID decides, PSNR may drop by <= 0.1 dB; beat bicubic


def _candidate(version: str, evidence: Evidence | None, protocol: dict | None = PROTOCOL) -> Candidate:
    return Candidate(version, protocol, evidence)


def test_first_model_becomes_champion_only_when_it_beats_its_baseline():
    first = decide(_candidate("1", synthetic_evidence(noise=0.5, psnr=30.0)), None, POLICY)
    assert first.promote and first.reason.startswith("first champion; beats bicubic: KID")
    losing = decide(_candidate("1", synthetic_evidence(noise=1.2, psnr=30.0)), None, POLICY)
    assert not losing.promote
    assert "does not beat its classical baseline bicubic with significance: KID" in losing.reason
    assert "registered, but not made champion" in losing.reason
    tied = decide(_candidate("1", synthetic_evidence(noise=1.0, psnr=30.0, seed=998)), None, POLICY)
    assert not tied.promote and "does not beat its classical baseline" in tied.reason
    ungated = Policy(PromoteParams(require_baseline_win=False), "bicubic", 400)
    assert decide(_candidate("1", synthetic_evidence(noise=1.2, psnr=30.0)), None, ungated).promote


def test_a_real_improvement_is_promoted_with_its_interval():
    champion = _candidate("1", synthetic_evidence(noise=0.6, psnr=30.0, seed=1))
    decision = decide(_candidate("2", synthetic_evidence(noise=0.3, psnr=29.95, seed=2)), champion, POLICY)
    assert decision.promote, decision.reason
    assert "against champion version 1: significantly better" in decision.reason
    assert (
        "difference -" in decision.reason and "95% interval" in decision.reason and "64 paired crops" in decision.reason
    )
    assert (
        "PSNR 29.95 vs 30.00, difference -0.05" in decision.reason and "within the tolerance 0.1 dB" in decision.reason
    )


def test_an_improvement_within_the_noise_is_refused():
    # the same error level, other draws of it: the point estimates differ, and a 95 % test promotes at most its
    # one-sided error rate (2.5 %) of them; the old point-estimate rule promoted every draw that came out lower
    champion = _candidate("1", synthetic_evidence(noise=0.5, psnr=30.0, seed=1))
    decisions = [
        decide(_candidate(str(seed), synthetic_evidence(noise=0.5, psnr=30.0, seed=seed)), champion, POLICY)
        for seed in range(2, 42)
    ]
    lower = [d for d in decisions if "difference -" in d.reason]
    assert len(lower) >= 10  # the old rule would have promoted each of these
    assert sum(d.promote for d in decisions) <= 3  # 1 expected
    assert "not significant, champion kept" in next(d for d in lower if not d.promote).reason


def test_a_worse_challenger_is_refused():
    champion = _candidate("1", synthetic_evidence(noise=0.3, psnr=30.0))
    decision = decide(_candidate("2", synthetic_evidence(noise=0.6, psnr=31.0, seed=2)), champion, POLICY)
    assert not decision.promote and "champion kept" in decision.reason and "difference +" in decision.reason


def test_a_guard_loss_beyond_tolerance_is_refused():
    champion = _candidate("1", synthetic_evidence(noise=0.6, psnr=30.0))
    decision = decide(_candidate("2", synthetic_evidence(noise=0.2, psnr=29.0, seed=2)), champion, POLICY)
    assert not decision.promote
    assert "significantly better, but PSNR 29.00 vs 30.00" in decision.reason
    assert "it loses 1.00 dB, more than the tolerance 0.1 dB" in decision.reason


def test_a_noisy_guard_is_judged_on_its_estimate_and_reported_with_its_interval():
    champion_evidence = synthetic_evidence(noise=0.6, psnr=30.0)
    challenger = synthetic_evidence(noise=0.2, psnr=30.0, seed=2)
    challenger.per_image["model"]["psnr"] = challenger.per_image["model"]["psnr"] + [0.5, -0.5, 0.0]  # same mean
    decision = decide(_candidate("2", challenger), _candidate("1", champion_evidence), POLICY)
    assert decision.promote and "PSNR 30.00 vs 30.00, difference +0.00 (95% interval -1.24..+1.24" in decision.reason


def test_different_crop_seeds_are_compared_unpaired_over_crops():
    champion = _candidate("1", synthetic_evidence(noise=0.5, psnr=30.0))
    decisions = [  # the same model evaluated on other crops of the same images
        decide(_candidate("2", synthetic_evidence(noise=0.5, psnr=30.0, crop_seed=crop_seed)), champion, POLICY)
        for crop_seed in range(1, 11)
    ]
    assert sum(d.promote for d in decisions) <= 1
    assert all("64 crops" in d.reason and "paired crops" not in d.reason.split("against")[0] for d in decisions)


def test_mismatched_or_missing_protocol_and_evidence_are_refused():
    champion = _candidate("1", synthetic_evidence(noise=0.6, psnr=30.0))
    better = synthetic_evidence(noise=0.2, psnr=30.0, seed=2)
    other = {**PROTOCOL, "fid_crops": 128, "test_set_hash": "def", "seed": 2}
    decision = decide(_candidate("2", better, other), champion, POLICY)
    assert not decision.promote
    assert "fid_crops: 128 vs 64" in decision.reason and "test_set_hash: 'def' vs 'abc'" in decision.reason
    assert "seed" not in decision.reason  # another crop seed is comparable (unpaired over crops)
    assert "no evaluation protocol" in decide(_candidate("2", better, None), champion, POLICY).reason
    missing = decide(_candidate("2", None), champion, POLICY)
    assert not missing.promote and "version 2 carries no evaluation evidence" in missing.reason
    old_champion = decide(_candidate("2", better), _candidate("1", None), POLICY)
    assert not old_champion.promote and "version 1 carries no evaluation evidence" in old_champion.reason
    assert protocol_differences(PROTOCOL, other) == [
        "fid_crops: 64 vs 128",
        "test_set_hash: 'abc' vs 'def'",
    ]


def test_tasks_without_the_guard_metric_are_judged_on_the_primary_alone():
    translation = synthetic_evidence(noise=0.2, psnr=30.0, seed=2, baseline="identity")
    translation.per_image = {}
    champion = synthetic_evidence(noise=0.6, psnr=30.0, baseline="identity")
    champion.per_image = {}
    policy = Policy(PromoteParams(), "identity", 400)
    decision = decide(_candidate("2", translation), _candidate("1", champion), policy)
    assert decision.promote and "no PSNR in this task's evaluation, so no guard" in decision.reason


def test_higher_is_better_primary():
    policy = Policy(PromoteParams(primary_metric="psnr", guard_metric="ssim", guard_tolerance=0.01), "bicubic", 400)
    champion = _candidate("1", synthetic_evidence(noise=0.5, psnr=30.0))
    assert decide(_candidate("2", synthetic_evidence(noise=0.5, psnr=30.5, seed=2)), champion, policy).promote
    refused = decide(_candidate("3", synthetic_evidence(noise=0.5, psnr=29.5, seed=3)), champion, policy)
    assert not refused.promote and "PSNR 29.50 vs 30.00, difference -0.50" in refused.reason


def test_promote_params_reject_contradictions():
    with pytest.raises(ParamsError, match=r"promote.primary_metric.*'lpips' cannot be the primary metric"):
        load_params(None, {"promote.primary_metric": "lpips"})
    with pytest.raises(ParamsError, match=r"'fid' cannot be the guard metric; choose one of psnr, ssim"):
        load_params(None, {"promote.guard_metric": "fid"})
    with pytest.raises(ParamsError, match="both 'psnr'"):
        load_params(None, {"promote.primary_metric": "psnr"})
    with pytest.raises(ParamsError, match="guard_tolerance"):
        load_params(None, {"promote.guard_tolerance": -1})
    with pytest.raises(ParamsError, match="primary_direction"):
        load_params(None, {"promote.primary_direction": "higher"})  # directions come from the metric table


def test_registered_model_name_per_task_and_configuration():
    assert registered_model_name(load_params(None)) == "gan-enhance-sr-x4"
    assert registered_model_name(load_params(None, {"task.sr.scale": 2})) == "gan-enhance-sr-x2"
    denoise = load_params(None, {"task.name": "denoise", "model.generator.name": "dncnn"})
    assert registered_model_name(denoise) == "gan-enhance-denoise"
    assert registered_model_name(load_params(None, {"registry.model_name": "mine"})) == "mine"
    with pytest.raises(ParamsError, match=r"registry.model_name: model_name must be letters"):
        load_params(None, {"registry.model_name": "it's/mine"})


def test_dvc_data_hash_prefers_the_data_train_used(tmp_path: Path):
    lock = tmp_path / "dvc.lock"
    assert dvc_data_hash(lock, Path("data/prepared")) is None
    lock.write_text(
        "schema: '2.0'\nstages:\n"
        "  prepare:\n    cmd: gan-enhance prepare\n    outs:\n"
        "    - path: data/prepared\n      hash: md5\n      md5: 1111.dir\n"
        "  train:\n    cmd: gan-enhance train\n    deps:\n"
        "    - path: data/prepared\n      hash: md5\n      md5: 2222.dir\n"
        "    - path: src/gan_enhance/training\n      hash: md5\n      md5: 3333.dir\n"
    )
    assert dvc_data_hash(lock, Path("data/prepared")) == "2222.dir"
    assert dvc_data_hash(lock, Path("elsewhere")) is None


def test_registration_key_follows_weights_card_and_evaluation(tmp_path: Path):
    model, metrics = tmp_path / "model", tmp_path / "metrics.json"
    model.mkdir()
    (model / "generator.safetensors").write_bytes(b"weights")
    (model / "card.json").write_text("{}")
    metrics.write_text('{"model": {"fid": 1.0}}')
    key = registration_key(model, metrics)
    assert registration_key(model, metrics) == key
    metrics.write_text('{"model": {"fid": 2.0}}')
    assert registration_key(model, metrics) != key


def test_register_without_tracking_writes_a_record_and_registers_nothing(tmp_path: Path):
    from gan_enhance.lifecycle.register import register

    params = load_params(None, {"tracking.enabled": False})
    result = register(params, base=tmp_path)
    assert (result.status, result.version) == ("skipped", None) and "tracking.enabled is false" in result.reason
    record = json.loads((tmp_path / "reports/register/registration.json").read_text())
    assert record == {"model_name": "gan-enhance-sr-x4", "version": None, "reason": result.reason}
    assert not (tmp_path / "mlflow.db").exists()
