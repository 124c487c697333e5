"""The questions an evaluation asks: one ``EvalItem`` per scored question, built from benchmark profiles.

Pure_Text questions are asked without the image (as the official evaluator does); Image_Textual questions with
the profile's image, or, on the test split, one of the row's other images drawn by a seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass

from vgid_dist.data.schema import ImageRef, Profile
from vgid_dist.perturb import noise_rng
from vgid_dist.prompts import task_body, with_attack, with_instruction


@dataclass(frozen=True)
class EvalItem:
    uid: str
    split: str
    profile_id: str
    task: str  # classification | cloze | generation
    qtype: str  # Image_Textual | Pure_Text
    question: str
    ground_truth: str  # the correct letter for classification
    image: ImageRef | None
    options: dict[str, str] | None = None

    def text(self, icu: str | None = None, attack: str | None = None) -> str:
        """The user turn: [unlearning instruction] question [reverse-attack prompt], then the task's format."""
        question = with_attack(self.question, attack)
        body = task_body(self.task, question, self.options, self.image is not None)
        return with_instruction(body, icu)


def profile_image(profile: Profile, split: str, seed: int) -> ImageRef | None:
    if profile.images:
        rng = noise_rng(seed, "test-image", profile.profile_id)
        return profile.images[int(rng.integers(len(profile.images)))]
    return profile.image


def items_for(profile: Profile, split: str, seed: int, skip: set[str] = frozenset()) -> list[EvalItem]:
    """Every question of a profile as EvalItems (``skip``: uids used as few-shot examples)."""
    image = profile_image(profile, split, seed)
    items: list[EvalItem] = []
    base = f"{split}/{profile.profile_id}"
    for k, q in enumerate(profile.classification):
        items.append(EvalItem(f"{base}/classification/{k}", split, profile.profile_id, "classification", q.qtype,
                              q.question, q.correct, image if q.qtype == "Image_Textual" else None, q.options))
    for k, q in enumerate(profile.cloze):
        items.append(EvalItem(f"{base}/cloze/{k}", split, profile.profile_id, "cloze", q.qtype, q.question,
                              q.ground_truth, image if q.qtype == "Image_Textual" else None))
    for k, q in enumerate(profile.generation):
        items.append(EvalItem(f"{base}/generation/{k}", split, profile.profile_id, "generation", q.qtype,
                              q.question, q.ground_truth, image if q.qtype == "Image_Textual" else None))
    return [it for it in items if it.uid not in skip]
