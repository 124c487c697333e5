"""Gradient difference (GA_Diff; Liu et al., 2022; VGID paper eq. 7): gradient ascent on the forget answers,
gradient descent on the retain answers, in one student forward (forget rows first).

    L = - NLL(y_f | x_f) + lambda * NLL(y_r | x_r)

each NLL a sum over its answer tokens divided by the global count of those tokens.
"""

from __future__ import annotations

from vgid_dist.config.method_params import GaDiffParams
from vgid_dist.data.schema import Sample
from vgid_dist.methods.base import LossOutput, Method, StepBatch


class GaDiff(Method, name="ga_diff", params=GaDiffParams, needs_frozen=False):
    def build_batch(self, primary: list[Sample], retain: list[Sample], epoch: int) -> StepBatch:
        return self.forget_retain_batch(self.encode_plain(primary), self.encode_plain(retain))

    def compute_loss(self, batch, student, frozen, counts) -> LossOutput:
        forget_nll, retain_nll = self.forget_retain_nll(batch, student.target_logits(batch.inputs["student"]),
                                                        counts)
        loss = -forget_nll + self.params.retain_weight * retain_nll
        return LossOutput(loss, {"forget_nll": forget_nll.detach(), "retain_nll": retain_nll.detach()})
