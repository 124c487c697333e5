"""VGID: Visual-Noise Guided In-Context Distillation (paper sec. 3.4, Algorithm 1).

Teacher = the frozen base model shown the perturbed image and the unlearning instruction before the question;
the student, shown the original input, is pulled toward it with forward KL on every answer token of the forget
sample. On retain samples the student is held to the base model on the same input:

    L = alpha * KL(pi_T || pi_theta) [forget answer tokens] + beta * KL(pi_theta0 || pi_theta) [retain tokens]

each term a sum over its answer tokens divided by the global count of those tokens.
"""

from __future__ import annotations

from vgid_dist.config.method_params import VgidParams
from vgid_dist.data.collate import shared_suffix
from vgid_dist.data.schema import Sample
from vgid_dist.losses import kl_sum, token_mean
from vgid_dist.methods.base import LossOutput, Method, StepBatch
from vgid_dist.perturb import noise_rng, perturb_image
from vgid_dist.prompts import with_instruction


class Vgid(Method, name="vgid", params=VgidParams):
    # The two interventions; the ICU-T and Noise-T ablations switch one off.
    use_instruction = True
    use_perturbation = True

    def teacher_encoding(self, sample: Sample, student_enc, epoch: int):
        p = self.params
        question = with_instruction(sample.question, p.instruction_style) if self.use_instruction else sample.question
        image = sample.image.load() if sample.image is not None else None
        if image is not None and self.use_perturbation:
            image = perturb_image(image, p.perturbation, sigma=p.sigma,
                                  rng=noise_rng(self.seed, sample.sample_id, epoch),
                                  view=self.collator.adapter.processor_input)
        return self.collator.encode(sample, question=question, image=image, answer_ids=student_enc.answer_ids)

    def build_batch(self, primary: list[Sample], retain: list[Sample], epoch: int) -> StepBatch:
        forget_student = self.encode_plain(primary)
        forget_teacher = [self.teacher_encoding(s, e, epoch) for s, e in zip(primary, forget_student)]
        retain_enc = self.encode_plain(retain)
        if self.params.kl_positions == "all":
            forget_student, forget_teacher = zip(*(shared_suffix(s, t) for s, t in zip(forget_student, forget_teacher)))
            forget_student, forget_teacher = list(forget_student), list(forget_teacher)
            retain_enc = [shared_suffix(r, r)[0] for r in retain_enc]
        # One student forward and one frozen forward per micro-batch: forget rows first, then retain rows,
        # so the first forget_tokens gathered rows are forget answer tokens in both.
        return StepBatch(
            inputs={"student": self.collator.pad(forget_student + retain_enc),
                    "teacher": self.collator.pad(forget_teacher + retain_enc)},
            counts={"forget_tokens": self.count_tokens(forget_student), "retain_tokens": self.count_tokens(retain_enc)},
            meta={"truncated": sum(e.truncated for e in forget_student + retain_enc)})

    def compute_loss(self, batch, student, frozen, counts) -> LossOutput:
        p = self.params
        n_forget = batch.counts["forget_tokens"]
        if p.fused_kl:
            h_student = student.target_hidden(batch.inputs["student"])
            h_teacher = frozen.target_hidden(batch.inputs["teacher"])
            forget_sum = student.fused_kl_sum(h_student[:n_forget], h_teacher[:n_forget], frozen, p.temperature)
            retain_sum = student.fused_kl_sum(h_student[n_forget:], h_teacher[n_forget:], frozen, p.temperature)
        else:
            student_logits = student.target_logits(batch.inputs["student"])
            teacher_logits = frozen.target_logits(batch.inputs["teacher"])
            forget_sum = kl_sum(teacher_logits[:n_forget], student_logits[:n_forget], p.temperature)
            retain_sum = kl_sum(teacher_logits[n_forget:], student_logits[n_forget:], p.temperature)
        forget_kl = token_mean(forget_sum, counts["forget_tokens"])
        retain_kl = token_mean(retain_sum, counts["retain_tokens"])
        loss = p.alpha * forget_kl + p.beta * retain_kl
        return LossOutput(loss, {"forget_kl": forget_kl.detach(), "retain_kl": retain_kl.detach()})
