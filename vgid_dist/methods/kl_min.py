"""KL minimisation (KL_Min; Nguyen et al., 2020; VGID paper eq. 8): gradient ascent on the forget answers while
the student's next-token distributions on retain answers stay close to the frozen base model's.

    L = - NLL(y_f | x_f) + beta * KL(p_ref || p_theta) [retain answer tokens]

each term a sum over its answer tokens divided by the global count of those tokens. The retain rows
join the student forward (forget rows first), and the frozen model runs on the retain rows.
"""

from __future__ import annotations

from vgid_dist.config.method_params import KlMinParams
from vgid_dist.losses import kl_sum, token_mean
from vgid_dist.methods.base import LossOutput, Method, StepBatch


class KlMin(Method, name="kl_min", params=KlMinParams):
    def build_batch(self, primary, retain, epoch) -> StepBatch:
        retain_enc = self.encode_plain(retain)
        batch = self.forget_retain_batch(self.encode_plain(primary), retain_enc)
        # The frozen model needs the retain rows only.
        batch.inputs["retain"] = self.collator.pad(retain_enc)
        return batch

    def compute_loss(self, batch, student, frozen, counts) -> LossOutput:
        inputs = batch.inputs["student"]
        n_forget = batch.counts["forget_tokens"]
        logits = student.target_logits(inputs)
        ref_logits = frozen.target_logits(batch.inputs["retain"])
        forget_nll, _ = self.forget_retain_nll(batch, logits, counts)
        retain_kl = token_mean(kl_sum(ref_logits, logits[n_forget:]), counts["retain_tokens"])
        loss = -forget_nll + self.params.beta * retain_kl
        return LossOutput(loss, {"forget_nll": forget_nll.detach(), "retain_kl": retain_kl.detach()})
