"""Losses: pure functions on tensors (no model, no DeepSpeed, no MLflow)."""

from vgid_dist.losses.kl import kl_sum, nll_sum, sequence_logprobs, token_logprobs, token_mean

__all__ = ["kl_sum", "nll_sum", "sequence_logprobs", "token_logprobs", "token_mean"]
