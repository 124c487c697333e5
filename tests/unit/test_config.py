"""Run configuration: recipes, overrides, validation messages that name the field and the allowed values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vgid_dist.config import (
    RECIPES_DIR,
    RunConfig,
    load_run_config,
    packaged_recipes,
    resolve_ds_config,
)
from vgid_dist.errors import ConfigError

BASE = {"model": {"path": "/m"}, "data": {"root": "/d"}, "method": {"name": "vgid"}}


def write(tmp_path: Path, data: dict, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def error_of(tmp_path, data, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_run_config(str(write(tmp_path, data)), overrides)
    return str(info.value)


def test_overrides_with_dotted_paths_and_shortcuts(tmp_path):
    cfg = load_run_config(str(write(tmp_path, BASE)),
                          ["method.alpha=2", "max_steps=12", "output_dir=/x", "seed=3", "optim.lr=1e-4"])
    assert cfg.method.params().alpha == 2.0
    assert cfg.optim.max_steps == 12 and cfg.optim.seed == 3 and cfg.optim.lr == 1e-4
    assert cfg.output_dir == "/x"


def test_unknown_key_is_named(tmp_path):
    msg = error_of(tmp_path, {**BASE, "optim": {"lrr": 1}})
    assert "optim.lrr: unknown key" in msg and "r.yaml" in msg


def test_wrong_type_is_named(tmp_path):
    msg = error_of(tmp_path, BASE, ["method.alpha=abc"])
    assert "method.alpha" in msg and "abc" in msg


def test_literal_lists_allowed_values(tmp_path):
    msg = error_of(tmp_path, BASE, ["data.forget_ratio=7", "method.perturbation=blur"])
    assert "data.forget_ratio: expected one of 5, 10 or 15, got 7" in msg
    assert "method.perturbation: expected one of 'random_noise', 'gaussian' or 'white', got 'blur'" in msg


def test_unknown_method_lists_known_ones(tmp_path):
    msg = error_of(tmp_path, {**BASE, "method": {"name": "nope"}})
    assert "unknown method 'nope'" in msg and "vgid" in msg


def test_method_parameters_are_the_methods_own(tmp_path):
    msg = error_of(tmp_path, {**BASE, "method": {"name": "finetune", "alpha": 1}})
    assert "method.alpha: unknown key" in msg


def test_impossible_combination_fails(tmp_path):
    msg = error_of(tmp_path, {**BASE, "data": {"root": "/d", "format": "jsonl"}, "eval": {"at_end": True}})
    assert "eval.at_end" in msg


def test_env_expansion(tmp_path, monkeypatch):
    monkeypatch.setenv("VGID_TEST_MODELS", "/models")
    cfg = load_run_config(str(write(tmp_path, {**BASE, "model": {"path": "${VGID_TEST_MODELS}/llava"},
                                               "output_dir": "${VGID_TEST_UNSET:-/tmp/out}"})))
    assert cfg.model.path == "/models/llava" and cfg.output_dir == "/tmp/out"


def test_extends_merges_and_replaces_a_different_method(tmp_path):
    write(tmp_path, {**BASE, "method": {"name": "vgid", "alpha": 3}, "optim": {"lr": 0.1, "seed": 5}}, "parent.yaml")
    cfg = load_run_config(str(write(tmp_path, {"extends": "parent.yaml", "optim": {"lr": 0.2},
                                               "method": {"name": "finetune"}})))
    assert cfg.optim.lr == 0.2 and cfg.optim.seed == 5 and cfg.method.name == "finetune"


def test_ds_config_batch_contradiction_is_refused(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 3}}))
    cfg = RunConfig.model_validate({**BASE, "ds_config": str(ds), "optim": {"batch_size": 4}})
    with pytest.raises(ConfigError, match="train_micro_batch_size_per_gpu=8 contradicts"):
        resolve_ds_config(cfg, world_size=2)


def test_ds_config_auto_values_are_filled():
    cfg = RunConfig.model_validate({**BASE, "optim": {"batch_size": 8, "grad_accum": 2}})
    ds = resolve_ds_config(cfg, world_size=2)
    assert ds["train_batch_size"] == 8 and ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_accumulation_steps"] == 2 and ds["bf16"]["enabled"] is True
    with pytest.raises(ConfigError, match="not divisible"):
        resolve_ds_config(cfg, world_size=3)


@pytest.mark.parametrize("name", packaged_recipes())
def test_every_packaged_recipe_validates(name):
    cfg = load_run_config(name)
    resolve_ds_config(cfg, world_size=1)


@pytest.mark.parametrize("path", sorted((RECIPES_DIR / "ds").glob("*.json")))
def test_every_ds_config_is_valid_json_with_auto_batches(path):
    data = json.loads(path.read_text())
    assert data["train_batch_size"] == "auto" and "zero_optimization" in data
