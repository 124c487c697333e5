"""Supervised fine-tuning (NLL on answer tokens): builds the vanilla model from ``ft_Data``, and serves the
relearning attack (fine-tuning an unlearned model on some forget profiles' pairs, ``eval.relearn``)."""

from __future__ import annotations

from vgid_dist.config.method_params import FinetuneParams
from vgid_dist.data.schema import Sample
from vgid_dist.losses import nll_sum, token_mean
from vgid_dist.methods.base import LossOutput, Method, StepBatch


class Finetune(Method, name="finetune", params=FinetuneParams, needs_frozen=False, uses_retain=False):
    def training_samples(self, data_cfg) -> tuple[list[Sample], list[Sample]]:
        from vgid_dist.data import MLLMUBench, load_unlearning_data

        if self.params.source == "ft_data":
            samples = MLLMUBench(data_cfg.root, data_cfg.train_root).finetune_samples()
        else:
            forget, retain = load_unlearning_data(data_cfg)
            samples = forget if self.params.source == "forget" else retain
        if self.params.profiles is not None:
            wanted = set(self.params.profiles)
            samples = [s for s in samples if s.profile_id in wanted]
        return samples, []

    def build_batch(self, primary, retain, epoch) -> StepBatch:
        encoded = self.encode_plain(primary)
        return StepBatch(inputs={"student": self.collator.pad(encoded)},
                         counts={"primary_tokens": self.count_tokens(encoded)},
                         meta={"truncated": sum(e.truncated for e in encoded)})

    def compute_loss(self, batch, student, frozen, counts) -> LossOutput:
        inputs = batch.inputs["student"]
        nll = token_mean(nll_sum(student.target_logits(inputs), inputs.target_ids), counts["primary_tokens"])
        return LossOutput(nll, {"nll": nll.detach()})
