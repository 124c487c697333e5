"""Token-level losses on gathered logits: pure functions of tensors, no model inside.

Every function returns a SUM over scored tokens; the one place a sum becomes a mean is ``token_mean``, which
divides by the global count of scored tokens (over all ranks and micro-batches of the optimiser step). So the
loss and its gradient do not depend on how a batch is split.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_sum(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Sum over rows of KL(softmax(teacher / T) || softmax(student / T)), full vocabulary.

    teacher_logits, student_logits: [T, V] (any float dtype; computed in fp32). Gradients flow to the student
    only. Returns an fp32 scalar.
    """
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} and student logits "
                         f"{tuple(student_logits.shape)} must have the same shape (aligned answer tokens)")
    t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    # kl_div(input=log q, target=log p, log_target) = sum p (log p - log q); p = 0 terms are exactly 0.
    return F.kl_div(s, t, reduction="sum", log_target=True)


def nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of -log p(target) over rows. logits [T, V], targets [T] long."""
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per row: logits [T, V], targets [T] -> [T] fp32."""
    return -F.cross_entropy(logits.float(), targets, reduction="none")


def sequence_logprobs(token_logp: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Sum of per-token log-probs per sequence: token_logp [T] split into len(counts) rows -> [B]."""
    if sum(counts) != token_logp.numel():
        raise ValueError(f"counts sum to {sum(counts)} but there are {token_logp.numel()} token log-probs")
    index = torch.repeat_interleave(torch.arange(len(counts), device=token_logp.device),
                                    torch.tensor(counts, device=token_logp.device))
    return torch.zeros(len(counts), device=token_logp.device, dtype=token_logp.dtype).index_add(0, index, token_logp)


def token_mean(total: torch.Tensor, global_count: int | float) -> torch.Tensor:
    """The one normalisation: a sum over scored tokens divided by the global number of scored tokens.

    ``global_count`` counts every rank and every micro-batch of the optimiser step; a step with no scored
    tokens contributes 0 (not NaN).
    """
    return total / max(float(global_count), 1.0)
