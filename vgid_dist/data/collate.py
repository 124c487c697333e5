"""From samples to padded model inputs, through a family adapter (prompt wrapping, image tokens, pixels).

The loss never pairs teacher and student tokens by absolute position: both sequences end with the same answer
token ids, and ``target_mask`` marks, in each, the positions whose next token is an answer token. Gathering
logits at ``target_mask`` (row-major) therefore yields the k-th answer token of every sample in the same order
for the student and for the (longer) teacher sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from PIL import Image

from vgid_dist.data.schema import Sample


@dataclass
class EncodedSample:
    prompt_ids: list[int]
    answer_ids: list[int]
    image: object | None = None  # models.base.EncodedImage
    truncated: int = 0  # answer tokens dropped to fit max_length


@dataclass
class ModelInputs:
    """One forward pass worth of inputs.

    input_ids, attention_mask: [B, L] (long). target_mask: [B, L] bool, True where the next token is an answer
    token. target_ids: [T] long, those answer tokens in row-major order (T = target_mask.sum()).
    pixel_inputs: the family's image tensors, concatenated over the rows that have an image.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    target_mask: torch.Tensor
    target_ids: torch.Tensor
    pixel_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    targets_per_row: list[int] = field(default_factory=list)

    @property
    def num_targets(self) -> int:
        return int(self.target_ids.numel())

    @property
    def has_images(self) -> bool:
        return bool(self.pixel_inputs)

    def to(self, device: torch.device | str, pixel_dtype: torch.dtype | None = None) -> ModelInputs:
        def move(t: torch.Tensor) -> torch.Tensor:
            if pixel_dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=pixel_dtype)
            return t.to(device)

        return replace(self, input_ids=self.input_ids.to(device), attention_mask=self.attention_mask.to(device),
                       target_mask=self.target_mask.to(device), target_ids=self.target_ids.to(device),
                       pixel_inputs={k: move(v) for k, v in self.pixel_inputs.items()})


def shared_suffix(student: EncodedSample, teacher: EncodedSample) -> tuple[EncodedSample, EncodedSample]:
    """Both rows re-split so that every position of their longest common token suffix is scored (the
    "all positions" KL of the authors' released code). Identical inputs share everything but the first token."""
    s_ids, t_ids = student.prompt_ids + student.answer_ids, teacher.prompt_ids + teacher.answer_ids
    k = 0
    while k < min(len(s_ids), len(t_ids)) - 1 and s_ids[-1 - k] == t_ids[-1 - k]:
        k += 1
    return (replace(student, prompt_ids=s_ids[:len(s_ids) - k], answer_ids=s_ids[len(s_ids) - k:]),
            replace(teacher, prompt_ids=t_ids[:len(t_ids) - k], answer_ids=t_ids[len(t_ids) - k:]))


class Collator:
    """Encodes samples for one adapter and pads them into ModelInputs.

    ``score_eos``: an answer ends with the token closing the turn (``</s>``, ``<|im_end|>``), which is then a
    scored target; false: the answer's own tokens only (the trainer passes ``data.score_eos``)."""

    def __init__(self, adapter, max_length: int, score_eos: bool = True):
        self.adapter = adapter
        self.max_length = max_length
        self.score_eos = score_eos

    def encode(self, sample: Sample, *, question: str | None = None, image: Image.Image | None | str = "sample",
               answer_ids: list[int] | None = None, template: str | None = None) -> EncodedSample:
        """Encode one sample; ``question``/``image`` replace the sample's (teacher inputs), ``answer_ids``
        fixes the answer tokens (the teacher reuses the student's, already truncated)."""
        if isinstance(image, str):  # "sample": the sample's own image (None when the pair is text-only)
            image = sample.image.load() if sample.image is not None else None
        template = template or sample.template
        prompt = self.adapter.render(question if question is not None else sample.question, image is not None,
                                     template)
        encoded_image = self.adapter.encode_image(image) if image is not None else None
        prompt_ids = self.adapter.tokenize_prompt(prompt, encoded_image)
        truncated = 0
        if answer_ids is None:
            answer_ids = self.adapter.answer_ids(prompt, sample.answer, close=self.score_eos)
            # max_length counts text tokens: the image's placeholder tokens are a fixed cost of the
            # family (576 for LLaVA-1.5), not part of the budget a recipe sets.
            image_tokens = encoded_image.num_tokens if encoded_image is not None else 0
            keep = max(0, self.max_length - (len(prompt_ids) - image_tokens))
            truncated = max(0, len(answer_ids) - keep)
            answer_ids = answer_ids[:keep]
        return EncodedSample(prompt_ids, list(answer_ids), encoded_image, truncated)

    def encode_prompt(self, text: str, image: Image.Image | None, template: str) -> EncodedSample:
        """A prompt with no answer (generation and scoring)."""
        prompt = self.adapter.render(text, image is not None, template)
        encoded_image = self.adapter.encode_image(image) if image is not None else None
        return EncodedSample(self.adapter.tokenize_prompt(prompt, encoded_image), [], encoded_image)

    def pad(self, rows: list[EncodedSample], side: str = "right") -> ModelInputs:
        pad_id = self.adapter.tokenizer.pad_token_id
        length = max(len(r.prompt_ids) + len(r.answer_ids) for r in rows)
        input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), length), dtype=torch.long)
        target_mask = torch.zeros((len(rows), length), dtype=torch.bool)
        targets: list[int] = []
        for i, r in enumerate(rows):
            seq = r.prompt_ids + r.answer_ids
            start = 0 if side == "right" else length - len(seq)
            input_ids[i, start:start + len(seq)] = torch.tensor(seq, dtype=torch.long)
            attention[i, start:start + len(seq)] = 1
            if r.answer_ids:
                first = start + len(r.prompt_ids) - 1  # this position predicts the first answer token
                target_mask[i, first:first + len(r.answer_ids)] = True
                targets.extend(r.answer_ids)
        images = [r.image for r in rows if r.image is not None]
        return ModelInputs(input_ids=input_ids, attention_mask=attention, target_mask=target_mask,
                           target_ids=torch.tensor(targets, dtype=torch.long),
                           pixel_inputs=self.adapter.concat_image_tensors(images),
                           targets_per_row=[len(r.answer_ids) for r in rows])
