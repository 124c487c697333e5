"""Sequence-level preference terms (NPO, DPO): pure functions of per-sequence log-probabilities.

Inputs are log p(y | x) summed over each sequence's answer tokens (``losses.sequence_logprobs``), [B] fp32, one
entry per sequence; the frozen reference's values carry no gradient. Like the token losses, each function
returns a SUM over sequences; the caller divides it by the global number of sequences with ``token_mean``, so
the result does not depend on how a batch is split across ranks or micro-batches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(name: str, a: torch.Tensor, ref: torch.Tensor) -> None:
    if a.dim() != 1 or a.shape != ref.shape:
        raise ValueError(f"{name}: expected two [B] tensors of per-sequence log-probs of the same shape, got "
                         f"{tuple(a.shape)} and {tuple(ref.shape)}")


def npo_sum(policy_logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative preference optimisation (Zhang et al., 2024; VGID paper eq. 10), summed over sequences:

        sum_i  -(2 / beta) * log sigmoid(-beta * (log p_theta(y_i|x_i) - log p_ref(y_i|x_i)))

    The 2/beta factor is NPO's own (it makes the gradient tend to gradient ascent's as beta -> 0); eq. 10 of
    the VGID paper omits it, which only rescales the loss.

    policy_logp: [B] sequence log-probs under the trained model (differentiable).
    ref_logp: [B] the same under the frozen reference (detached here). Returns an fp32 scalar.
    """
    _check("npo_sum", policy_logp, ref_logp)
    if not beta > 0:
        raise ValueError(f"npo_sum: beta must be > 0, got {beta}")
    log_ratio = policy_logp.float() - ref_logp.detach().float()
    return (-2.0 / beta) * F.logsigmoid(-beta * log_ratio).sum()


def dpo_sum(chosen_logp: torch.Tensor, rejected_logp: torch.Tensor, ref_chosen_logp: torch.Tensor,
            ref_rejected_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Direct preference optimisation (Rafailov et al., 2023; VGID paper eq. 9), summed over pairs:

        sum_i  -log sigmoid(beta * [(log p_theta(y+_i) - log p_ref(y+_i)) - (log p_theta(y-_i) - log p_ref(y-_i))])

    chosen_logp, rejected_logp: [B] sequence log-probs of the preferred / rejected answers under the trained
    model. ref_chosen_logp, ref_rejected_logp: [B] the same under the frozen reference (detached here).
    Returns an fp32 scalar.
    """
    _check("dpo_sum (chosen)", chosen_logp, ref_chosen_logp)
    _check("dpo_sum (rejected)", rejected_logp, ref_rejected_logp)
    _check("dpo_sum (pairs)", chosen_logp, rejected_logp)
    if not beta > 0:
        raise ValueError(f"dpo_sum: beta must be > 0, got {beta}")
    margin = ((chosen_logp.float() - ref_chosen_logp.detach().float())
              - (rejected_logp.float() - ref_rejected_logp.detach().float()))
    return -F.logsigmoid(beta * margin).sum()


def rmu_sum(hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Representation misdirection (RMU; VGID paper eqs. 13-14), summed over positions:

        sum_i || h_i - target_i ||_2^2

    hidden: [N, H] hidden states of the trained model at the scored positions (differentiable).
    target: [N, H] where they should be: lambda * ||h_ref,i|| * u for forget positions, h_ref,i for retain
    positions (detached here). Returns an fp32 scalar.
    """
    if hidden.dim() != 2 or hidden.shape != target.shape:
        raise ValueError(f"rmu_sum: expected two [N, H] tensors of the same shape, got {tuple(hidden.shape)} and "
                         f"{tuple(target.shape)}")
    return (hidden.float() - target.detach().float()).pow(2).sum()
