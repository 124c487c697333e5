"""The prompt of one evaluation question and its encoding: few-shot turns, the scored turn, every image shown.

Few-shot examples follow the official MLLMU-Bench evaluator: solved questions of the same task and question
type, taken from ``Full_Set`` (its few-shot pool), shown before the scored question, for classification and
cloze only (generation is always zero-shot there). Unlike the official evaluator they are drawn from a seeded
generator, and a question used as an example is never also scored.

Per family: LLaVA gets the official string format (``USER: <image>\\nQuestion: ...\\nCorrect Answer: X\\n``
before the question's own ``USER: ... ASSISTANT:`` turn); chat-template families (Qwen2.5-VL) get each example
as a prior user turn and an assistant turn holding the answer, rendered by the model's chat template.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vgid_dist.data.collate import EncodedSample
from vgid_dist.data.schema import ImageRef, Profile
from vgid_dist.errors import DataError
from vgid_dist.models.base import EncodedImage
from vgid_dist.perturb import noise_rng
from vgid_dist.prompts import CLOZE_SUFFIX, task_body

FEW_SHOT_TASKS = ("classification", "cloze")
"""Tasks the official evaluator shows examples for."""

QuestionKey = tuple[str, str, int]
"""(profile id, task, index of the question in that profile's task list): the same in every split."""


@dataclass(frozen=True)
class Shot:
    """One solved example shown before a scored question."""

    key: QuestionKey
    task: str
    qtype: str
    question: str
    answer: str  # the correct letter (classification) or the ground truth (cloze)
    options: dict[str, str] | None
    image: ImageRef | None  # the example's own image (Image_Textual examples)


def pool_questions(profiles: list[Profile]) -> list[Shot]:
    """Every classification and cloze question of the pool as a potential example."""
    shots: list[Shot] = []
    for p in profiles:
        for k, q in enumerate(p.classification):
            shots.append(Shot((p.profile_id, "classification", k), "classification", q.qtype, q.question, q.correct,
                              q.options, p.image if q.qtype == "Image_Textual" else None))
        for k, q in enumerate(p.cloze):
            shots.append(Shot((p.profile_id, "cloze", k), "cloze", q.qtype, q.question, q.ground_truth, None,
                              p.image if q.qtype == "Image_Textual" else None))
    return shots


def draw_shots(pool: list[Profile], count: int, seed: int) -> dict[tuple[str, str], tuple[Shot, ...]]:
    """``count`` examples per (task, question type), drawn without replacement by a generator seeded from
    ``seed`` and the (task, type): the same examples on every rank and in every run with that seed."""
    if count <= 0:
        return {}
    candidates = pool_questions(pool)
    drawn: dict[tuple[str, str], tuple[Shot, ...]] = {}
    for task in FEW_SHOT_TASKS:
        for qtype in ("Image_Textual", "Pure_Text"):
            group = [s for s in candidates if s.task == task and s.qtype == qtype]
            if not group:
                continue
            rng = noise_rng(seed, "few-shot", task, qtype)
            picks = rng.choice(len(group), size=min(count, len(group)), replace=False)
            drawn[(task, qtype)] = tuple(group[int(i)] for i in sorted(picks))
    return drawn


# ---- rendering ------------------------------------------------------------------------------------------------

def _llava_shot(shot: Shot, image_token: str) -> str:
    """The official evaluator's example turn (its spacing kept: ``USER: <image>`` for classification,
    ``USER:<image>`` for cloze)."""
    if shot.task == "classification":
        options = "\n".join(f"{k}: {v}" for k, v in (shot.options or {}).items())
        head = f"USER: {image_token}\n" if shot.image is not None else "USER:\n"
        return f"{head}Question: {shot.question}\n{options}\nCorrect Answer: {shot.answer}\n"
    body = f"{shot.question.replace('__', '[Blank]')}\n{CLOZE_SUFFIX}"
    head = f"USER:{image_token}\n" if shot.image is not None else "USER:\n"
    return f"{head}{body}\nCorrect Answer: {shot.answer}\n"


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
