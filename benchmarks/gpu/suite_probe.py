"""Imports what the GPU suite's stages use and prints one JSON line of versions (the install stage's result):

    {"python", "device", "cuda", "gpu_memory_gb", "torch", "transformers", "deepspeed", ..., "package_path"}

Run from outside the repository, so that ``vgid_dist`` comes from where it is installed."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import platform
from pathlib import Path

DISTRIBUTIONS = {"torch": "torch", "transformers": "transformers", "deepspeed": "deepspeed", "pydantic": "pydantic",
                 "peft": "peft", "accelerate": "accelerate", "triton": "triton",
                 "liger_kernel": "liger-kernel", "flash_attn": "flash-attn"}
# What the stages import: the trainer (DeepSpeed, pydantic configs), the benchmark reader (pyarrow), the
# metrics, the fused KL and its packaged C++ source, the recipes.
NEEDED = ["vgid_dist.engine.trainer", "vgid_dist.engine.strategy", "vgid_dist.data.mllmu", "vgid_dist.eval.run",
          "vgid_dist.losses.fused_kl", "deepspeed", "pyarrow.parquet", "peft"]


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def main() -> None:
    for module in NEEDED:
        importlib.import_module(module)
    import torch

    import vgid_dist

    package = Path(vgid_dist.__file__).parent
    for data in ("losses/kl_rows.cpp", "recipes/tiny.yaml", "recipes/ds/zero3.json"):
        if not (package / data).is_file():
            raise SystemExit(f"{package}: {data} is missing from the installed package")
    on_gpu = torch.cuda.is_available()
    print(json.dumps({
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name() if on_gpu else "cpu",
        "cuda": torch.version.cuda if on_gpu else None,
        "gpu_memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if on_gpu else None,
        **{key: version(dist) for key, dist in DISTRIBUTIONS.items()},
        "package_path": str(package),
    }), flush=True)


if __name__ == "__main__":
    main()
