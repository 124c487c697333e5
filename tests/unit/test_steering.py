"""MLLMEraser steering: a closed gate leaves the model's outputs exactly as they were, an open one changes them,
the saved file reloads to the same outputs, and no hook outlives its use (nor an error inside it)."""

from __future__ import annotations

import json

import pytest
import torch

from vgid_dist.config.method_params import MllmEraserParams
from vgid_dist.data.collate import Collator
from vgid_dist.data.mllmu import MLLMUBench
from vgid_dist.eval.steering import Steering, SteeringHooks, build_steering
from vgid_dist.models import load_adapter


@pytest.fixture(scope="module")
def setup(tiny_llava, bench_dir):
    adapter = load_adapter(tiny_llava)
    model = adapter.load_model(torch.float32).eval()
    bench = MLLMUBench(bench_dir)
    forget, retain = bench.train_samples("forget", 5), bench.train_samples("retain", 5)
    params = MllmEraserParams(layers=[0, 1], gate_layer=0, scale=8.0, max_samples=12)
    steering = build_steering(model, adapter, forget, retain, params, seed=0, batch_size=6)
    collator = Collator(adapter, 10**6)
    prompts = collator.pad([collator.encode(s, answer_ids=[]) for s in forget[:2] + retain[:2]], side="left")
    return adapter, model, steering, prompts, forget, retain


def run(model, adapter, inputs):
    """(prefill logits [B, L, V], greedy continuation [B, 6]): the prefill and the decode steps."""
    with torch.no_grad():
        logits = model(**adapter.model_kwargs(inputs), use_cache=False).logits
        tokens = model.generate(**adapter.model_kwargs(inputs), max_new_tokens=6, do_sample=False,
                                pad_token_id=adapter.tokenizer.pad_token_id)
    return logits, tokens


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_build_calibrates_the_gate_on_retain_pairs(setup):
    _, _, steering, _, forget, retain = setup
    assert steering.layers == [0, 1] and steering.directions.shape == (2, 32)
    assert steering.directions.norm(dim=-1).min() > 0
    assert steering.info["retain_gate_open"] <= 0.1 + 1e-6  # the 95th percentile: about 5% of 12 pass
    assert steering.info["forget_pairs"] == min(12, len(forget))
    assert steering.info["retain_pairs"] == min(12, len(retain))


def test_closed_gate_leaves_outputs_exactly_unchanged(setup):
    adapter, model, steering, prompts, _, _ = setup
    plain = run(model, adapter, prompts)
    closed = Steering(**{**steering.__dict__, "threshold": 2.0})  # no cosine reaches 2
    with SteeringHooks(model, adapter, closed) as hooks:
        gated = run(model, adapter, prompts)
        assert not hooks.strengths.any()
    assert torch.equal(plain[0], gated[0]) and torch.equal(plain[1], gated[1])
    always = Steering(**{**steering.__dict__, "threshold": -2.0})  # every row steered
    with SteeringHooks(model, adapter, always) as hooks:
        steered = run(model, adapter, prompts)
        assert hooks.strengths.tolist() == [1.0] * 4
    assert not torch.equal(plain[0], steered[0])


def test_gate_is_per_row(setup):
    adapter, model, steering, prompts, _, _ = setup
    plain = run(model, adapter, prompts)[0]
    with SteeringHooks(model, adapter, steering) as hooks:
        logits = run(model, adapter, prompts)[0]
        strengths = hooks.strengths.clone()
    for row, s in enumerate(strengths.tolist()):
        assert torch.equal(logits[row], plain[row]) == (s == 0.0), (row, s)


def test_saved_file_reloads_to_the_same_outputs(setup, tmp_path):
    adapter, model, steering, prompts, _, _ = setup
    always = Steering(**{**steering.__dict__, "threshold": -2.0})
    path = always.save(tmp_path / "steer.safetensors")
    loaded = Steering.load(path)
    assert loaded.layers == always.layers and loaded.threshold == always.threshold
    assert loaded.gate_layer == 0 and loaded.info == json.loads(json.dumps(always.info))
    with SteeringHooks(model, adapter, always):
        first = run(model, adapter, prompts)
    with SteeringHooks(model, adapter, loaded):
        second = run(model, adapter, prompts)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    with pytest.raises(ValueError, match="not a steering file"):
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
        Steering.load(tmp_path / "other.safetensors")


def test_hooks_are_removed_after_use_and_after_an_error(setup):
    adapter, model, steering, prompts, _, _ = setup
    before = hook_count(model)
    plain = run(model, adapter, prompts)
    with SteeringHooks(model, adapter, Steering(**{**steering.__dict__, "threshold": -2.0})):
        assert hook_count(model) > before
    assert hook_count(model) == before
    with pytest.raises(RuntimeError, match="inside"):
        with SteeringHooks(model, adapter, steering):
            raise RuntimeError("inside")
    assert hook_count(model) == before
    after = run(model, adapter, prompts)
    assert torch.equal(plain[0], after[0]) and torch.equal(plain[1], after[1])


def test_gate_must_read_an_unsteered_layer(setup):
    _, _, steering, _, _, _ = setup
    with pytest.raises(ValueError, match="gate_layer 1 comes after steering layer 0"):
        Steering(**{**steering.__dict__, "gate_layer": 1})


def test_qwen_steering_closed_gate_and_reload(tiny_qwen, bench_dir, tmp_path):
    adapter = load_adapter(tiny_qwen)
    model = adapter.load_model(torch.float32).eval()
    bench = MLLMUBench(bench_dir)
    params = MllmEraserParams(layers=[1], gate_layer=0, max_samples=6)
    steering = build_steering(model, adapter, bench.train_samples("forget", 5), bench.train_samples("retain", 5),
                              params, batch_size=3)
    collator = Collator(adapter, 10**6)
    prompts = collator.pad([collator.encode(s, answer_ids=[]) for s in bench.train_samples("forget", 5)[:3]],
                           side="left")
    plain = run(model, adapter, prompts)
    with SteeringHooks(model, adapter, Steering(**{**steering.__dict__, "threshold": 2.0})):
        closed = run(model, adapter, prompts)
    assert torch.equal(plain[0], closed[0]) and torch.equal(plain[1], closed[1])
    always = Steering(**{**steering.__dict__, "threshold": -2.0})
    with SteeringHooks(model, adapter, always):
        first = run(model, adapter, prompts)
    with SteeringHooks(model, adapter, Steering.load(always.save(tmp_path / "q.safetensors"))):
        second = run(model, adapter, prompts)
    assert not torch.equal(plain[0], first[0])
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
