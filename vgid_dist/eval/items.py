"""The questions an evaluation asks: one ``EvalItem`` per scored question, built from benchmark profiles.

Pure_Text questions are asked without the image (as the official evaluator does); Image_Textual questions with
the profile's image, or, on the test split, one of the row's other images drawn by a seeded generator: per
(profile, task) under the official protocol (its evaluator draws again in each task), per profile under
``zero-shot``. Under the official protocol the split's examples (``eval.examples``) precede its classification
and cloze questions, and the questions they show are not scored.
"""

from __future__ import annotations

from dataclasses import dataclass

from vgid_dist.data.schema import ImageRef, Profile
from vgid_dist.eval.examples import Shot, SplitExamples, question_keys
from vgid_dist.perturb import noise_rng
from vgid_dist.prompts import task_body, with_attack, with_instruction
from vgid_dist.vocab import PROTOCOLS

"""``official``: the official MLLMU-Bench evaluator's examples, Test_Set image draws and parsing, seeded;
``zero-shot``: no examples, one Test_Set image per profile, lenient classification parsing."""


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
    shots: tuple[Shot, ...] = ()  # solved examples shown before the question

    def text(self, icu: str | None = None, attack: str | None = None) -> str:
        """The user turn: [unlearning instruction] question [reverse-attack prompt], then the task's format."""
        question = with_attack(self.question, attack)
        body = task_body(self.task, question, self.options, self.image is not None)
        return with_instruction(body, icu)


def profile_image(profile: Profile, seed: int, task: str | None = None) -> ImageRef | None:
    """The image Image_Textual questions of ``task`` are asked with: a Test_Set row's images are other pictures
    of the same identity, one drawn by a generator seeded by (seed, profile id[, task]); ``task`` None draws
    one for all tasks."""
    if profile.images:
        key = (seed, "test-image", profile.profile_id) + ((task,) if task is not None else ())
        rng = noise_rng(*key)
        return profile.images[int(rng.integers(len(profile.images)))]
    return profile.image


def items_for(profile: Profile, split: str, seed: int, protocol: str = "official",
              examples: SplitExamples = SplitExamples()) -> list[EvalItem]:
    """Every scored question of a profile as EvalItems (``examples``: the split's, official protocol)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r}: expected one of {PROTOCOLS}")
    base = f"{split}/{profile.profile_id}"
    items: list[EvalItem] = []
    tasks = (("classification", profile.classification), ("cloze", profile.cloze), ("generation", profile.generation))
    for task, questions in tasks:
        image = profile_image(profile, seed, task if protocol == "official" else None)
        for k, (key, q) in enumerate(zip(question_keys(profile, task), questions)):
            if key in examples.skip:
                continue
            items.append(EvalItem(
                f"{base}/{task}/{k}", split, profile.profile_id, task, q.qtype, q.question,
                q.correct if task == "classification" else q.ground_truth,
                image if q.qtype == "Image_Textual" else None,
                q.options if task == "classification" else None, examples.shots.get((task, q.qtype), ())))
    return items
