"""Every baseline's loss on a toy batch against a value computed by hand (fake runners return fixed logits and
hidden states), plus the parts of each method users rely on: registry, parameters, refusals, teacher inputs of
the ablations, which parameters RMU trains."""

from __future__ import annotations

import math

import pytest
import torch

from vgid_dist.config import load_run_config
from vgid_dist.data.collate import Collator, ModelInputs
from vgid_dist.data.mllmu import MLLMUBench
from vgid_dist.errors import ConfigError
from vgid_dist.methods import REGISTRY, StepBatch, build_method, method_class
from vgid_dist.methods.ablations import IcuT, NoiseT
from vgid_dist.methods.po import with_refusal
from vgid_dist.models import load_adapter
from vgid_dist.prompts import INSTRUCTIONS

TABLE3 = ("ga", "ga_diff", "kl_min", "npo", "po", "idk", "rmu", "icu_t", "noise_t", "vgid", "icu")


# -- toy batches and fake runners -------------------------------------------------------------------------------

def toy_inputs(answer_lengths: list[int], targets: list[int]) -> ModelInputs:
    """Rows whose answer-target positions are 1..n (one prompt token first); nothing else matters to a loss."""
    rows, length = len(answer_lengths), max(answer_lengths) + 2
    mask = torch.zeros(rows, length, dtype=torch.bool)
    for i, n in enumerate(answer_lengths):
        mask[i, 1:1 + n] = True
    return ModelInputs(input_ids=torch.zeros(rows, length, dtype=torch.long),
                       attention_mask=torch.ones(rows, length, dtype=torch.long), target_mask=mask,
                       target_ids=torch.tensor(targets), targets_per_row=list(answer_lengths))


class FakeRunner:
    """Returns fixed tensors per input object; records the calls (a method must call each runner once)."""

    def __init__(self, logits: dict | None = None, hidden: dict | None = None):
        self.logits, self.hidden, self.calls = logits or {}, hidden or {}, []

    def target_logits(self, inputs):
        self.calls.append("target_logits")
        return self.logits[id(inputs)]

    def layer_hidden(self, inputs, layer):
        self.calls.append(("layer_hidden", layer))
        return self.hidden[id(inputs)]


def logp(row: list[float], target: int) -> float:
    return row[target] - math.log(sum(math.exp(v) for v in row))


def kl(p_row: list[float], q_row: list[float]) -> float:
    p = [math.exp(logp(p_row, i)) for i in range(len(p_row))]
    return sum(pi * (logp(p_row, i) - logp(q_row, i)) for i, pi in enumerate(p))


def method(name: str, seed: int = 0, **params):
    cls = method_class(name)
    return cls(cls.Params(**params), None, seed)


S = [[1.0, 0.0, -1.0], [0.5, 0.5, 0.0], [0.0, 2.0, 0.0], [-1.0, 0.0, 1.0], [0.3, -0.2, 0.1]]
R = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.5, -1.0], [0.2, 0.2, 0.2]]


# -- losses against hand-computed values ------------------------------------------------------------------------

def test_ga_is_minus_the_forget_nll_over_the_global_token_count():
    inputs = toy_inputs([2, 1], [0, 1, 2])
    batch = StepBatch({"student": inputs}, {"forget_tokens": 3, "retain_tokens": 0})
    out = method("ga").compute_loss(batch, FakeRunner({id(inputs): torch.tensor(S[:3])}), None,
                                    {"forget_tokens": 5, "retain_tokens": 0})  # 2 more tokens on another rank
    nll = -(logp(S[0], 0) + logp(S[1], 1) + logp(S[2], 2))
    assert out.loss.item() == pytest.approx(-nll / 5, rel=1e-6)
    assert out.terms["forget_nll"].item() == pytest.approx(nll / 5, rel=1e-6)


def test_ga_diff_adds_the_weighted_retain_nll():
    inputs = toy_inputs([2, 2], [0, 1, 2, 0])  # forget row, then retain row
    batch = StepBatch({"student": inputs}, {"forget_tokens": 2, "retain_tokens": 2})
    out = method("ga_diff", retain_weight=0.5).compute_loss(
        batch, FakeRunner({id(inputs): torch.tensor(S[:4])}), None, {"forget_tokens": 2, "retain_tokens": 4})
    forget = -(logp(S[0], 0) + logp(S[1], 1)) / 2
    retain = -(logp(S[2], 2) + logp(S[3], 0)) / 4
    assert out.loss.item() == pytest.approx(-forget + 0.5 * retain, rel=1e-6)


