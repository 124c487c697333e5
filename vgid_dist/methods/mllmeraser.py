"""MLLMEraser (Ding et al., 2025): training-free test-time unlearning by input-aware activation steering. Nothing
trains: an erasure direction per layer and a gate are built from the forget and retain pairs
(``vgid steer build``) and applied at inference (``vgid eval --steer FILE``). The method exists so that it is a
row like any other (``vgid demo``, the matrix), its parameters validated like any other's; the readings are in
``vgid_dist/eval/steering.py``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from vgid_dist.methods.base import InferenceOnlyMethod, MethodParams


class MllmEraserParams(MethodParams):
    layers: list[int] | None = None
    """Decoder layers (0-based) steered; default: the middle layer (num_layers // 2)."""
    gate_layer: int | None = Field(None, ge=0)
    """Layer whose last-token activation the gate reads; default: the first steering layer."""
    scale: float = Field(1.0, gt=0)
    """Multiplier of the erasure direction (1: move by the mean erasure-minus-recall difference)."""
    gate: Literal["hard", "soft"] = "hard"
    center: Literal["retain", "none"] = "retain"
    retain_quantile: float = Field(0.95, ge=0, le=1)
    """Gate threshold: this quantile of the retain pairs' gate scores (that share of retain inputs is left as is)."""
    perturbation: Literal["random_noise", "gaussian", "white"] = "random_noise"
    sigma: float = Field(0.5, gt=0)
    erasure_text: Literal["instruction", "refusal"] = "instruction"
    """Text side of the erasure inputs: the unlearning instruction before the question, or a refusal answer."""
    instruction_style: Literal["declarative", "polite", "strict"] = "strict"
    max_samples: int | None = Field(None, ge=1)
    """At most this many forget (and retain) pairs are read when building; default: all."""

    @field_validator("layers")
    @classmethod
    def _layers_valid(cls, layers: list[int] | None) -> list[int] | None:
        if layers is not None and (not layers or any(layer < 0 for layer in layers)):
            raise ValueError(f"layers {layers}: expected a non-empty list of 0-based decoder layers")
        return layers


class MllmEraser(InferenceOnlyMethod):
    name = "mllmeraser"
    Params = MllmEraserParams
    uses_retain = True
    how_to_use = ("build its steering file (`vgid steer build`) and evaluate the base model with it "
                  "(`vgid eval --steer FILE`, or `vgid demo --methods mllmeraser`)")
