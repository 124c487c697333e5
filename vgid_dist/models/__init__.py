"""Model families: adapters (prompt format, image tokens, processor, loading) and tiny builders."""

from __future__ import annotations

from pathlib import Path

from vgid_dist.models.base import FamilyAdapter, ModelFolderError, check_model_folder, read_model_type
from vgid_dist.models.llava import LlavaAdapter
from vgid_dist.models.qwen2_5_vl import Qwen25VLAdapter

ADAPTERS: dict[str, type[FamilyAdapter]] = {a.family: a for a in (LlavaAdapter, Qwen25VLAdapter)}

__all__ = ["ADAPTERS", "FamilyAdapter", "ModelFolderError", "detect_family", "load_adapter"]


def detect_family(folder: str | Path) -> str:
    """The family of a model folder, from config.json's ``model_type``."""
    folder = check_model_folder(folder)
    model_type = read_model_type(folder)
    for family, adapter in ADAPTERS.items():
        if model_type in adapter.model_types:
            return family
    known = sorted(t for a in ADAPTERS.values() for t in a.model_types)
    raise ModelFolderError(f"{folder / 'config.json'}: field 'model_type' is {model_type!r}; supported model "
                           f"types: {known}")


def load_adapter(folder: str | Path, family: str | None = None) -> FamilyAdapter:
    detected = detect_family(folder)
    if family is not None and family != detected:
        raise ModelFolderError(f"model.family is {family!r} but {Path(folder) / 'config.json'} says "
                               f"model_type {read_model_type(Path(folder))!r} (family {detected!r})")
    return ADAPTERS[detected](folder)
