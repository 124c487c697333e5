"""VKD: its loss against a value computed by hand (fake runners return fixed hidden states), which parameters it
trains on the real model classes, and its batches (image positions scored, perturbed target image)."""

from __future__ import annotations

import pytest
import torch

from vgid_dist.config import load_run_config
from vgid_dist.data.collate import Collator, ModelInputs
from vgid_dist.data.mllmu import MLLMUBench
from vgid_dist.errors import ConfigError
from vgid_dist.losses.representation import representation_sum
from vgid_dist.methods import StepBatch, build_method, method_class
from vgid_dist.models import load_adapter


class LayerStates:
    """A runner returning fixed [B, L, H] states per layer; records the calls (one forward per runner)."""

    def __init__(self, states: dict[int, torch.Tensor]):
        self.states, self.calls = states, []

    def layers_hidden(self, inputs, layers):
        self.calls.append(("layers_hidden", tuple(layers)))
        return [self.states[layer] for layer in layers]


def vkd(**params):
    cls = method_class("vkd")
    return cls(cls.Params(**params), None, 0)


def image_inputs(mask_rows: list[list[bool]]) -> ModelInputs:
    mask = torch.tensor(mask_rows)
    return ModelInputs(input_ids=torch.zeros(mask.shape, dtype=torch.long),
                       attention_mask=torch.ones(mask.shape, dtype=torch.long), target_mask=mask,
                       target_ids=torch.zeros(int(mask.sum()), dtype=torch.long))


def test_representation_sum_by_hand():
    h = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    assert representation_sum(h, t, "mse").item() == pytest.approx((0 + 4) / 2 + (0 + 4) / 2)
    cos0 = 1 / 5 ** 0.5  # (1, 2) . (1, 0) / (sqrt 5 * 1)
    assert representation_sum(h, t, "cosine").item() == pytest.approx((1 - cos0) + (1 - (-1)))
    assert representation_sum(h[:0], t[:0]).item() == 0.0
    with pytest.raises(ValueError, match="same shape"):
        representation_sum(h, t[:1])


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_vkd_loss_matches_a_hand_computed_value(kind):
    # Row 0 (forget) has image tokens at positions 0 and 1; row 1 (retain) at position 1.
    inputs = image_inputs([[True, True, False], [False, True, False]])
    s = {0: torch.zeros(2, 3, 2), 1: torch.zeros(2, 3, 2)}
    t = {0: torch.zeros(2, 3, 2), 1: torch.zeros(2, 3, 2)}
    s[0][0, 0], t[0][0, 0] = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])   # forget token 1, layer 0
    s[0][0, 1], t[0][0, 1] = torch.tensor([2.0, 2.0]), torch.tensor([1.0, 1.0])   # forget token 2, layer 0
    s[0][1, 1], t[0][1, 1] = torch.tensor([1.0, 1.0]), torch.tensor([1.0, -1.0])  # retain token, layer 0
    s[1][0, 0], t[1][0, 0] = torch.tensor([3.0, 0.0]), torch.tensor([3.0, 0.0])
    s[1][0, 1], t[1][0, 1] = torch.tensor([0.0, 2.0]), torch.tensor([0.0, -2.0])
    s[1][1, 1], t[1][1, 1] = torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0])
    s[0][1, 2] = torch.tensor([9.0, 9.0])  # not an image position: never scored
    student, frozen = LayerStates(s), LayerStates(t)
    method = vkd(layers=[1, 0], loss=kind, alpha=2.0, beta=3.0)
    batch = StepBatch({"student": inputs, "teacher": inputs}, {"forget_image_tokens": 2, "retain_image_tokens": 1})
    # 2 more forget image tokens and 3 more retain image tokens on another rank
    out = method.compute_loss(batch, student, frozen, {"forget_image_tokens": 4, "retain_image_tokens": 4})
    if kind == "mse":
        forget_l0 = (1 + 1) / 2 + (1 + 1) / 2   # per token: mean over H of the squared error
        retain_l0 = (0 + 4) / 2
        forget_l1 = 0 + (0 + 16) / 2
        retain_l1 = (1 + 0) / 2
    else:
        forget_l0 = (1 - 0) + (1 - 1)
        retain_l0 = 1 - 0
        forget_l1 = 0 + (1 - (-1))
        retain_l1 = 1 - 1
    forget = (forget_l0 + forget_l1) / 2 / 4  # averaged over the 2 layers, divided by the global count
    retain = (retain_l0 + retain_l1) / 2 / 4
    assert out.loss.item() == pytest.approx(2.0 * forget + 3.0 * retain, rel=1e-6)
    assert out.terms["forget_repr"].item() == pytest.approx(forget, rel=1e-6)
    assert student.calls == frozen.calls == [("layers_hidden", (0, 1))]


