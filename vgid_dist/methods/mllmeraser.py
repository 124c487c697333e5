"""MLLMEraser (Ding et al., 2025): training-free test-time unlearning by input-aware activation steering. Nothing
trains: an erasure direction per layer and a gate are built from the forget and retain pairs
(``vgid steer build``) and applied at inference (``vgid eval --steer FILE``). The method exists so that it is a
row like any other (``vgid demo``, the matrix), its parameters validated like any other's; the readings are in
``vgid_dist/eval/steering.py``.
"""

from __future__ import annotations

from vgid_dist.config.method_params import MllmEraserParams
from vgid_dist.methods.base import InferenceOnlyMethod


class MllmEraser(InferenceOnlyMethod, name="mllmeraser", params=MllmEraserParams, uses_retain=True):
    how_to_use = ("build its steering file (`vgid steer build`) and evaluate the base model with it "
                  "(`vgid eval --steer FILE`, or `vgid demo --methods mllmeraser`)")
