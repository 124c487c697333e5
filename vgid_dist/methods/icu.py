"""In-context unlearning (ICU; Pawelczyk et al., 2023; VGID paper Table 6): no training. The base model is
evaluated with the unlearning instruction placed before every question (the evaluator's ``--icu STYLE``); the
method exists so that ICU is a row like any other (``vgid demo``, the matrix), with its instruction style as
its parameter.
"""

from __future__ import annotations

from vgid_dist.config.method_params import IcuParams
from vgid_dist.methods.base import InferenceOnlyMethod


class Icu(InferenceOnlyMethod, name="icu", params=IcuParams, uses_retain=False):
    how_to_use = ("evaluate the base model with the instruction before each question (`vgid eval --icu STYLE`, "
                  "or `vgid demo --methods icu`)")
