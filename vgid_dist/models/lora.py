"""LoRA mode: low-rank adapters (peft) on the language model's linear layers, and the two exports of an adapted
model (the adapter alone, and the base weights with the adapter merged in).

Only the decoder layers of the language model get adapters, never the vision tower, the projector or the
lm_head (as the MLLMU-Bench baselines do). The frozen teacher/reference of LoRA mode is the same model with its
adapters disabled (``PeftModel.disable_adapter()``), so the base weights exist once.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vgid_dist.errors import ConfigError
from vgid_dist.io import folder_written_atomically

ADAPTER_NAME = "default"
PEFT_PREFIX = "base_model.model."


def lora_target_names(layers: torch.nn.ModuleList, targets: list[str] | str, prefix: str) -> list[str]:
    """Full module names (``prefix`` + path inside ``layers``) of the ``nn.Linear`` modules that get adapters.

    ``targets``: ``"all-linear"`` (every linear layer of the decoder layers) or module-name suffixes such as
    ``["q_proj", "v_proj"]``, matched inside the decoder layers only (CLIP's vision tower has ``q_proj`` too).
    """
    names = []
    for name, module in layers.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if targets == "all-linear" or any(name == t or name.endswith(f".{t}") for t in targets):
            names.append(f"{prefix}.{name}")
    if not names:
        raise ConfigError(f"model.lora.targets: {targets!r} matches no linear layer of the language model's decoder "
                         "layers (expected 'all-linear' or module names such as q_proj, v_proj, down_proj)")
    return names


def apply_lora(model: torch.nn.Module, layers: torch.nn.ModuleList, cfg) -> torch.nn.Module:
    """Wrap ``model`` in a peft ``PeftModel`` with adapters per ``cfg`` (config.LoraConfig); only adapter
    parameters require grad afterwards. Under ZeRO-3 the base weights stay partitioned (adapters are created
    full-size; DeepSpeed partitions them when the engine is built, broadcasting rank 0's initial values)."""
    from peft import LoraConfig, get_peft_model

    prefix = next(name for name, module in model.named_modules() if module is layers)
    peft_cfg = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, bias="none",
                          target_modules=lora_target_names(layers, cfg.targets, prefix))
    return get_peft_model(model, peft_cfg, adapter_name=ADAPTER_NAME)


def is_lora(model: torch.nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def merge_lora_state(state: dict[str, torch.Tensor], scaling: float,
                     adapter_name: str = ADAPTER_NAME) -> dict[str, torch.Tensor]:
    """The base model's state dict with every adapter merged: W + scaling * B @ A per adapted linear layer.

    ``state``: a full (gathered) state dict of the ``PeftModel``: keys ``base_model.model.<name>``, adapted
    layers as ``<module>.base_layer.weight`` with ``<module>.lora_A.<adapter>.weight`` [r, in] and
    ``<module>.lora_B.<adapter>.weight`` [out, r]. ``scaling`` = lora alpha / r. The merge is computed in fp32
    and stored in the base weight's dtype. Returns keys as the unwrapped model names them.
    """
    merged: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        name = key.removeprefix(PEFT_PREFIX)
        if ".base_layer." in key:
            module = key.rsplit(".base_layer.", 1)[0]
            name = name.replace(".base_layer.", ".")
            if key.endswith(".base_layer.weight"):
                a = state[f"{module}.lora_A.{adapter_name}.weight"].float()
                b = state[f"{module}.lora_B.{adapter_name}.weight"].float()
                value = (value.float() + scaling * (b @ a)).to(value.dtype)
        merged[name] = value
    return merged


def save_lora_exports(peft_model: torch.nn.Module, state: dict[str, torch.Tensor], adapter, model_dir: Path,
                      adapter_dir: Path) -> None:
    """Write ``adapter_dir`` (peft adapter: adapter_config.json + adapter_model.safetensors) and ``model_dir``
    (the merged model, a plain Hugging Face folder). ``state`` is the gathered state dict of ``peft_model``
    (its own parameters may be ZeRO-3 partitions). Rank 0 only."""
    from vgid_dist.models.export import save_hf_folder

    with folder_written_atomically(adapter_dir) as tmp:
        peft_model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
    cfg = peft_model.peft_config[ADAPTER_NAME]
    merged = merge_lora_state(state, cfg.lora_alpha / cfg.r)
    save_hf_folder(peft_model.get_base_model(), Path(model_dir), tokenizer=adapter.tokenizer,
                   image_processor=adapter.image_processor, state_dict=merged)
