"""The words every layer shares, defined once: benchmark splits (and a people folder's), forget ratios, tasks and question types,
instruction styles, perturbations, evaluation protocols and metrics. Each is a ``Literal`` type (for pydantic
models and signatures) and the tuple of its values (for loops, ``choices`` and messages)."""

from __future__ import annotations

from typing import Literal, get_args

Split = Literal["forget", "test", "retain", "celebrity"]
SPLITS: tuple[str, ...] = get_args(Split)
"""The four evaluation splits of MLLMU-Bench, in report order."""

PeopleSplit = Literal["forget", "retain", "forget_probes", "retain_probes"]
PEOPLE_SPLITS: tuple[str, ...] = get_args(PeopleSplit)
"""The evaluation splits of a JSONL folder of people: the pairs of forget.jsonl and retain.jsonl, and the rows of
probes.jsonl about each file's people."""

ForgetRatio = Literal[5, 10, 15]
FORGET_RATIOS: tuple[int, ...] = get_args(ForgetRatio)
"""Percent of the fictitious profiles to forget (``forget_X`` / ``retain_{100-X}``)."""

Task = Literal["classification", "cloze", "generation"]
TASKS: tuple[str, ...] = get_args(Task)

QuestionType = Literal["Image_Textual", "Pure_Text"]
QUESTION_TYPES: tuple[str, ...] = get_args(QuestionType)

InstructionStyle = Literal["declarative", "polite", "strict"]
INSTRUCTION_STYLES: tuple[str, ...] = get_args(InstructionStyle)
"""The unlearning instructions of the VGID paper (appendix A.1)."""

Perturbation = Literal["random_noise", "gaussian", "white"]
PERTURBATIONS: tuple[str, ...] = get_args(Perturbation)
"""How a teacher's image is perturbed (``none``, the ICU-T teacher's, is not a choice users make)."""

Protocol = Literal["official", "zero-shot"]
PROTOCOLS: tuple[str, ...] = get_args(Protocol)
"""``official``: the official MLLMU-Bench evaluator's examples, Test_Set image draws and reply parsing;
``zero-shot``: none of these."""

McMode = Literal["generate", "logits"]
MC_MODES: tuple[str, ...] = get_args(McMode)

Dtype = Literal["float32", "bfloat16", "float16"]
DTYPES: tuple[str, ...] = get_args(Dtype)
"""The dtypes a model's weights can be held in."""

METRICS: tuple[str, ...] = ("gen_rougeL", "gen_bleu", "class_acc", "cloze_acc")
"""The benchmark's metrics, in report order."""