def test_kl_min_holds_retain_tokens_to_the_reference():
    student_in, retain_in = toy_inputs([1, 2], [0, 1, 2]), toy_inputs([2], [1, 2])
    batch = StepBatch({"student": student_in, "retain": retain_in}, {"forget_tokens": 1, "retain_tokens": 2})
    frozen = FakeRunner({id(retain_in): torch.tensor(R[1:3])})
    out = method("kl_min", beta=2.0).compute_loss(batch, FakeRunner({id(student_in): torch.tensor(S[:3])}), frozen,
                                                  {"forget_tokens": 1, "retain_tokens": 2})
    forget = -logp(S[0], 0)
    retain = (kl(R[1], S[1]) + kl(R[2], S[2])) / 2
    assert out.loss.item() == pytest.approx(-forget + 2.0 * retain, rel=1e-5)
    assert frozen.calls == ["target_logits"]


def test_npo_per_sequence_against_the_frozen_reference():
    inputs = toy_inputs([2, 1], [0, 1, 2])
    batch = StepBatch({"forget": inputs}, {"forget_seqs": 2, "forget_tokens": 3})
    out = method("npo", beta=0.5).compute_loss(batch, FakeRunner({id(inputs): torch.tensor(S[:3])}),
                                               FakeRunner({id(inputs): torch.tensor(R[:3])}),
                                               {"forget_seqs": 4, "forget_tokens": 6})
    policy = [logp(S[0], 0) + logp(S[1], 1), logp(S[2], 2)]
    ref = [logp(R[0], 0) + logp(R[1], 1), logp(R[2], 2)]
    expected = sum(-(2 / 0.5) * -math.log(1 + math.exp(0.5 * (p - r))) for p, r in zip(policy, ref)) / 4
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


def test_po_prefers_the_refusal_over_the_original_answer():
    inputs = toy_inputs([1, 2], [2, 0, 1])  # the refusal row (preferred), then the original answer (rejected)
    batch = StepBatch({"pairs": inputs}, {"forget_seqs": 1})
    out = method("po", beta=0.1).compute_loss(batch, FakeRunner({id(inputs): torch.tensor(S[:3])}),
                                              FakeRunner({id(inputs): torch.tensor(R[:3])}), {"forget_seqs": 2})
    chosen = logp(S[0], 2) - logp(R[0], 2)
    rejected = (logp(S[1], 0) + logp(S[2], 1)) - (logp(R[1], 0) + logp(R[2], 1))
    expected = math.log(1 + math.exp(-0.1 * (chosen - rejected))) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


def test_idk_fits_refusals_and_retain_answers():
    inputs = toy_inputs([1, 2], [2, 0, 1])
    batch = StepBatch({"student": inputs}, {"forget_tokens": 1, "retain_tokens": 2})
    out = method("idk", retain_weight=2.0).compute_loss(batch, FakeRunner({id(inputs): torch.tensor(S[:3])}), None,
                                                        {"forget_tokens": 1, "retain_tokens": 2})
    assert out.loss.item() == pytest.approx(-logp(S[0], 2) - 2.0 * (logp(S[1], 0) + logp(S[2], 1)) / 2, rel=1e-6)


def test_rmu_per_position_steers_forget_states_and_holds_retain_states(monkeypatch):
    inputs = toy_inputs([1, 1], [0, 0])  # scored position 1 of each row: forget row 0, retain row 1
    hidden = torch.zeros(2, 3, 2)
    hidden[0, 1] = torch.tensor([1.0, 1.0])
    hidden[1, 1] = torch.tensor([2.0, 0.0])
    ref = torch.zeros(2, 3, 2)
    ref[0, 1] = torch.tensor([3.0, 4.0])  # norm 5
    ref[1, 1] = torch.tensor([1.0, 1.0])
    rmu = method("rmu", variant="per_position", layer=1, gamma=10.0, **{"lambda": 2.0})
    assert not rmu.calibrates
    monkeypatch.setattr(rmu, "direction", lambda size, device: torch.tensor([0.0, 1.0]))
    student, frozen = FakeRunner(hidden={id(inputs): hidden}), FakeRunner(hidden={id(inputs): ref})
    out = rmu.compute_loss(StepBatch({"student": inputs}, {"forget_tokens": 1, "retain_tokens": 1}), student, frozen,
                           {"forget_tokens": 2, "retain_tokens": 1})
    forget = ((1 - 0) ** 2 + (1 - 2 * 5) ** 2) / 2  # target = lambda * ||h_ref|| * u = (0, 10)
    retain = ((2 - 1) ** 2 + (0 - 1) ** 2) / 1
    assert out.loss.item() == pytest.approx(forget + 10.0 * retain)
    assert student.calls == frozen.calls == [("layer_hidden", 1)]


