"""The prompt of one evaluation question and its encoding: solved examples, the scored turn, every image shown.

Examples (``eval.examples``) are rendered per family. LLaVA gets the official evaluator's strings, spacing
included: classification ``USER: <image>\\nQuestion: ...\\nA: ...\\nD: ...\\nCorrect Answer: X\\n`` (``USER:\\n``
for Pure_Text), cloze ``USER:<image>\\n<question with [Blank] and its instruction>\\nCorrect Answer: ...\\n``,
all of them before the question's own ``USER: ... ASSISTANT:`` turn, with one image per Image_Textual example
in front of the question's own. The official evaluator has no chat-template family: Qwen2.5-VL gets each
example as a finished exchange (a user turn with the example's task body, an assistant turn holding the answer)
rendered by the model's chat template, then the question's turn.
"""

from __future__ import annotations

import torch

from vgid_dist.data.collate import EncodedSample
from vgid_dist.data.schema import ImageRef
from vgid_dist.errors import DataError
from vgid_dist.eval.examples import Shot
from vgid_dist.models.base import EncodedImage
from vgid_dist.prompts import cloze_body, task_body

# ---- rendering ------------------------------------------------------------------------------------------------

def _llava_shot(shot: Shot, image_token: str) -> str:
    """The official evaluator's example turn (its spacing kept: ``USER: <image>`` for classification,
    ``USER:<image>`` for cloze)."""
    if shot.task == "classification":
        options = "".join(f"{k}: {v}\n" for k, v in (shot.options or {}).items())
        head = f"USER: {image_token}\n" if shot.image is not None else "USER:\n"
        return f"{head}Question: {shot.question}\n{options}Correct Answer: {shot.answer}\n"
    head = f"USER:{image_token}\n" if shot.image is not None else "USER:\n"
    return f"{head}{cloze_body(shot.question)}\nCorrect Answer: {shot.answer}\n"


def render(adapter, text: str, has_image: bool, task: str, shots: tuple[Shot, ...] = ()) -> str:
    """The full prompt string up to where the model's answer starts (``text``: the scored turn's body)."""
    if not shots:
        return adapter.render(text, has_image, task)
    if adapter.family == "llava":
        image_token = adapter.tokenizer.convert_ids_to_tokens(adapter.image_token_id)
        prefix = "".join(_llava_shot(s, image_token) for s in shots)
        return prefix + adapter.render(text, has_image, task)
    # Chat-template families: each example is a finished exchange, then the scored question's turn.
    messages = []
    for s in shots:
        content = ([{"type": "image"}] if s.image is not None else []) + [
            {"type": "text", "text": task_body(s.task, s.question, s.options, s.image is not None)}]
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": s.answer}]
    content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": text}]
    messages.append({"role": "user", "content": content})
    return adapter.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode(adapter, prompt: str, images: list[EncodedImage]) -> EncodedSample:
    """Token ids of ``prompt`` with each image token expanded to its image's token count, in order; the
    images' tensors are concatenated into one EncodedImage (the model matches features to image tokens in
    order, across the batch)."""
    ids = adapter.tokenizer(prompt, add_special_tokens=adapter.add_special_tokens).input_ids
    positions = [i for i, t in enumerate(ids) if t == adapter.image_token_id]
    if len(positions) != len(images):
        # e.g. a question whose text itself holds the image token string
        raise DataError(f"prompt holds {len(positions)} image token(s) for {len(images)} image(s): {prompt[:160]!r}")
    out: list[int] = []
    prev = 0
    for pos, enc in zip(positions, images):
        out += ids[prev:pos] + [adapter.image_token_id] * enc.num_tokens
        prev = pos + 1
    out += ids[prev:]
    merged = None
    if len(images) == 1:
        merged = images[0]
    elif images:
        merged = EncodedImage({k: torch.cat([e.tensors[k] for e in images]) for k in images[0].tensors},
                              sum(e.num_tokens for e in images))
    return EncodedSample(out, [], merged)


class ImageCache:
    """Decoded and processed images by reference, up to ``budget_bytes`` of tensors: a profile's image is
    asked with many questions, in batches far apart (they are grouped by task)."""

    def __init__(self, adapter, budget_bytes: int = 256 * 2**20):
        self.adapter = adapter
        self.budget = budget_bytes
        self.used = 0
        self._cache: dict[ImageRef, EncodedImage] = {}

    def get(self, ref: ImageRef) -> EncodedImage:
        """The processed image; raises DataError when it cannot be read (not cached: asked again, it fails
        again with the same message)."""
        hit = self._cache.get(ref)
        if hit is not None:
            return hit
        encoded = self.adapter.encode_image(ref.load())
        size = sum(t.numel() * t.element_size() for t in encoded.tensors.values())
        if self.used + size <= self.budget:
            self._cache[ref] = encoded
            self.used += size
        return encoded
