from pathlib import Path

import pytest

from gan_enhance.config import ParamsError, load_params, parse_overrides

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def _error(overrides: dict, path: Path | None = REPO_PARAMS) -> str:
    with pytest.raises(ParamsError) as info:
        load_params(path, overrides)
    return str(info.value)


def test_defaults_are_valid_and_match_the_repository_params():
    repo_params = load_params(REPO_PARAMS)
    assert load_params(None) == repo_params  # params.yaml spells out the defaults
    assert repo_params.task.name == "sr"
    assert repo_params.task.sr.scale == 4


def test_unknown_key_names_its_path():
    message = _error({"train.learning_rate": 0.1})
    assert "train.learning_rate" in message and "unknown key" in message


def test_bad_value_names_path_value_and_allowed_values():
    message = _error({"task.name": "deblur"})
    assert "task.name" in message and "'deblur'" in message and "'sr'" in message and "'denoise'" in message
    message = _error({"task.sr.scale": 5})
    assert "task.sr.scale" in message and "5" in message and "2, 3 or 4" in message.replace("'", "")


def test_out_of_range_number():
    message = _error({"train.lr_g": -1})
    assert "train.lr_g" in message and "greater than 0" in message and "-1" in message


def test_network_options_are_checked_against_the_network():
    message = _error({"model.generator.depth": 3})
    assert "model.generator" in message and "depth" in message and "num_feat" in message
    message = _error({"model.generator.name": "dncnn"})
    assert "does not fit task 'sr'" in message and "srvgg" in message
    message = _error({"model.discriminator.name": "nope"})
    assert "unknown discriminator 'nope'" in message and "patchgan" in message


def test_cross_field_rules():
    assert "warmup_steps (50) exceeds steps (10)" in _error({"train.steps": 10, "train.warmup_steps": 50})
    assert "multiple of the scale (3)" in _error({"task.sr.scale": 3, "train.patch_size": 64})
    assert "tile_overlap (64) must be < tile / 2" in _error({"evaluate.tile": 128, "evaluate.tile_overlap": 64})
    assert "evaluate.kid_subset_size" in _error({"evaluate.kid_subset_size": 8})  # KID now takes every crop


def test_overrides_are_yaml_typed_and_validated_like_the_file():
    overrides = parse_overrides(
        ["train.steps=20", "train.warmup_steps=10", "task.denoise.sigma=[10, 30]", "tracking.uri=null"]
    )
    assert overrides == {
        "train.steps": 20,
        "train.warmup_steps": 10,
        "task.denoise.sigma": [10, 30],
        "tracking.uri": None,
    }
    params = load_params(None, overrides)
    assert params.train.steps == 20 and params.task.denoise.sigma == (10, 30)
    with pytest.raises(ParamsError, match="KEY=VALUE"):
        parse_overrides(["train.steps"])


def test_missing_and_malformed_files(tmp_path: Path):
    assert "not found" in _error({}, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    assert "not valid YAML" in _error({}, bad)
