"""Every method's parameters, as pydantic models: what ``method.<key>`` may hold in a recipe for each
``method.name``, with its default and where that default comes from. The method classes (``vgid_dist.methods``)
read them; they live here, with the rest of the configuration, so a run is validated whole before anything
loads. ``METHOD_PARAMS`` is the name -> model registry; ``vgid_dist.methods.REGISTRY`` has the same names."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vgid_dist.errors import did_you_mean
from vgid_dist.prompts import DEFAULT_REFUSALS
from vgid_dist.vocab import InstructionStyle, Perturbation


class MethodParams(BaseModel):
    """Base of every method's parameter model: unknown keys are errors, and so are infinite and NaN numbers."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class VgidParams(MethodParams):
    alpha: float = Field(1.0, ge=0)
    beta: float = Field(1.0, ge=0)
    perturbation: Perturbation = "random_noise"
    sigma: float = Field(0.5, gt=0)
    """Standard deviation of the gaussian perturbation, as a fraction of the 0-255 pixel range."""
    instruction_style: InstructionStyle = "strict"
    temperature: float = Field(1.0, gt=0)
    fused_kl: bool = True
    """KL through the output heads in row chunks (never a [tokens x vocab] tensor); false: from logits."""
    kl_positions: Literal["answer", "all"] = "answer"
    """answer: the answer tokens; all: every position of the shared suffix of teacher and student inputs (as
    the authors' released code does; for retain rows, whose inputs are identical, every position)."""


def _refuse(params: VgidParams, method: str, fields: tuple[str, ...], why: str) -> None:
    given = sorted(set(fields) & params.model_fields_set)
    if given:
        raise ValueError(f"method.{given[0]}: {method} {why}; remove {', '.join(given)}")


class IcuTParams(VgidParams):
    @model_validator(mode="after")
    def _no_perturbation(self) -> IcuTParams:
        _refuse(self, "icu_t", ("perturbation", "sigma"), "shows the teacher the original image")
        return self


class NoiseTParams(VgidParams):
    @model_validator(mode="after")
    def _no_instruction(self) -> NoiseTParams:
        _refuse(self, "noise_t", ("instruction_style",), "puts no instruction before the teacher's question")
        return self


class FinetuneParams(MethodParams):
    source: Literal["ft_data", "forget", "retain"] = "ft_data"
    """Which pairs to fit: the benchmark's ft_Data (vanilla model), or the forget / retain training pairs."""
    profiles: list[str] | None = None
    """Only the pairs of these profile ids (the relearning attack fits a subset of the forget profiles)."""


class GaParams(MethodParams):
    """GA has no parameters of its own (learning rate and steps are the run's)."""


class GaDiffParams(MethodParams):
    retain_weight: float = Field(1.0, ge=0)
    """lambda of eq. 7; 1 as in TOFU's and MLLMU-Bench's gradient-difference baselines."""


class KlMinParams(MethodParams):
    beta: float = Field(1.0, ge=0)
    """Weight of the retain KL (eq. 8); 1 as in TOFU's and MLLMU-Bench's KL baselines."""


class NpoParams(MethodParams):
    beta: float = Field(0.1, gt=0)
    """Inverse temperature of eq. 10; 0.1 as in the NPO paper's TOFU experiments."""


class RefusalParams(MethodParams):
    refusals: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSALS), min_length=1)
    """Refusal answers; one is chosen per forget sample (seeded)."""


class PoParams(RefusalParams):
    beta: float = Field(0.1, gt=0)
    """Inverse temperature of eq. 9; 0.1 as in DPO and TOFU's preference-optimisation runs."""


class IdkParams(RefusalParams):
    retain_weight: float = Field(1.0, ge=0)
    """Weight of the retain NLL; 1 as in TOFU's IDK baseline."""


