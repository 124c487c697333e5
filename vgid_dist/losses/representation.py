"""Distances between hidden states at matched positions (VKD's representation distillation).

Like the token losses, each function returns a SUM over positions; the caller divides it by the global number
of scored positions with ``token_mean``, so the result does not depend on how a batch is split.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

RepresentationLoss = Literal["mse", "cosine"]


def representation_sum(hidden: torch.Tensor, target: torch.Tensor, kind: RepresentationLoss = "mse") -> torch.Tensor:
    """Per-position distance between two sets of hidden states, summed over positions.

        mse:    sum_i mean_h (hidden_ih - target_ih)^2      (the squared error averaged over the hidden size,
                                                             so the scale does not grow with H)
        cosine: sum_i (1 - cos(hidden_i, target_i))

    hidden: [N, H] states of the trained model (differentiable, any float dtype).
    target: [N, H] where they should be (detached here). Returns an fp32 scalar; 0 when N = 0.
    """
    if hidden.dim() != 2 or hidden.shape != target.shape:
        raise ValueError(f"representation_sum: expected two [N, H] tensors of the same shape, got "
                         f"{tuple(hidden.shape)} and {tuple(target.shape)}")
    h, t = hidden.float(), target.detach().float()
    if kind == "mse":
        return (h - t).pow(2).mean(dim=-1).sum()
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(h, t, dim=-1, eps=1e-8)).sum()
    raise ValueError(f"representation_sum: unknown kind {kind!r}; expected 'mse' or 'cosine'")
