"""The DeepSpeed JSON of a run: a packaged config (``zero3``, ``zero3_offload``, ``zero2``) or a path, with its
``"auto"`` values filled from the run and contradictions refused."""

from __future__ import annotations

from pathlib import Path

from vgid_dist.config.recipes import RECIPES_DIR, packaged_file, read_mapping
from vgid_dist.config.run import RunConfig
from vgid_dist.errors import ConfigError

DS_CONFIGS_DIR = RECIPES_DIR / "ds"


def ds_config_path(name_or_path: str) -> Path:
    return packaged_file(name_or_path, DS_CONFIGS_DIR, (".json",), "ds_config")


def load_ds_config(name_or_path: str) -> dict:
    return read_mapping(ds_config_path(name_or_path))


def resolve_ds_config(cfg: RunConfig, world_size: int) -> dict:
    """The DeepSpeed config of this run: ``auto`` values filled from the run, contradictions refused.

    Batch semantics: ``optim.batch_size`` is the global batch; the micro-batch per rank is
    batch_size / (world_size * grad_accum), which must be a whole number.
    """
    path = ds_config_path(cfg.ds_config)
    ds = load_ds_config(cfg.ds_config)
    o = cfg.optim
    micro, rem = divmod(o.batch_size, world_size * o.grad_accum)
    if rem or micro == 0:
        raise ConfigError(
            f"optim.batch_size={o.batch_size} is not divisible by world_size ({world_size}) x optim.grad_accum "
            f"({o.grad_accum}); choose a global batch that is a multiple of {world_size * o.grad_accum}")
    expected = {
        "train_batch_size": o.batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": o.grad_accum,
    }
    for key, value in expected.items():
        given = ds.get(key, "auto")
        if given not in ("auto", value):
            raise ConfigError(f"{path}: {key}={given} contradicts the run ({key} must be {value} for "
                              f"optim.batch_size={o.batch_size}, optim.grad_accum={o.grad_accum}, "
                              f"world_size={world_size}); set it to \"auto\"")
        ds[key] = value
    clip = ds.get("gradient_clipping", "auto")
    ds["gradient_clipping"] = o.max_grad_norm if clip == "auto" else clip
    for key, enabled in (("bf16", cfg.model.dtype == "bfloat16"), ("fp16", cfg.model.dtype == "float16")):
        section = ds.setdefault(key, {})
        if section.get("enabled", "auto") == "auto":
            section["enabled"] = enabled
        elif section["enabled"] != enabled:
            raise ConfigError(f"{path}: {key}.enabled={section['enabled']} contradicts model.dtype={cfg.model.dtype}")
    if "optimizer" in ds:
        params = ds["optimizer"].setdefault("params", {})
        for key, value in (("lr", o.lr), ("weight_decay", o.weight_decay), ("betas", list(o.betas)), ("eps", o.eps)):
            if params.get(key, "auto") == "auto":
                params[key] = value
    if "scheduler" in ds:
        raise ConfigError(f"{path}: remove the 'scheduler' section; the schedule comes from optim.schedule and "
                          "optim.warmup_steps")
    zero = ds.get("zero_optimization", {})
    for key, value in list(zero.items()):
        if value == "auto":
            raise ConfigError(f"{path}: zero_optimization.{key}='auto' is not resolved by this service; "
                              "give a number")
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    return ds
