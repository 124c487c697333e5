"""Gradient ascent (GA; Yao and Xu, 2024; VGID paper eq. 6): maximise the NLL of the forget answers.

    L = - NLL(y_f | x_f)    [sum over forget answer tokens / global count of forget answer tokens]

No retain term and no frozen model: the plainest negative-training baseline. Its batch (forget rows, then
retain rows, in one student forward) is shared by the methods built on it: ``ga_diff`` and ``kl_min`` add a
retain term, ``idk`` swaps the forget answers for refusals, ``rmu`` scores hidden states instead of tokens.
"""

from __future__ import annotations

import torch

from vgid_dist.config.method_params import GaParams
from vgid_dist.data.collate import EncodedSample
from vgid_dist.data.schema import Sample
from vgid_dist.losses import nll_sum, token_mean
from vgid_dist.methods.base import LossOutput, Method, StepBatch


class GradientAscent(Method):
    name = "ga"
    Params = GaParams
    needs_frozen = False
    uses_retain = False

    def build_batch(self, primary: list[Sample], retain: list[Sample], epoch: int) -> StepBatch:
        return self.forget_retain_batch(self.encode_plain(primary), self.encode_plain(retain))

    def forget_retain_batch(self, forget: list[EncodedSample], retain_enc: list[EncodedSample]) -> StepBatch:
        # One student forward per micro-batch: forget rows first, then retain rows (none for GA), so the first
        # forget_tokens gathered rows are the forget answer tokens.
        return StepBatch(inputs={"student": self.collator.pad(forget + retain_enc)},
                         counts={"forget_tokens": self.count_tokens(forget),
                                 "retain_tokens": self.count_tokens(retain_enc)},
                         meta={"truncated": sum(e.truncated for e in forget + retain_enc)})

    def forget_nll(self, batch: StepBatch, logits: torch.Tensor, counts: dict) -> torch.Tensor:
        """Token-mean NLL of the forget answers, from the [T, V] student logits of ``build_batch``'s rows."""
        n_forget = batch.counts["forget_tokens"]
        targets = batch.inputs["student"].target_ids
        return token_mean(nll_sum(logits[:n_forget], targets[:n_forget]), counts["forget_tokens"])

    def compute_loss(self, batch, student, frozen, counts) -> LossOutput:
        logits = student.target_logits(batch.inputs["student"])
        forget_nll = self.forget_nll(batch, logits, counts)
        return LossOutput(-forget_nll, {"forget_nll": forget_nll.detach()})
