"""The solved examples the official MLLMU-Bench evaluator shows before classification and cloze questions, and
the questions they take out of scoring.

What the official evaluator does, per split and task (one draw per call of its task function):

- it draws example profiles from the ids of the split being scored (the test split: the forget ids), one for
  classification and two for cloze (``EXAMPLE_PROFILES``; LLaVA's counts);
- it shows *all* of those profiles' questions of the task, read from ``Full_Set`` with the ``Full_Set`` image,
  in ``Full_Set`` row order: Image_Textual examples before Image_Textual questions, Pure_Text examples before
  Pure_Text ones (the same examples before every question of the split);
- a scored row whose id was drawn loses the questions at the examples' positions (per question type for
  classification, in ``Mask_Task`` for cloze), so a question is never asked with its own answer shown;
- the celebrity split gets no example (its ids are not in ``Full_Set``) and generation is always zero-shot.

Its draws are unseeded; ours come from a generator seeded by (seed, split, task).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vgid_dist.data.schema import ImageRef, Profile
from vgid_dist.perturb import noise_rng

EXAMPLE_PROFILES = {"classification": 1, "cloze": 2}
"""Profiles drawn per split for each task that shows examples (the official LLaVA counts)."""
EXAMPLE_SPLITS = ("forget", "test", "retain")
"""Splits whose questions get examples (not the celebrity split)."""

QuestionKey = tuple[str, str, str, int]
"""(profile id, task, question type, position): the position is the official evaluator's index, within the
question type's list for classification, in ``Mask_Task`` for cloze."""


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


def question_keys(profile: Profile, task: str) -> list[QuestionKey]:
    """The official key of each question of ``profile``'s ``task`` list, in list order."""
    if task == "classification":
        seen: dict[str, int] = {}
        keys = []
        for q in profile.classification:
            keys.append((profile.profile_id, task, q.qtype, seen.get(q.qtype, 0)))
            seen[q.qtype] = seen.get(q.qtype, 0) + 1
        return keys
    questions = profile.cloze if task == "cloze" else profile.generation
    return [(profile.profile_id, task, q.qtype, k) for k, q in enumerate(questions)]


def profile_shots(profile: Profile, task: str) -> list[Shot]:
    """Every question of ``profile``'s ``task`` as a solved example."""
    shots = []
    if task == "classification":
        for key, q in zip(question_keys(profile, task), profile.classification):
            shots.append(Shot(key, task, q.qtype, q.question, q.correct, q.options,
                              profile.image if q.qtype == "Image_Textual" else None))
    elif task == "cloze":
        for key, q in zip(question_keys(profile, task), profile.cloze):
            shots.append(Shot(key, task, q.qtype, q.question, q.ground_truth, None,
                              profile.image if q.qtype == "Image_Textual" else None))
    else:
        raise ValueError(f"task {task!r} has no examples; expected one of {sorted(EXAMPLE_PROFILES)}")
    return shots


@dataclass(frozen=True)
class SplitExamples:
    """The examples of one split: ``shots[(task, qtype)]`` precede every scored question of that task and
    type; the questions whose key is in ``skip`` are not scored."""

    drawn: dict[str, tuple[str, ...]] = field(default_factory=dict)  # task -> example profile ids
    shots: dict[tuple[str, str], tuple[Shot, ...]] = field(default_factory=dict)
    skip: frozenset[QuestionKey] = frozenset()


def draw_examples(split: str, ids: list[str], full_set: list[Profile], seed: int) -> SplitExamples:
    """The official evaluator's examples for ``split`` (``ids``: the split's profile ids, in file order; for the
    test split the forget ids), drawn from a generator seeded by (seed, split, task)."""
    if split not in EXAMPLE_SPLITS:
        return SplitExamples()
    drawn: dict[str, tuple[str, ...]] = {}
    shots: dict[tuple[str, str], list[Shot]] = {}
    for task, count in EXAMPLE_PROFILES.items():
        rng = noise_rng(seed, "examples", split, task)
        picks = rng.choice(len(ids), size=min(count, len(ids)), replace=False)
        chosen = {ids[int(i)] for i in picks}
        drawn[task] = tuple(ids[int(i)] for i in picks)
        for profile in full_set:  # Full_Set row order, as the official evaluator iterates them
            if profile.profile_id in chosen:
                for shot in profile_shots(profile, task):
                    shots.setdefault((task, shot.qtype), []).append(shot)
    skip = frozenset(s.key for group in shots.values() for s in group)
    return SplitExamples(drawn, {k: tuple(v) for k, v in shots.items()}, skip)
