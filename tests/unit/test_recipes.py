"""The training regimes the packaged recipes and matrices carry: LoRA on the language model's linear layers for
the real models, VGID's own budget for VGID, ICU-T and Noise-T, Table 7's for the baselines; full fine-tuning as
an override and as a matrix; and ``vgid config`` printing what a run uses."""

from __future__ import annotations

import pytest
import torch
import yaml

from vgid_dist.cli import main
from vgid_dist.cluster.matrix import expand, load_matrix
from vgid_dist.config import LoraConfig, load_run_config, packaged_recipes
from vgid_dist.models import load_adapter
from vgid_dist.models.lora import lora_target_names

PAPER_LORA = LoraConfig(r=16, alpha=16, dropout=0.05, targets="all-linear")
VGID_FAMILY = ("llava-1.5-7b", "llava-1.5-13b", "qwen2.5-vl-3b", "icu_t", "noise_t")
BASELINES = ("ga", "ga_diff", "kl_min", "npo", "po", "idk")


def budget(cfg) -> tuple:
    o = cfg.optim
    return o.lr, o.batch_size, o.epochs, o.schedule, o.warmup_steps, o.max_grad_norm, cfg.data.max_length


def test_vgid_recipes_train_lora_with_the_released_vgid_budget():
    for name in VGID_FAMILY:
        cfg = load_run_config(name)
        assert cfg.model.lora == PAPER_LORA, name
        assert budget(cfg) == (5e-4, 4, 5.0, "constant", 0, 0.0, 384), name
        assert cfg.data.score_eos is False


def test_baseline_recipes_train_lora_with_table_7():
    for name in BASELINES:
        cfg = load_run_config(name)
        assert cfg.method.name == name and cfg.model.lora == PAPER_LORA, name
        assert budget(cfg) == (2e-5, 4, 1.0, "linear", 0, 0.0, 384), name
    for name in ("rmu", "vkd"):  # they train weights LoRA does not reach (RMU's reference, the visual pathway)
        cfg = load_run_config(name)
        assert cfg.model.lora is None and budget(cfg)[:3] == (2e-5, 4, 1.0), name
    rmu = load_run_config("rmu").method.params()
    assert (rmu.variant, rmu.trainable, rmu.layer, rmu.gamma, rmu.steering_coeff) == ("reference", "down_proj", 7,
                                                                                      1200.0, None)


def test_full_fine_tuning_is_an_override_and_tiny_recipes_stay_full():
    assert load_run_config("llava-1.5-7b", ["model.lora=null"]).model.lora is None
    for name in packaged_recipes():
        if name.startswith("tiny"):
            assert load_run_config(name).model.lora is None, name


def test_paper_matrices_lora_and_full(tmp_path):
    matrix, path = load_matrix("paper-table3")
    for cell in expand(matrix, path, tmp_path):
        cfg = load_run_config(cell.recipe, list(cell.overrides))
        if cell.method in ("vgid", "icu_t", "noise_t"):
            assert cfg.model.lora == PAPER_LORA and budget(cfg)[:4] == (5e-4, 4, 5.0, "constant"), cell.name
        else:
            assert budget(cfg) == (2e-5, 4, 1.0, "linear", 0, 0.0, 384), cell.name
            assert cfg.model.lora == (None if cell.method in ("rmu", "vkd") else PAPER_LORA), cell.name
    assert (matrix.relearn.lora, matrix.relearn.lr) == (False, 2e-5)
    full, full_path = load_matrix("paper-table3-full")
    assert full.name == "paper-table3-full" and full.methods.keys() == matrix.methods.keys()
    cells = expand(full, full_path, tmp_path)
    assert len(cells) == 90
    for cell in cells:
        cfg = load_run_config(cell.recipe, list(cell.overrides))
        assert cfg.model.lora is None and budget(cfg)[:4] == (2e-5, 4, 1.0, "linear"), cell.name


@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_lora_targets_only_the_language_models_linear_layers(family, tiny_llava, tiny_qwen):
    adapter = load_adapter(tiny_llava if family == "llava" else tiny_qwen)
    model = adapter.model_class._from_config(adapter.config)
    layers = adapter.language_layers(model)
    prefix = next(name for name, module in model.named_modules() if module is layers)
    names = lora_target_names(layers, "all-linear", prefix)
    assert prefix.endswith("language_model.layers")
    assert all(n.startswith(prefix + ".") for n in names)
    assert {n.rsplit(".", 1)[1] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                    "down_proj"}
    linear = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(names) == {n for n in linear if n.startswith(prefix + ".")}


def test_vgid_config_prints_the_resolved_recipe(capsys):
    assert main(["config", "llava-1.5-7b"]) == 0
    out = capsys.readouterr().out
    assert "language model's decoder layers only" in out
    data = yaml.safe_load(out)
    assert data["model"]["lora"] == {"r": 16, "alpha": 16, "dropout": 0.05, "targets": "all-linear"}
    assert (data["optim"]["lr"], data["optim"]["epochs"], data["optim"]["schedule"],
            data["optim"]["max_grad_norm"]) == (5e-4, 5.0, "constant", 0.0)
    # The method's parameters are filled with their defaults, the output folder resolved.
    assert data["method"]["sigma"] == 0.5 and data["method"]["fused_kl"] is True
    assert data["output_dir"] == "runs/llava-1.5-7b-vgid"
    assert main(["config", "rmu", "method.layer=5"]) == 0
    rmu = yaml.safe_load(capsys.readouterr().out)["method"]
    assert rmu == {"name": "rmu", "variant": "reference", "layer": 5, "lambda": 5.0, "steering_coeff": None,
                   "gamma": 1200.0, "trainable": "down_proj"}
    assert main(["config", "npo", "method.gamma=1"]) == 2
    assert "method.gamma: unknown key" in capsys.readouterr().err
