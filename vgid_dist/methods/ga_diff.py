"""Gradient difference (GA_Diff; Liu et al., 2022; VGID paper eq. 7): gradient ascent on the forget answers,
gradient descent on the retain answers.

    L = - NLL(y_f | x_f) + lambda * NLL(y_r | x_r)

each NLL a sum over its answer tokens divided by the global count of those tokens. A diff from ``ga``: the
retain rows join the same student forward (forget rows first).
"""

from __future__ import annotations

from vgid_dist.config.method_params import GaDiffParams
from vgid_dist.losses import nll_sum, token_mean
from vgid_dist.methods.base import LossOutput
from vgid_dist.methods.ga import GradientAscent


class GaDiff(GradientAscent):
    name = "ga_diff"
    Params = GaDiffParams
    uses_retain = True

    def compute_loss(self, batch, student, frozen, counts) -> LossOutput:
        inputs = batch.inputs["student"]
        n_forget = batch.counts["forget_tokens"]
        logits = student.target_logits(inputs)
        forget_nll = self.forget_nll(batch, logits, counts)
        retain_nll = token_mean(nll_sum(logits[n_forget:], inputs.target_ids[n_forget:]), counts["retain_tokens"])
        loss = -forget_nll + self.params.retain_weight * retain_nll
        return LossOutput(loss, {"forget_nll": forget_nll.detach(), "retain_nll": retain_nll.detach()})