def test_rmu_reference_setting_matches_the_reference_computation():
    """WMDP / Adaptive RMU: u uniform in [0, 1) then normalised; c = lambda x the frozen model's mean norm over
    the forget positions of the first step (both micro-batches); F.mse_loss on forget and retain states."""
    torch.manual_seed(0)
    hidden_size, seed, lam, gamma = 7, 11, 5.0, 3.0
    rmu = method("rmu", seed=seed, layer=2, gamma=gamma, **{"lambda": lam})
    assert rmu.params.variant == "reference" and rmu.params.trainable == "down_proj" and rmu.calibrates
    # Two micro-batches of the first step: rows = (forget, forget, retain), (forget, retain, retain).
    shapes = [([2, 3, 1], 2), ([1, 2, 2], 1)]
    batches, frozen_states, student_states = [], {}, {}
    for lengths, n_forget_rows in shapes:
        inputs = toy_inputs(lengths, [0] * sum(lengths))
        counts = {"forget_tokens": sum(lengths[:n_forget_rows]), "retain_tokens": sum(lengths[n_forget_rows:])}
        frozen_states[id(inputs)] = torch.randn(len(lengths), inputs.input_ids.shape[1], hidden_size) * 3
        student_states[id(inputs)] = torch.randn(len(lengths), inputs.input_ids.shape[1], hidden_size)
        batches.append(StepBatch({"student": inputs}, counts))
    frozen, student = FakeRunner(hidden=frozen_states), FakeRunner(hidden=student_states)
    totals = rmu.calibration_sums(batches, frozen)
    measured = rmu.calibrate(totals)  # one process: the local sums are the global ones

    def at_targets(states, batch):
        return states[id(batch.inputs["student"])][batch.inputs["student"].target_mask]

    ref_forget = torch.cat([at_targets(frozen_states, b)[:b.counts["forget_tokens"]] for b in batches])
    coeff = lam * ref_forget.norm(dim=-1).mean()
    assert measured["rmu_steering_coeff"] == pytest.approx(coeff.item(), rel=1e-6)
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(hidden_size, generator=g)
    u = u / u.norm()
    global_counts = {k: sum(b.counts[k] for b in batches) for k in ("forget_tokens", "retain_tokens")}
    loss = sum(rmu.compute_loss(b, student, frozen, global_counts).loss for b in batches)
    h = [at_targets(student_states, b) for b in batches]
    r = [at_targets(frozen_states, b) for b in batches]
    n = [b.counts["forget_tokens"] for b in batches]
    h_forget = torch.cat([x[:k] for x, k in zip(h, n)])
    h_retain, r_retain = torch.cat([x[k:] for x, k in zip(h, n)]), torch.cat([x[k:] for x, k in zip(r, n)])
    naive = (torch.nn.functional.mse_loss(h_forget, (coeff * u).expand_as(h_forget))
             + gamma * torch.nn.functional.mse_loss(h_retain, r_retain))
    assert loss.item() == pytest.approx(naive.item(), rel=1e-5)


def test_rmu_reference_coefficient_is_fixed_when_given_and_only_for_the_reference():
    rmu = method("rmu", steering_coeff=6.5)
    assert not rmu.calibrates and rmu.coefficient == 6.5
    with pytest.raises(ValueError, match="method.steering_coeff: only the reference variant"):
        method("rmu", variant="per_position", steering_coeff=6.5)


def test_rmu_directions_are_fixed_unit_vectors_of_the_seed():
    for variant in ("reference", "per_position"):
        u = method("rmu", seed=3, variant=variant).direction(64, torch.device("cpu"))
        assert u.norm().item() == pytest.approx(1.0, abs=1e-6)
        assert torch.equal(u, method("rmu", seed=3, variant=variant).direction(64, torch.device("cpu")))
        assert not torch.equal(u, method("rmu", seed=4, variant=variant).direction(64, torch.device("cpu")))
        assert bool((u >= 0).all()) == (variant == "reference")  # uniform in [0, 1) before normalising


def _toy_decoder(num_layers: int) -> torch.nn.Module:
    model = torch.nn.Module()
    model.embed = torch.nn.Embedding(4, 2)
    layers = []
    for _ in range(num_layers):
        layer = torch.nn.Module()
        layer.self_attn = torch.nn.Linear(2, 2)
        layer.mlp = torch.nn.Module()
        layer.mlp.up_proj, layer.mlp.down_proj = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
        layers.append(layer)
    model.layers = torch.nn.ModuleList(layers)
    model.head = torch.nn.Linear(2, 4)
    return model


def test_rmu_trains_only_the_down_projection_of_its_layer_and_the_two_before():
    for layer, trained in ((3, (1, 2, 3)), (1, (0, 1))):
        model = _toy_decoder(5)
        method("rmu", layer=layer).configure_trainable(model, model.layers)
        assert {n for n, p in model.named_parameters() if p.requires_grad} == {
            f"layers.{i}.mlp.down_proj.{k}" for i in trained for k in ("weight", "bias")}
    plain = torch.nn.Module()
    plain.layers = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(3))
    with pytest.raises(ConfigError, match="method.trainable: down_proj: .*no mlp.down_proj"):
        method("rmu", layer=1).configure_trainable(plain, plain.layers)


