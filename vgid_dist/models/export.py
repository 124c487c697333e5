"""Writing a model as a Hugging Face folder (safetensors, config, tokenizer, image processor), atomically."""

from __future__ import annotations

from pathlib import Path

import torch

from vgid_dist.io import folder_written_atomically


def save_hf_folder(model: torch.nn.Module, out: Path, *, tokenizer, image_processor,
                   state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Save ``model`` (with ``state_dict`` when its own parameters are partitioned), its tokenizer and its
    image processor into ``out``. The folder appears complete or not at all."""
    with folder_written_atomically(out) as tmp:
        # Keys as the model class names its parameters today. Reverting to the loaded checkpoint's older naming
        # (the default) goes wrong for a model loaded under ZeRO-3 (prefixes applied twice); transformers loads
        # both namings.
        model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True, save_original_format=False)
        tokenizer.save_pretrained(tmp)
        image_processor.save_pretrained(tmp)
    return Path(out)
