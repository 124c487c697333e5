"""Gradient ascent (GA; Yao and Xu, 2024; VGID paper eq. 6): maximise the NLL of the forget answers.

    L = - NLL(y_f | x_f)    [sum over forget answer tokens / global count of forget answer tokens]

No retain term and no frozen model: the plainest negative-training baseline.
"""

from __future__ import annotations

from vgid_dist.config.method_params import GaParams
from vgid_dist.data.schema import Sample
from vgid_dist.methods.base import LossOutput, Method, StepBatch


class GradientAscent(Method, name="ga", params=GaParams, needs_frozen=False, uses_retain=False):
    def build_batch(self, primary: list[Sample], retain: list[Sample], epoch: int) -> StepBatch:
        return self.forget_retain_batch(self.encode_plain(primary), [])

    def compute_loss(self, batch, student, frozen, counts) -> LossOutput:
        forget_nll, _ = self.forget_retain_nll(batch, student.target_logits(batch.inputs["student"]), counts)
        return LossOutput(-forget_nll, {"forget_nll": forget_nll.detach()})
