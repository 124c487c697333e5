"""Negative preference optimisation (NPO; Zhang et al., 2024; VGID paper eq. 10): lower the likelihood of each
forget answer relative to the frozen base model, through a bounded (log-sigmoid) loss instead of GA's
unbounded one.

    L = -(2 / beta) * log sigmoid(-beta * log(p_theta(y|x) / p_ref(y|x)))    per forget sequence

averaged over the global number of forget sequences (``forget_seqs``); log p(y|x) sums the log-probs of the
sequence's answer tokens. The reference is the frozen base model (the same frozen engine VGID uses).
"""

from __future__ import annotations

from vgid_dist.config.method_params import NpoParams
from vgid_dist.data.schema import Sample
from vgid_dist.losses import token_mean
from vgid_dist.losses.preference import npo_sum
from vgid_dist.methods.base import LossOutput, Method, StepBatch


class Npo(Method, name="npo", params=NpoParams, uses_retain=False):
    def build_batch(self, primary: list[Sample], retain: list[Sample], epoch: int) -> StepBatch:
        forget = self.encode_plain(primary)
        return StepBatch(inputs={"forget": self.collator.pad(forget)},
                         counts={"forget_seqs": len(forget), "forget_tokens": self.count_tokens(forget)},
                         meta={"truncated": sum(e.truncated for e in forget)})

    def compute_loss(self, batch, student, frozen, counts) -> LossOutput:
        inputs = batch.inputs["forget"]
        policy = self.answer_logprobs(student, inputs)
        ref = self.answer_logprobs(frozen, inputs)
        loss = token_mean(npo_sum(policy, ref, self.params.beta), counts["forget_seqs"])
        # Mean log-ratio log p_theta / p_ref per sequence: how far the forget answers have been pushed down.
        log_ratio = token_mean((policy - ref).detach().sum(), counts["forget_seqs"])
        return LossOutput(loss, {"npo": loss.detach(), "log_ratio": log_ratio})
