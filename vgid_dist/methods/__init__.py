"""Unlearning methods, registered by name: one small class each (see methods/base.py)."""

from __future__ import annotations

from vgid_dist.config.method_params import method_params_model
from vgid_dist.methods.ablations import IcuT, NoiseT
from vgid_dist.methods.base import LossOutput, Method, ModelRunner, StepBatch
from vgid_dist.methods.finetune import Finetune
from vgid_dist.methods.ga import GradientAscent
from vgid_dist.methods.ga_diff import GaDiff
from vgid_dist.methods.icu import Icu
from vgid_dist.methods.kl_min import KlMin
from vgid_dist.methods.mllmeraser import MllmEraser
from vgid_dist.methods.npo import Npo
from vgid_dist.methods.po import Idk, Po
from vgid_dist.methods.rmu import Rmu
from vgid_dist.methods.vgid import Vgid
from vgid_dist.methods.vkd import Vkd

REGISTRY: dict[str, type[Method]] = {m.name: m for m in (Vgid, Finetune, GradientAscent, GaDiff, KlMin, Npo, Po, Idk,
                                                          Rmu, IcuT, NoiseT, Icu, Vkd, MllmEraser)}

__all__ = ["REGISTRY", "LossOutput", "Method", "ModelRunner", "StepBatch", "build_method",
           "method_class"]


def method_class(name: str) -> type[Method]:
    """The class of method ``name``; an unknown name raises KeyError listing the known ones."""
    method_params_model(name)  # the one place that knows the names and words the error
    return REGISTRY[name]


def build_method(method_cfg, collator, seed: int) -> Method:
    cls = method_class(method_cfg.name)
    return cls(method_cfg.params(), collator, seed)
