"""Writing a model as a Hugging Face folder (safetensors, config, tokenizer, image processor), atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch


def save_hf_folder(model: torch.nn.Module, state_dict: dict[str, torch.Tensor] | None, adapter, out: Path) -> Path:
    """Save ``model`` (with ``state_dict`` when its own parameters are partitioned) plus the adapter's
    tokenizer and image processor into ``out``. The folder appears complete or not at all."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        # Keys as the model class names its parameters today. Reverting to the loaded checkpoint's older naming
        # (the default) goes wrong for a model loaded under ZeRO-3 (prefixes applied twice); transformers loads
        # both namings.
        model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True, save_original_format=False)
        adapter.tokenizer.save_pretrained(tmp)
        adapter.image_processor.save_pretrained(tmp)
        make_readable(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def make_readable(folder: Path) -> None:
    """Temporary folders and some writers create owner-only files; give a saved model the usual modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
