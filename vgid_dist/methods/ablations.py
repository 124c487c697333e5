"""VGID's single-intervention ablations (VGID paper sec. 4.4, Table 3): the same distillation, with a teacher
built from one intervention only.

- ``icu_t``: the teacher sees the unlearning instruction before the question and the ORIGINAL image.
- ``noise_t``: the teacher sees the perturbed image and the question WITHOUT the instruction.

Each is ``Vgid`` with one of its intervention switches off; the loss is VGID's. The parameter of the switched-off
intervention is refused rather than ignored, so a recipe cannot suggest a setting that has no effect.
"""

from __future__ import annotations

from pydantic import model_validator

from vgid_dist.methods.vgid import Vgid, VgidParams


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


class IcuT(Vgid):
    name = "icu_t"
    Params = IcuTParams
    use_perturbation = False


class NoiseT(Vgid):
    name = "noise_t"
    Params = NoiseTParams
    use_instruction = False
