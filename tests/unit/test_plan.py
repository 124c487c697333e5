"""The memory planner: parameter counts of the real architectures, each term's dependence on the run's options,
config.json parsing, the fit verdict and the `vgid plan` command."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from vgid_dist.cli import main
from vgid_dist.errors import PlanError
from vgid_dist.plan import (
    ARCHITECTURES,
    GB,
    RunShape,
    activation_bytes,
    architecture_from_config,
    plan_memory,
    resolve_architecture,
)

# Totals of the published checkpoints (equal to instantiating the transformers classes on the meta device).
PUBLISHED_PARAMS = {"llava-1.5-7b": 7_063_427_072, "llava-1.5-13b": 13_351_494_656, "qwen2.5-vl-3b": 3_754_622_976}

LLAVA_7B_CONFIG = {
    "model_type": "llava", "image_token_index": 32000, "vision_feature_layer": -2,
    "text_config": {"model_type": "llama", "vocab_size": 32064, "hidden_size": 4096, "intermediate_size": 11008,
                    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32},
    "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
                      "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 336, "patch_size": 14},
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_parameter_counts_match_the_published_models(name):
    assert ARCHITECTURES[name].num_params() == PUBLISHED_PARAMS[name]


def test_image_tokens_per_family():
    assert ARCHITECTURES["llava-1.5-7b"].image_tokens == 576  # 336 px / 14, class token dropped
    assert ARCHITECTURES["llava-1.5-7b"].image_patches == 577
    assert ARCHITECTURES["qwen2.5-vl-3b"].image_tokens == 256  # 448 px / 14 = 32 x 32 patches, merged 2 x 2


def test_architecture_from_a_config_json(tmp_path):
    arch = architecture_from_config(LLAVA_7B_CONFIG)
    assert arch.num_params() == PUBLISHED_PARAMS["llava-1.5-7b"]
    (tmp_path / "config.json").write_text(json.dumps(LLAVA_7B_CONFIG))
    assert resolve_architecture(str(tmp_path)).num_params() == PUBLISHED_PARAMS["llava-1.5-7b"]


def test_unknown_models_and_fields_are_named():
    with pytest.raises(PlanError, match="llava-1.5-13b"):
        resolve_architecture("llava-2-70b")
    broken = {**LLAVA_7B_CONFIG, "text_config": {"vocab_size": 10}}
    with pytest.raises(PlanError, match="text_config.hidden_size"):
        architecture_from_config(broken)
    with pytest.raises(PlanError, match="model_type"):
        architecture_from_config({**LLAVA_7B_CONFIG, "model_type": "mllama"})


def test_zero3_partitions_weights_and_states_over_all_gpus():
    arch = ARCHITECTURES["llava-1.5-7b"]
    one = plan_memory(arch, gpus_per_node=8, nodes=1)
    two = plan_memory(arch, gpus_per_node=8, nodes=2)
    for term in ("parameters", "optimizer", "teacher"):
        assert two.terms[term] == pytest.approx(one.terms[term] / 2)
    assert two.terms["activations"] == one.terms["activations"]  # per-GPU batch unchanged
    assert one.terms["optimizer"] == pytest.approx(arch.num_params() * 12 / 8)


def test_zero2_keeps_whole_weights_per_gpu():
    arch = ARCHITECTURES["qwen2.5-vl-3b"]
    plan = plan_memory(arch, gpus_per_node=8, zero=2)
    assert plan.terms["parameters"] == pytest.approx(arch.num_params() * 2)
    assert plan.terms["teacher"] == pytest.approx(arch.num_params() * 2)
    assert plan.terms["gathered_parameters"] == 0


def test_lora_has_no_teacher_copy_and_small_states():
    arch = ARCHITECTURES["llava-1.5-13b"]
    full = plan_memory(arch, shape=RunShape())
    lora = plan_memory(arch, shape=RunShape(lora_r=16))
    assert lora.terms["teacher"] == 0 and "teacher_gathers" not in lora.terms
    assert lora.trainable_params == arch.lora_params(16) < arch.num_params() / 100
    assert lora.terms["optimizer"] < full.terms["optimizer"] / 100
    assert lora.total_bytes < full.total_bytes


def test_offload_moves_states_to_the_cpu():
    arch = ARCHITECTURES["llava-1.5-13b"]
    plan = plan_memory(arch, offload=True)
    assert plan.terms["optimizer"] == plan.terms["parameters"] == plan.terms["optimizer_step"] == 0
    assert plan.cpu_bytes_per_node > arch.num_params() * 12
    with pytest.raises(PlanError, match="ZeRO-3"):
        plan_memory(arch, zero=2, offload=True)


def test_activations_grow_with_batch_and_shrink_with_checkpointing():
    arch = ARCHITECTURES["qwen2.5-vl-3b"]
    one = activation_bytes(arch, RunShape(micro_batch=1))
    four = activation_bytes(arch, RunShape(micro_batch=4))
    assert four["activations"] == pytest.approx(4 * one["activations"])
    checkpointed = activation_bytes(arch, RunShape(micro_batch=4, activation_checkpointing=True))
    assert checkpointed["activations"] < four["activations"] / 5
    unfused = activation_bytes(arch, RunShape(micro_batch=4, fused_kl=False))
    assert unfused["loss"] > four["loss"]
    fp32 = activation_bytes(arch, RunShape(micro_batch=1, dtype="float32"))
    assert fp32["activations"] > one["activations"]


def test_peak_is_steady_terms_plus_the_larger_phase():
    plan = plan_memory(ARCHITECTURES["llava-1.5-7b"], gpus_per_node=4)
    steady = sum(plan.terms[k] for k in ("parameters", "gradients", "optimizer", "teacher", "gathered_parameters"))
    forward_backward = sum(plan.terms[k] for k in ("activations", "teacher_forward", "loss", "teacher_gathers"))
    assert plan.total_bytes == pytest.approx(steady + max(forward_backward, plan.terms["optimizer_step"]))


def test_llava_13b_on_eight_80gb_gpus():
    arch = ARCHITECTURES["llava-1.5-13b"]
    full = plan_memory(arch, gpus_per_node=8, nodes=1)
    lora = plan_memory(arch, gpus_per_node=8, nodes=1, shape=RunShape(lora_r=16))
    assert full.fits(80) and lora.fits(80)
    assert not plan_memory(arch, gpus_per_node=1, nodes=1).fits(80)  # 13 B x 16+ bytes on one GPU
    assert full.required_gb() > full.total_gb


def test_bad_options_are_refused():
    arch = ARCHITECTURES["llava-1.5-7b"]
    with pytest.raises(PlanError, match="--zero 1"):
        plan_memory(arch, zero=1)
    with pytest.raises(PlanError, match="at least 1"):
        plan_memory(arch, gpus_per_node=0)
    with pytest.raises(PlanError, match="dtype"):
        plan_memory(arch, shape=replace(RunShape(), dtype="int8"))


def test_plan_command(capsys):
    assert main(["plan", "--model", "llava-1.5-13b", "--gpus-per-node", "8", "--nodes", "1"]) == 0
    out = capsys.readouterr().out
    assert "fits in 80 GB per GPU" in out and "optimizer" in out
    assert main(["plan", "--model", "llava-1.5-13b", "--gpus-per-node", "1", "--nodes", "1", "--json",
                 "--gpu-memory-gb", "80"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fits"] is False and data["params"] == PUBLISHED_PARAMS["llava-1.5-13b"]
    assert data["total_gb"] == pytest.approx(plan_memory(ARCHITECTURES["llava-1.5-13b"], gpus_per_node=1).total_bytes
                                             / GB, abs=1e-3)


def test_plan_command_errors(capsys):
    assert main(["plan", "--model", "nowhere", "--gpus-per-node", "1", "--nodes", "1"]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["plan", "--model", "qwen2.5-vl-3b", "--gpus-per-node", "8", "--batch-size", "4"]) == 2
    assert "multiple" in capsys.readouterr().err


def test_micro_batch_splits_the_global_batch_or_names_why_not():
    from vgid_dist.errors import PlanError
    from vgid_dist.plan import micro_batch_per_gpu

    assert micro_batch_per_gpu(32, 8, 2) == 2 and micro_batch_per_gpu(None, 8, 1) == 1
    with pytest.raises(PlanError, match="--batch-size 12 is not a multiple of the 8 GPUs x --grad-accum 1"):
        micro_batch_per_gpu(12, 8, 1)
