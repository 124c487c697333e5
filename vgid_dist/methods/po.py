"""Refusal-based baselines: ``po`` (preference optimisation, VGID paper eq. 9) and ``idk`` (supervised refusals).

``po``: DPO (Rafailov et al., 2023) on pairs built from each forget sample, a refusal as the preferred answer y+
and the original answer as the rejected one y-, against the frozen base model as reference:

    L = -log sigmoid(beta * [log p_theta(y+|x)/p_ref(y+|x) - log p_theta(y-|x)/p_ref(y-|x)])    per pair

averaged over the global number of forget pairs (``forget_seqs``).

``idk``: what TOFU and some released MLLMU-Bench code call PO: plain NLL on the refusal answers of the forget
prompts, plus the retain NLL (no reference model):

    L = NLL(refusal | x_f) + retain_weight * NLL(y_r | x_r)    each over its global answer-token count

Each forget sample's refusal is drawn from ``refusals`` with a generator seeded by (run seed, sample id), so it
is the same on every rank, in every epoch and in every run with that seed.
"""

from __future__ import annotations

import dataclasses

from vgid_dist.config.method_params import IdkParams, PoParams
from vgid_dist.data.schema import Sample
from vgid_dist.losses import token_mean
from vgid_dist.losses.preference import dpo_sum
from vgid_dist.methods.base import LossOutput, Method, StepBatch
from vgid_dist.perturb import noise_rng


def with_refusal(sample: Sample, refusals: list[str], seed: int) -> Sample:
    """The forget sample with its answer replaced by its seeded choice of refusal."""
    choice = int(noise_rng(seed, "refusal", sample.sample_id).integers(len(refusals)))
    return dataclasses.replace(sample, answer=refusals[choice])


class Po(Method, name="po", params=PoParams, uses_retain=False):
    def build_batch(self, primary: list[Sample], retain: list[Sample], epoch: int) -> StepBatch:
        rejected = self.encode_plain(primary)
        chosen = [self.collator.encode(with_refusal(s, self.params.refusals, self.seed)) for s in primary]
        # One forward per model per micro-batch: the B preferred rows, then the B rejected rows.
        return StepBatch(inputs={"pairs": self.collator.pad(chosen + rejected)},
                         counts={"forget_seqs": len(primary)},
                         meta={"truncated": sum(e.truncated for e in chosen + rejected)})

    def compute_loss(self, batch, student, frozen, counts) -> LossOutput:
        inputs = batch.inputs["pairs"]
        n = batch.counts["forget_seqs"]
        policy = self.answer_logprobs(student, inputs)
        ref = self.answer_logprobs(frozen, inputs)
        loss = token_mean(dpo_sum(policy[:n], policy[n:], ref[:n], ref[n:], self.params.beta), counts["forget_seqs"])
        # Mean log-ratio of the original (rejected) answers: how far the forget answers have been pushed down.
        rejected_ratio = token_mean((policy[n:] - ref[n:]).detach().sum(), counts["forget_seqs"])
        return LossOutput(loss, {"dpo": loss.detach(), "rejected_log_ratio": rejected_ratio})


class Idk(Method, name="idk", params=IdkParams, needs_frozen=False):
    def build_batch(self, primary: list[Sample], retain: list[Sample], epoch: int) -> StepBatch:
        refusals = [self.collator.encode(with_refusal(s, self.params.refusals, self.seed)) for s in primary]
        return self.forget_retain_batch(refusals, self.encode_plain(retain))

    def compute_loss(self, batch, student, frozen, counts) -> LossOutput:
        refusal_nll, retain_nll = self.forget_retain_nll(batch, student.target_logits(batch.inputs["student"]),
                                                         counts)
        loss = refusal_nll + self.params.retain_weight * retain_nll
        return LossOutput(loss, {"refusal_nll": refusal_nll.detach(), "retain_nll": retain_nll.detach()})
