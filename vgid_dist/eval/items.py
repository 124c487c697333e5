"""The questions an evaluation asks: one ``EvalItem`` per scored question, built from benchmark profiles.

Pure_Text questions are asked without the image (as the official evaluator does); Image_Textual questions with
the profile's image, or, on the test split, one of the row's other images drawn by a seeded generator. A
question drawn as a few-shot example (``eval.prompting``) is left out of every split, so it is never scored
with its own answer in the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from vgid_dist.data.schema import ImageRef, Profile
from vgid_dist.eval.prompting import FEW_SHOT_TASKS, QuestionKey, Shot
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
    shots: tuple[Shot, ...] = ()  # few-shot examples shown before the question

    def text(self, icu: str | None = None, attack: str | None = None) -> str:
        """The user turn: [unlearning instruction] question [reverse-attack prompt], then the task's format."""
        question = with_attack(self.question, attack)
        body = task_body(self.task, question, self.options, self.image is not None)
        return with_instruction(body, icu)


def profile_image(profile: Profile, split: str, seed: int) -> ImageRef | None:
    """The image Image_Textual questions are asked with: a Test_Set row's images are other pictures of the
    same identity, one drawn per row from a generator seeded by (seed, profile id)."""
    if profile.images:
        rng = noise_rng(seed, "test-image", profile.profile_id)
        return profile.images[int(rng.integers(len(profile.images)))]
    return profile.image


def items_for(profile: Profile, split: str, seed: int,
              shots: dict[tuple[str, str], tuple[Shot, ...]] | None = None,
              skip: set[QuestionKey] = frozenset()) -> list[EvalItem]:
    """Every question of a profile as EvalItems. ``shots``: few-shot examples per (task, question type);
    ``skip``: (profile id, task, index) of the questions used as examples."""
    shots = shots or {}
    image = profile_image(profile, split, seed)
    base = f"{split}/{profile.profile_id}"
    items: list[EvalItem] = []

    def add(task: str, k: int, q, ground_truth: str, options=None) -> None:
        if (profile.profile_id, task, k) in skip:
            return
        examples = shots.get((task, q.qtype), ()) if task in FEW_SHOT_TASKS else ()
        items.append(EvalItem(f"{base}/{task}/{k}", split, profile.profile_id, task, q.qtype, q.question,
                              ground_truth, image if q.qtype == "Image_Textual" else None, options, examples))

    for k, q in enumerate(profile.classification):
        add("classification", k, q, q.correct, q.options)
    for k, q in enumerate(profile.cloze):
        add("cloze", k, q, q.ground_truth)
    for k, q in enumerate(profile.generation):
        add("generation", k, q, q.ground_truth)
    return items
