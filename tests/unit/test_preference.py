"""NPO, DPO and RMU terms against values computed by hand, and their normalisation by a global count."""

from __future__ import annotations

import math

import pytest
import torch

from vgid_dist.losses import token_mean
from vgid_dist.losses.preference import dpo_sum, npo_sum, rmu_sum


def log_sigmoid(x: float) -> float:
    return -math.log(1.0 + math.exp(-x))


def test_npo_matches_hand_computed_value():
    policy = torch.tensor([-2.0, -5.0, -1.0])
    ref = torch.tensor([-1.0, -5.0, -3.0])
    beta = 0.5
    # log ratios -1, 0, 2: -(2 / beta) * log sigmoid(-beta * ratio), summed.
    expected = sum(-(2 / beta) * log_sigmoid(-beta * r) for r in (-1.0, 0.0, 2.0))
    assert npo_sum(policy, ref, beta).item() == pytest.approx(expected, rel=1e-6)


def test_npo_at_the_reference_is_2_log2_over_beta_per_sequence_and_pushes_likelihood_down():
    policy = torch.tensor([-3.0, -4.0], requires_grad=True)
    loss = npo_sum(policy, policy.detach().clone(), beta=0.1)
    assert loss.item() == pytest.approx(2 * (2 / 0.1) * math.log(2), rel=1e-6)
    loss.backward()
    # Minimising the loss lowers log p_theta(y|x): the gradient w.r.t. each log-prob is positive (1 at the ref).
    assert torch.allclose(policy.grad, torch.ones(2))


def test_dpo_matches_hand_computed_value():
    chosen, rejected = torch.tensor([-4.0, -6.0]), torch.tensor([-2.0, -1.0])
    ref_chosen, ref_rejected = torch.tensor([-5.0, -6.0]), torch.tensor([-2.0, -3.0])
    beta = 0.1
    # margins: (1 - 0) = 1 and (0 - 2) = -2
    expected = -log_sigmoid(beta * 1.0) - log_sigmoid(beta * -2.0)
    assert dpo_sum(chosen, rejected, ref_chosen, ref_rejected, beta).item() == pytest.approx(expected, rel=1e-6)


def test_reference_terms_get_no_gradient():
    ref = torch.tensor([-1.0, -2.0], requires_grad=True)
    npo_sum(torch.tensor([-1.5, -2.5], requires_grad=True), ref, 0.1).backward()
    assert ref.grad is None
    hidden, target = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    rmu_sum(hidden, target).backward()
    assert target.grad is None and hidden.grad is not None


def test_rmu_is_the_sum_of_squared_distances():
    hidden = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    target = torch.tensor([[0.0, 0.0], [3.0, 3.0]])
    assert rmu_sum(hidden, target).item() == pytest.approx((1 + 4) + (9 + 16))


def test_sequence_mean_does_not_depend_on_how_the_batch_is_split():
    torch.manual_seed(0)
    policy = torch.randn(6, requires_grad=True)
    ref = torch.randn(6)
    whole = token_mean(npo_sum(policy, ref, 0.2), 6)
    g_whole, = torch.autograd.grad(whole, policy)
    # Three "ranks" of two sequences, each dividing by the global count of 6.
    parts = sum(token_mean(npo_sum(policy[i:i + 2], ref[i:i + 2], 0.2), 6) for i in (0, 2, 4))
    g_parts, = torch.autograd.grad(parts, policy)
    assert parts.item() == pytest.approx(whole.item(), rel=1e-6)
    assert torch.allclose(g_parts, g_whole)


@pytest.mark.parametrize("call", [
    lambda: npo_sum(torch.zeros(2), torch.zeros(3), 0.1),
    lambda: npo_sum(torch.zeros(2), torch.zeros(2), 0.0),
    lambda: dpo_sum(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(3), 0.1),
    lambda: rmu_sum(torch.zeros(2, 3), torch.zeros(2, 4)),
])
def test_shape_and_parameter_errors_are_explained(call):
    with pytest.raises(ValueError, match="expected|beta"):
        call()