def test_vkd_parameters_are_validated():
    cfg = load_run_config("tiny-vkd")
    assert cfg.method.params().layers == [0, 1] and cfg.method.params().trainable == "both"
    for bad, field in (("layers: []", "method.layers"), ("loss: kl", "method.loss"),
                       ("trainable: lm", "method.trainable")):
        with pytest.raises(ConfigError, match=field):
            load_run_config("tiny", [f"method={{name: vkd, {bad}}}"])


# -- on the real model classes ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llava_model(tiny_llava):
    adapter = load_adapter(tiny_llava)
    return adapter, adapter.load_model(torch.float32)


@pytest.mark.parametrize("part, expected", [("projector", {"multi_modal_projector"}),
                                            ("vision_tower", {"vision_tower"}),
                                            ("both", {"multi_modal_projector", "vision_tower"})])
def test_vkd_trains_only_the_visual_pathway(tiny_llava, part, expected):
    adapter = load_adapter(tiny_llava)
    model = adapter.load_model(torch.float32)
    layers = adapter.language_layers(model)
    vkd(layers=[0], trainable=part).configure_trainable(model, layers)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and {n.split(".")[1] for n in trainable} == expected, sorted(trainable)[:5]
    assert not any(p.requires_grad for p in layers.parameters())
    assert not model.lm_head.weight.requires_grad
    with pytest.raises(ConfigError, match=r"method.layers: 2 .*it has 2"):
        vkd(layers=[2]).configure_trainable(model, layers)


def test_vkd_finds_qwen_projector_inside_its_vision_tower(tiny_qwen):
    adapter = load_adapter(tiny_qwen)
    model = adapter.load_model(torch.float32)
    vkd(layers=[0], trainable="projector").configure_trainable(model, adapter.language_layers(model))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".visual.merger." in f".{n}" for n in trainable), sorted(trainable)[:5]
    model = adapter.load_model(torch.float32)
    vkd(layers=[0], trainable="vision_tower").configure_trainable(model, adapter.language_layers(model))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(".merger." in n for n in trainable)


def test_vkd_batch_scores_the_image_positions_against_the_perturbed_image(tiny_llava, bench_dir):
    adapter = load_adapter(tiny_llava)
    collator = Collator(adapter, 256)
    method = build_method(load_run_config("tiny-vkd").method, collator, seed=0)
    bench = MLLMUBench(bench_dir)
    forget = [s for s in bench.train_samples("forget", 5) if s.image is not None][:2]
    retain = [s for s in bench.train_samples("retain", 5) if s.image is not None][:1]
    batch = method.build_batch(forget, retain, epoch=0)
    student, target = batch.inputs["student"], batch.inputs["teacher"]
    per_image = adapter.num_image_tokens
    assert batch.counts == {"forget_image_tokens": 2 * per_image, "retain_image_tokens": per_image}
    assert torch.equal(student.input_ids, target.input_ids)
    assert (student.input_ids[student.target_mask] == adapter.image_token_id).all()
    pixels_s, pixels_t = student.pixel_inputs["pixel_values"], target.pixel_inputs["pixel_values"]
    assert not torch.equal(pixels_s[:2], pixels_t[:2]), "forget rows: the target sees the perturbed image"
    assert torch.equal(pixels_s[2:], pixels_t[2:]), "retain rows: the target sees the original image"
    again = method.build_batch(forget, retain, epoch=0).inputs["teacher"].pixel_inputs["pixel_values"]
    assert torch.equal(again, pixels_t), "the perturbation is a function of (seed, sample, epoch)"


def test_vkd_batch_on_qwen_keeps_the_image_grid(tiny_qwen, bench_dir):
    adapter = load_adapter(tiny_qwen)
    method = build_method(load_run_config("tiny-vkd", ["model.family=qwen2_5_vl"]).method, Collator(adapter, 256),
                          seed=0)
    forget = [s for s in MLLMUBench(bench_dir).train_samples("forget", 5) if s.image is not None][:2]
    batch = method.build_batch(forget, [], epoch=1)
    student, target = batch.inputs["student"], batch.inputs["teacher"]
    assert batch.counts["forget_image_tokens"] == int(student.target_mask.sum()) > 0
    assert torch.equal(student.pixel_inputs["image_grid_thw"], target.pixel_inputs["image_grid_thw"])
    assert not torch.equal(student.pixel_inputs["pixel_values"], target.pixel_inputs["pixel_values"])
