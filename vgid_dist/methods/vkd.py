"""VKD: unlearning by visual knowledge distillation (Wang et al., 2025, "MLLM Machine Unlearning via Visual
Knowledge Distillation"; only the abstract is public, the readings below are ours).

Only the visual pathway trains (vision tower and/or projector, ``trainable``); the language model is frozen, so
its text knowledge stays bit-identical. The supervision is intermediate: at decoder layer(s) ``layers`` of the
language model, at the image-token positions, the student's hidden states are pulled toward the frozen model's
hidden states of an erased target on forget images, and held at the frozen model's own on retain images:

    L = alpha * D(h_theta^l(v_f, t_f), h_0^l(P(v_f), t_f))  [forget image positions]
      + beta  * D(h_theta^l(v_r, t_r), h_0^l(v_r, t_r))     [retain image positions]

averaged over the chosen layers l. Readings where the abstract is silent:
- Erased target: the frozen model's representation of the perturbed image P(v_f) (VGID's perturbations,
  ``perturbation``/``sigma``; random noise by default): what the model "sees" when the face carries no identity.
- Positions: the image tokens only. With causal attention their states depend on the text before the image and
  the image alone, so the prompt is encoded without the answer (the answer cannot change them). P keeps the
  image size, so student and target have the same image tokens at the same positions.
- D: ``mse`` (squared error averaged over the hidden size) or ``cosine`` (1 - cosine similarity), per token;
  each term is a sum over its image tokens divided by the global count of those tokens (``forget_image_tokens``,
  ``retain_image_tokens``), the normalisation every method uses.
- Samples: the image-bearing training pairs; text-only pairs carry no visual knowledge and are left out.

Batches: ``target_mask`` of a VKD batch marks the image positions (its scored positions; ``target_ids`` are the
image token ids there). Student and frozen forward once per micro-batch each: forget rows first, then retain.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from vgid_dist.config.method_params import VkdParams
from vgid_dist.data.schema import Sample
from vgid_dist.errors import ConfigError
from vgid_dist.losses import token_mean
from vgid_dist.losses.representation import representation_sum
from vgid_dist.methods.base import LossOutput, Method, StepBatch
from vgid_dist.perturb import noise_rng, perturb_image

# Module names of the visual pathway, as they appear at the end of module paths (LLaVA, Qwen2.5-VL).
PROJECTOR_NAMES = ("multi_modal_projector", "visual.merger")
VISION_TOWER_NAMES = ("vision_tower", "visual")


def visual_parameters(model: torch.nn.Module, part: str) -> set[int]:
    """ids of the parameters of the visual pathway's ``part`` (projector, vision_tower, both).

    The vision tower of Qwen2.5-VL (``visual``) holds its projector (``visual.merger``): the tower's parameters
    are taken as the module's minus the projector's."""
    def matching(names: tuple[str, ...]) -> set[int]:
        found: set[int] = set()
        for path, module in model.named_modules():
            if any(path == n or path.endswith("." + n) for n in names):
                found |= {id(q) for q in module.parameters()}
        return found

    projector = matching(PROJECTOR_NAMES)
    tower = matching(VISION_TOWER_NAMES) - projector
    chosen = {"projector": projector, "vision_tower": tower, "both": projector | tower}[part]
    if not chosen:
        raise ConfigError(f"method.trainable: {part!r} names no module of this model (looked for modules named "
                          f"{', '.join(PROJECTOR_NAMES + VISION_TOWER_NAMES)})")
    return chosen


class Vkd(Method, name="vkd", params=VkdParams):
    def training_samples(self, data_cfg) -> tuple[list[Sample], list[Sample]]:
        forget, retain = super().training_samples(data_cfg)
        return [s for s in forget if s.image is not None], [s for s in retain if s.image is not None]

    def configure_trainable(self, model: torch.nn.Module, layers: torch.nn.ModuleList) -> None:
        p = self.params
        if max(p.layers) >= len(layers):
            raise ConfigError(f"method.layers: {max(p.layers)} is not a decoder layer of this model (it has "
                              f"{len(layers)}: 0..{len(layers) - 1})")
        keep = visual_parameters(model, p.trainable)
        for q in model.parameters():
            if id(q) not in keep:
                q.requires_grad_(False)
        if not any(q.requires_grad for q in model.parameters()):
            raise ConfigError(f"method.trainable: no parameter of the {p.trainable} is trainable (model.lora "
                              "trains adapters of the language model only; vkd trains the visual pathway: remove "
                              "model.lora)")

    # -- batches --------------------------------------------------------------------------------------------------
    def encode_image_prompt(self, sample: Sample, image=None):
        """The prompt alone (no answer: image-position states do not depend on it), with ``image`` if given."""
        return self.collator.encode(sample, image="sample" if image is None else image, answer_ids=[])

    def perturbed_image(self, sample: Sample, epoch: int):
        p = self.params
        return perturb_image(sample.image.load(), p.perturbation, sigma=p.sigma,
                             rng=noise_rng(self.seed, sample.sample_id, epoch),
                             view=self.collator.adapter.processor_input)

    def image_positions(self, inputs):
        """``inputs`` with ``target_mask`` = the image-token positions ([B, L] bool) and ``target_ids`` the
        image token ids there ([T])."""
        mask = (inputs.input_ids == self.collator.adapter.image_token_id) & inputs.attention_mask.bool()
        return replace(inputs, target_mask=mask, target_ids=inputs.input_ids[mask],
                       targets_per_row=mask.sum(dim=1).tolist())

    def build_batch(self, primary: list[Sample], retain: list[Sample], epoch: int) -> StepBatch:
        forget_student = [self.encode_image_prompt(s) for s in primary]
        forget_target = [self.encode_image_prompt(s, self.perturbed_image(s, epoch)) for s in primary]
        retain_rows = [self.encode_image_prompt(s) for s in retain]
        student = self.image_positions(self.collator.pad(forget_student + retain_rows))
        target = self.image_positions(self.collator.pad(forget_target + retain_rows))
        if not torch.equal(student.target_mask, target.target_mask):
            raise ValueError("vkd: the perturbed image was encoded into other image positions than the original "
                             "(the perturbation must keep the image size)")
        n_forget_rows = len(primary)
        forget_tokens = int(student.target_mask[:n_forget_rows].sum())
        return StepBatch(inputs={"student": student, "teacher": target},
                         counts={"forget_image_tokens": forget_tokens,
                                 "retain_image_tokens": int(student.target_mask.sum()) - forget_tokens},
                         meta={"truncated": 0})

    # -- loss -----------------------------------------------------------------------------------------------------
    def compute_loss(self, batch, student, frozen, counts) -> LossOutput:
        p = self.params
        student_inputs, target_inputs = batch.inputs["student"], batch.inputs["teacher"]
        n_forget = batch.counts["forget_image_tokens"]
        # One forward each, every chosen layer read from it: [B, L, H] per layer -> [T, H] at the image
        # positions (row-major: forget rows' tokens first).
        student_states = student.layers_hidden(student_inputs, p.layers)
        target_states = frozen.layers_hidden(target_inputs, p.layers)
        forget_sum = retain_sum = 0.0
        for h, t in zip(student_states, target_states):
            h, t = h[student_inputs.target_mask], t[target_inputs.target_mask]
            forget_sum = forget_sum + representation_sum(h[:n_forget], t[:n_forget], p.loss)
            retain_sum = retain_sum + representation_sum(h[n_forget:], t[n_forget:], p.loss)
        forget = token_mean(forget_sum / len(p.layers), counts["forget_image_tokens"])
        retain = token_mean(retain_sum / len(p.layers), counts["retain_image_tokens"])
        loss = p.alpha * forget + p.beta * retain
        return LossOutput(loss, {"forget_repr": forget.detach(), "retain_repr": retain.detach()})