def test_rmu_up_to_layer_trains_the_layers_up_to_its_own():
    model = _toy_decoder(3)
    method("rmu", layer=1, trainable="up_to_layer").configure_trainable(model, model.layers)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"layers.{i}.{m}.{k}" for i in (0, 1) for m in ("self_attn", "mlp.up_proj", "mlp.down_proj")
                         for k in ("weight", "bias")}
    with pytest.raises(ValueError, match=r"method.layer: 3 .*it has 3"):
        method("rmu", layer=3).configure_trainable(model, model.layers)


# -- registry and parameters -------------------------------------------------------------------------------------

def test_every_table3_method_is_registered_and_unknown_names_list_them():
    assert set(TABLE3) <= set(REGISTRY)
    with pytest.raises(ConfigError, match="known methods: .*ga_diff.*kl_min.*noise_t"):
        load_run_config("tiny", ["method={name: gradient_ascent}"])


def test_method_parameters_are_validated_by_the_methods_own_model():
    cfg = load_run_config("tiny", ["method={name: rmu, lambda: 3, layer: 0}"])
    assert cfg.method.params().lambda_ == 3.0
    with pytest.raises(ConfigError, match="method.alpha: unknown key"):
        load_run_config("tiny", ["method={name: ga, alpha: 2}"])
    with pytest.raises(ConfigError, match="method.perturbation: icu_t shows the teacher the original image"):
        load_run_config("tiny", ["method={name: icu_t, perturbation: white}"])
    with pytest.raises(ConfigError, match="method.instruction_style: noise_t"):
        load_run_config("tiny", ["method={name: noise_t, instruction_style: polite}"])
    with pytest.raises(ConfigError, match="method.refusals"):
        load_run_config("tiny", ["method={name: po, refusals: []}"])


def test_icu_does_not_train():
    icu = method("icu")
    assert not icu.trains and icu.params.instruction_style == "strict"
    with pytest.raises(TypeError, match="does not train"):
        icu.build_batch([], [], 0)


# -- batches built from real samples --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def collator(tiny_llava):
    return Collator(load_adapter(tiny_llava), 256)


@pytest.fixture(scope="module")
def forget_samples(bench_dir):
    samples = MLLMUBench(bench_dir).train_samples("forget", 5)
    return [s for s in samples if s.image is not None][:3]


def test_refusals_are_a_seeded_choice_per_sample(forget_samples):
    refusals = ["no A", "no B", "no C", "no D", "no E"]
    first = [with_refusal(s, refusals, seed=1).answer for s in forget_samples]
    assert first == [with_refusal(s, refusals, seed=1).answer for s in forget_samples]
    assert all(a in refusals for a in first)
    assert {with_refusal(forget_samples[0], ["only this"], seed=s).answer for s in range(5)} == {"only this"}
    draws = {with_refusal(forget_samples[0], refusals, seed=s).answer for s in range(40)}
    assert len(draws) > 1, "the seed does not change the choice"


def test_po_batch_pairs_a_refusal_with_the_original_answer(collator, forget_samples):
    po = build_method(load_run_config("tiny", ["method={name: po, refusals: [I do not know them.]}"]).method,
                      collator, seed=0)
    batch = po.build_batch(forget_samples, [], epoch=0)
    pairs, n = batch.inputs["pairs"], len(forget_samples)
    assert batch.counts == {"forget_seqs": n} and pairs.input_ids.shape[0] == 2 * n
    tok = collator.adapter.tokenizer
    texts = [tok.decode(ids, skip_special_tokens=True).strip() for ids in torch.split(pairs.target_ids,
                                                                                     pairs.targets_per_row)]
    assert texts[:n] == ["I do not know them."] * n
    assert texts[n:] == [s.answer for s in forget_samples]


def test_ablation_teachers_switch_off_one_intervention(collator, forget_samples):
    sample = forget_samples[0]
    student = collator.encode(sample)
    pixels = student.image.tensors["pixel_values"]
    for cls, instruction, same_image in ((IcuT, True, True), (NoiseT, False, False)):
        m = cls(cls.Params(), collator, seed=0)
        teacher = m.teacher_encoding(sample, student, epoch=0)
        text = collator.adapter.tokenizer.decode(teacher.prompt_ids)
        assert (INSTRUCTIONS["strict"][:40] in text) == instruction, cls.name
        assert torch.equal(teacher.image.tensors["pixel_values"], pixels) == same_image, cls.name
        assert teacher.answer_ids == student.answer_ids
