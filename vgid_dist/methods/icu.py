"""In-context unlearning (ICU; Pawelczyk et al., 2023; VGID paper Table 6): no training. The base model is
evaluated with the unlearning instruction placed before every question (the evaluator's ``--icu STYLE``); the
method exists so that ICU is a row like any other (``vgid demo``, the matrix), with its instruction style as
its parameter.
"""

from __future__ import annotations

from typing import Literal

from vgid_dist.methods.base import InferenceOnlyMethod, MethodParams


class IcuParams(MethodParams):
    instruction_style: Literal["declarative", "polite", "strict"] = "strict"
    """The instruction put before each question at evaluation (VGID's default teacher instruction)."""


class Icu(InferenceOnlyMethod):
    name = "icu"
    Params = IcuParams
    uses_retain = False
    how_to_use = ("evaluate the base model with the instruction before each question (`vgid eval --icu STYLE`, "
                  "or `vgid demo --methods icu`)")
