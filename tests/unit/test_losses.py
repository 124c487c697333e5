"""Losses against hand-computed values, and the one normalisation's invariance to how a batch is split."""

from __future__ import annotations

import math

import torch

from vgid_dist.losses import kl_sum, nll_sum, sequence_logprobs, token_mean


def test_kl_matches_hand_computed_value():
    p = torch.tensor([[0.5, 0.25, 0.25]])
    q = torch.tensor([[0.25, 0.5, 0.25]])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.25 * math.log(0.25 / 0.5)
    got = kl_sum(p.log(), q.log())
    assert abs(got.item() - expected) < 1e-6


def test_kl_with_temperature_and_zero_probabilities():
    teacher = torch.tensor([[0.0, -1e9, 1.0]])  # p = (~0.27, 0, ~0.73)
    student = torch.tensor([[1.0, 0.0, 0.0]])
    got = kl_sum(teacher, student, temperature=2.0)
    pt = torch.softmax(teacher / 2.0, -1)
    ps = torch.softmax(student / 2.0, -1)
    mask = pt > 0
    expected = (pt[mask] * (pt[mask].log() - ps[mask].log())).sum()
    assert torch.isfinite(got) and abs(got.item() - expected.item()) < 1e-6


def test_kl_gradient_reaches_student_only():
    teacher = torch.randn(4, 7, requires_grad=True)
    student = torch.randn(4, 7, requires_grad=True)
    kl_sum(teacher, student).backward()
    assert teacher.grad is None and student.grad is not None


def test_nll_and_sequence_logprobs():
    logits = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.75], [0.9, 0.1]]))
    targets = torch.tensor([0, 1, 0])
    assert abs(nll_sum(logits, targets).item() - (-math.log(0.5) - math.log(0.75) - math.log(0.9))) < 1e-6
    seq = sequence_logprobs(torch.tensor([-1.0, -2.0, -3.0]), [2, 1])
    assert seq.tolist() == [-3.0, -3.0]


def test_token_mean_of_an_empty_step_is_zero():
    assert token_mean(torch.tensor(0.0), 0).item() == 0.0


def _grad_of_split(logits_t, logits_s_param, splits):
    """Accumulate gradients micro-batch by micro-batch, each normalised by the global count."""
    total = logits_t.shape[0]
    logits_s_param.grad = None
    start = 0
    for size in splits:
        part = slice(start, start + size)
        token_mean(kl_sum(logits_t[part], logits_s_param[part]), total).backward()
        start += size
    return logits_s_param.grad.clone()


def test_normalisation_does_not_depend_on_the_split():
    torch.manual_seed(0)
    teacher = torch.randn(6, 11)
    student = torch.randn(6, 11, requires_grad=True)
    one = _grad_of_split(teacher, student, [6])
    two = _grad_of_split(teacher, student, [3, 3])
    uneven = _grad_of_split(teacher, student, [1, 5])
    assert torch.allclose(one, two, atol=1e-7) and torch.allclose(one, uneven, atol=1e-7)
