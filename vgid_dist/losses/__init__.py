"""Losses: pure functions on tensors (no model, no DeepSpeed, no MLflow)."""

from vgid_dist.losses.fused_kl import fused_linear_kl
from vgid_dist.losses.kl import kl_sum, nll_sum, sequence_logprobs, token_logprobs, token_mean

__all__ = ["fused_linear_kl", "kl_sum", "nll_sum", "sequence_logprobs", "token_logprobs", "token_mean"]
