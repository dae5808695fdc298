"""Registry logic that needs no server: the promotion policy, its params, naming, lineage and registration keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gan_enhance.config import ParamsError, PromoteParams, load_params
from gan_enhance.lifecycle.promotion import Candidate, decide, protocol_differences
from gan_enhance.lifecycle.register import dvc_data_hash, registration_key
from gan_enhance.lifecycle.registry import registered_model_name

PROTOCOL = {"test_set_hash": "abc", "fid_crops": 64, "torchmetrics": "1.9.0", "metric_space": "y"}
POLICY = PromoteParams()  # fid lower is better; psnr may drop by at most 0.1


def _candidate(version: str, fid: float, psnr: float, protocol: dict | None = PROTOCOL) -> Candidate:
    return Candidate(version, {"fid": fid, "psnr": psnr, "ssim": 0.8}, protocol)


def test_first_model_becomes_champion():
    decision = decide(_candidate("1", 120.0, 27.0), None, POLICY)
    assert decision.promote and "first champion" in decision.reason and "120" in decision.reason


def test_better_primary_within_guard_tolerance_is_promoted():
    decision = decide(_candidate("2", 110.0, 26.95), _candidate("1", 120.0, 27.0), POLICY)
    assert decision.promote
    assert "110" in decision.reason and "120" in decision.reason and "version 1" in decision.reason


def test_worse_or_equal_primary_is_refused_with_the_numbers():
    for fid in (130.0, 120.0):
        decision = decide(_candidate("2", fid, 28.0), _candidate("1", 120.0, 27.0), POLICY)
        assert not decision.promote
        assert f"fid {fid:g} is not lower than champion version 1's 120" in decision.reason


def test_guard_loss_beyond_tolerance_is_refused():
    decision = decide(_candidate("2", 100.0, 26.8), _candidate("1", 120.0, 27.0), POLICY)
    assert not decision.promote
    assert "psnr 26.8 loses 0.2" in decision.reason and "tolerance 0.1" in decision.reason


def test_mismatched_protocol_is_refused_naming_each_difference():
    other = {**PROTOCOL, "fid_crops": 8, "test_set_hash": "def"}
    decision = decide(_candidate("2", 50.0, 30.0, other), _candidate("1", 120.0, 27.0), POLICY)
    assert not decision.promote
    assert "protocols differ" in decision.reason
    assert "fid_crops: 8 vs 64" in decision.reason and "test_set_hash: 'def' vs 'abc'" in decision.reason
    assert protocol_differences(PROTOCOL, dict(PROTOCOL)) == []
    missing = decide(_candidate("2", 50.0, 30.0, None), _candidate("1", 120.0, 27.0), POLICY)
    assert not missing.promote and "version 2 carries no evaluation protocol" in missing.reason


def test_missing_metric_is_refused():
    bare = Candidate("2", {"psnr": 30.0}, PROTOCOL)
    decision = decide(bare, _candidate("1", 120.0, 27.0), POLICY)
    assert not decision.promote and "no metric 'fid'" in decision.reason


def test_tasks_without_the_guard_metric_are_judged_on_the_primary_alone():
    """Translation and generation report FID/KID only: no PSNR guard applies, but one-sided guards do not compare."""
    first = decide(Candidate("1", {"fid": 80.0, "kid": 0.02}, PROTOCOL), None, POLICY)
    assert first.promote and "no 'psnr' in this task's evaluation" in first.reason
    champion = Candidate("1", {"fid": 80.0, "kid": 0.02}, PROTOCOL)
    better = decide(Candidate("2", {"fid": 70.0, "kid": 0.03}, PROTOCOL), champion, POLICY)
    assert better.promote and "so no guard" in better.reason
    assert not decide(Candidate("3", {"fid": 90.0}, PROTOCOL), champion, POLICY).promote
    one_sided = decide(_candidate("4", 70.0, 30.0), champion, POLICY)
    assert not one_sided.promote and "version 4 carries 'psnr' but version 1 does not" in one_sided.reason


def test_higher_is_better_primary():
    policy = PromoteParams(primary_metric="psnr", primary_direction="higher", guard_metric="ssim", guard_tolerance=0)
    champion = Candidate("1", {"psnr": 27.0, "ssim": 0.80}, PROTOCOL)
    assert decide(Candidate("2", {"psnr": 27.5, "ssim": 0.80}, PROTOCOL), champion, policy).promote
    assert not decide(Candidate("3", {"psnr": 26.0, "ssim": 0.90}, PROTOCOL), champion, policy).promote
    assert not decide(Candidate("4", {"psnr": 27.5, "ssim": 0.79}, PROTOCOL), champion, policy).promote


def test_promote_params_reject_contradictions():
    with pytest.raises(ParamsError, match=r"promote.*fid is better when lower, not higher"):
        load_params(None, {"promote.primary_direction": "higher"})
    with pytest.raises(ParamsError, match="both 'psnr'"):
        load_params(None, {"promote.primary_metric": "psnr", "promote.primary_direction": "higher"})
    with pytest.raises(ParamsError, match="guard_tolerance"):
        load_params(None, {"promote.guard_tolerance": -1})


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
