"""VGID's single-intervention ablations (VGID paper sec. 4.4, Table 3): the same distillation, with a teacher
built from one intervention only.

- ``icu_t``: the teacher sees the unlearning instruction before the question and the ORIGINAL image.
- ``noise_t``: the teacher sees the perturbed image and the question WITHOUT the instruction.

Each is ``Vgid`` with one of its intervention switches off; the loss is VGID's. The parameter of the switched-off
intervention is refused rather than ignored, so a recipe cannot suggest a setting that has no effect.
"""

from __future__ import annotations

from vgid_dist.config.method_params import IcuTParams, NoiseTParams
from vgid_dist.methods.vgid import Vgid


class IcuT(Vgid, name="icu_t", params=IcuTParams, use_perturbation=False):
    """The teacher sees the instruction and the original image."""


class NoiseT(Vgid, name="noise_t", params=NoiseTParams, use_instruction=False):
    """The teacher sees the perturbed image and no instruction."""
