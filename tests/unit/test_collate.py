"""Teacher/student alignment: the k-th answer token of the teacher pairs with the k-th of the student."""

from __future__ import annotations

import pytest
import torch

from vgid_dist.config import MethodConfig
from vgid_dist.data import MLLMUBench
from vgid_dist.data.collate import Collator
from vgid_dist.methods import build_method
from vgid_dist.models import load_adapter


@pytest.fixture(params=["llava", "qwen"])
def adapter(request, tiny_llava, tiny_qwen):
    return load_adapter(tiny_llava if request.param == "llava" else tiny_qwen)


def test_teacher_and_student_answer_tokens_align(adapter, bench_dir):
    bench = MLLMUBench(bench_dir)
    forget = bench.train_samples("forget", 5)[:3]
    retain = bench.train_samples("retain", 5)[:2]
    method = build_method(MethodConfig(name="vgid"), Collator(adapter, 384), seed=0)
    batch = method.build_batch(forget, retain, epoch=0)
    student, teacher = batch.inputs["student"], batch.inputs["teacher"]
    assert teacher.input_ids.shape[1] > student.input_ids.shape[1]  # instruction prefix
    assert torch.equal(student.target_ids, teacher.target_ids)
    assert student.targets_per_row == teacher.targets_per_row
    for inputs in (student, teacher):
        # the token after each target position is exactly the next answer token
        rows, cols = inputs.target_mask.nonzero(as_tuple=True)
        assert torch.equal(inputs.input_ids[rows, cols + 1], inputs.target_ids)
    assert batch.counts["forget_tokens"] == sum(student.targets_per_row[:3])
    assert batch.counts["retain_tokens"] == sum(student.targets_per_row[3:])


def test_image_tokens_match_pixel_inputs(adapter, bench_dir):
    sample = MLLMUBench(bench_dir).train_samples("forget", 5)[0]
    enc = Collator(adapter, 384).encode(sample)
    assert enc.prompt_ids.count(adapter.image_token_id) == enc.image.num_tokens > 0


def test_truncation_keeps_prompt_and_counts_dropped_answer_tokens(adapter, bench_dir):
    sample = MLLMUBench(bench_dir).train_samples("forget", 5)[1]
    full = Collator(adapter, 10**6).encode(sample)
    assert full.image is not None and full.image.num_tokens > 0
    # max_length counts text tokens: the image's placeholder tokens are not part of it
    text_prompt = len(full.prompt_ids) - full.image.num_tokens
    short = Collator(adapter, text_prompt + 2).encode(sample)
    assert short.prompt_ids == full.prompt_ids and short.answer_ids == full.answer_ids[:2]
    assert short.truncated == len(full.answer_ids) - 2
    assert Collator(adapter, text_prompt).encode(sample).answer_ids == []


def test_left_padding_for_generation(adapter):
    collator = Collator(adapter, 384)
    rows = [collator.encode_prompt("Hi", None, "generation"), collator.encode_prompt("A longer question?", None,
                                                                                     "generation")]
    inputs = collator.pad(rows, side="left")
    assert inputs.attention_mask[:, -1].all() and not inputs.attention_mask[0, 0]
    assert inputs.num_targets == 0


def test_shared_suffix_scores_every_common_position():
    from vgid_dist.data.collate import EncodedSample, shared_suffix

    student = EncodedSample([1, 5, 6, 7, 8], [9, 2])
    teacher = EncodedSample([1, 4, 4, 5, 6, 7, 8], [9, 2])
    s, t = shared_suffix(student, teacher)
    assert s.answer_ids == t.answer_ids == [5, 6, 7, 8, 9, 2]
    assert s.prompt_ids == [1] and t.prompt_ids == [1, 4, 4]
    same, _ = shared_suffix(student, student)
    assert same.prompt_ids == [1] and len(same.answer_ids) == 6


def test_the_end_of_sequence_token_is_not_a_target_by_default(adapter, bench_dir, monkeypatch):
    """As the reference training code: the answer's own tokens are scored, not the token closing the turn
    (data.score_eos: false, what the trainer's collator gets); score_eos: true adds exactly that token."""
    from vgid_dist.config import load_run_config
    from vgid_dist.engine import trainer as trainer_module

    sample = MLLMUBench(bench_dir).train_samples("forget", 5)[0]
    closing = adapter.tokenizer(adapter.answer_suffix(), add_special_tokens=False).input_ids
    with_eos = Collator(adapter, 384, score_eos=True).encode(sample)
    without = Collator(adapter, 384, score_eos=False).encode(sample)
    assert with_eos.answer_ids[-len(closing):] == closing
    assert without.answer_ids == with_eos.answer_ids[:-len(closing)] and without.answer_ids
    assert without.prompt_ids == with_eos.prompt_ids
    inputs = Collator(adapter, 384, score_eos=False).pad([without])
    assert closing[-1] not in inputs.target_ids.tolist() and inputs.num_targets == len(without.answer_ids)

    cfg = load_run_config("tiny")
    assert cfg.data.score_eos is False and load_run_config("tiny-vanilla").data.score_eos is True
    built = []
    monkeypatch.setattr(trainer_module, "Collator", lambda *a, **k: built.append((a, k)) or None)
    monkeypatch.setattr(trainer_module, "load_adapter", lambda *a: adapter)
    monkeypatch.setattr(trainer_module, "check_model_weights", lambda path: path)  # @tiny/ is not built here
    monkeypatch.setattr(trainer_module, "build_method", lambda *a: (_ for _ in ()).throw(RuntimeError("stop")))
    trainer = trainer_module.Trainer(cfg.model_copy(update={"output_dir": str(bench_dir / "unused")}))
    try:
        with pytest.raises(RuntimeError, match="stop"):
            trainer.setup()
    finally:
        trainer.close()  # the output folder's lock
    assert built == [((adapter, cfg.data.max_length), {"score_eos": False})]