class RmuParams(MethodParams):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    variant: Literal["reference", "per_position"] = "reference"
    """How the forget target and the distance are formed (module docstring)."""
    layer: int = Field(7, ge=0)
    """Decoder layer (0-based) whose output is steered; 7 of 32 as in the WMDP RMU runs on 7B models."""
    lambda_: float = Field(5.0, gt=0, alias="lambda")
    """Scale of the target relative to the frozen activation norm (written ``lambda`` in recipes): Adaptive
    RMU's scaling factor 5 (reference: of the mean norm; per_position: of each position's norm)."""
    steering_coeff: float | None = Field(None, gt=0)
    """reference only: a fixed coefficient c instead of the adaptive one (WMDP RMU's steering coefficient,
    e.g. 6.5 for Zephyr-7B, tied to that model's activation scale)."""
    gamma: float = Field(1200.0, ge=0)
    """Weight of the retain term (eq. 15); WMDP RMU's and Adaptive RMU's retain weight alpha = 1200."""
    trainable: Literal["down_proj", "up_to_layer", "all"] = "down_proj"
    """``down_proj``: the MLP down-projection of decoder layers layer-2..layer (WMDP); ``up_to_layer``: decoder
    layers 0..layer; ``all``: every parameter that would train otherwise."""

    @model_validator(mode="after")
    def _coefficient_belongs_to_reference(self) -> RmuParams:
        if self.steering_coeff is not None and self.variant != "reference":
            raise ValueError("method.steering_coeff: only the reference variant uses one coefficient "
                             "(per_position scales each position's own norm by lambda); remove it")
        return self


class IcuParams(MethodParams):
    instruction_style: InstructionStyle = "strict"
    """The instruction put before each question at evaluation (VGID's default teacher instruction)."""


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
    perturbation: Perturbation = "random_noise"
    sigma: float = Field(0.5, gt=0)
    erasure_text: Literal["instruction", "refusal"] = "instruction"
    """Text side of the erasure inputs: the unlearning instruction before the question, or a refusal answer."""
    instruction_style: InstructionStyle = "strict"
    max_samples: int | None = Field(None, ge=1)
    """At most this many forget (and retain) pairs are read when building; default: all."""

    @field_validator("layers")
    @classmethod
    def _layers_valid(cls, layers: list[int] | None) -> list[int] | None:
        if layers is not None and (not layers or any(layer < 0 for layer in layers)):
            raise ValueError(f"layers {layers}: expected a non-empty list of 0-based decoder layers")
        return layers


class VkdParams(MethodParams):
    layers: list[int] = Field(default_factory=lambda: [15])
    """Decoder layers (0-based) whose outputs at the image positions are matched; 15 of 32: the middle of
    LLaVA-1.5-7B's language model, where visual entity representations are formed."""
    loss: Literal["mse", "cosine"] = "mse"
    trainable: Literal["projector", "vision_tower", "both"] = "both"
    """Which part of the visual pathway trains; everything else is frozen."""
    alpha: float = Field(1.0, ge=0)
    """Weight of the forget term."""
    beta: float = Field(1.0, ge=0)
    """Weight of the retain term."""
    perturbation: Perturbation = "random_noise"
    """How the erased target's image is made (VGID's perturbations)."""
    sigma: float = Field(0.5, gt=0)
    """Standard deviation of the gaussian perturbation, as a fraction of the 0-255 pixel range."""

    @field_validator("layers")
    @classmethod
    def _layers_valid(cls, layers: list[int]) -> list[int]:
        if not layers:
            raise ValueError("expected at least one decoder layer")
        if any(layer < 0 for layer in layers):
            raise ValueError(f"layers {layers}: expected 0-based decoder layer indices (>= 0)")
        return sorted(set(layers))


METHOD_PARAMS: dict[str, type[MethodParams]] = {
    "vgid": VgidParams, "icu_t": IcuTParams, "noise_t": NoiseTParams, "finetune": FinetuneParams, "ga": GaParams,
    "ga_diff": GaDiffParams, "kl_min": KlMinParams, "npo": NpoParams, "po": PoParams, "idk": IdkParams,
    "rmu": RmuParams, "icu": IcuParams, "vkd": VkdParams, "mllmeraser": MllmEraserParams,
}


def method_params_model(name: str) -> type[MethodParams]:
    """The parameter model of method ``name``; an unknown name raises KeyError listing the known ones."""
    try:
        return METHOD_PARAMS[name]
    except KeyError:
        raise KeyError(f"method.name: unknown method {name!r}{did_you_mean(name, METHOD_PARAMS)} (known methods: "
                       f"{', '.join(sorted(METHOD_PARAMS))})") from None
