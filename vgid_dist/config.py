"""The run configuration: pydantic models, YAML recipes, dotted ``key=value`` overrides.

Everything a run needs is validated here, before any model, dataset or process group is touched, so a
typo costs seconds instead of a queued GPU job. A run is read once (``load_run_config``), then passed down.

Recipes are YAML files, given as a path or as the name of a packaged recipe (``vgid_dist/recipes/*.yaml``).
A recipe may name a parent with ``extends: <name or path>``; its keys are merged over the parent's (a
``method`` with another name replaces the parent's method section).
``${VAR}`` and ``${VAR:-default}`` in string values are expanded from the environment.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vgid_dist.errors import ConfigError

RECIPES_DIR = Path(__file__).parent / "recipes"
DS_CONFIGS_DIR = RECIPES_DIR / "ds"

# Short override keys users type on the command line; each maps to exactly one dotted path.
OVERRIDE_SHORTCUTS = {
    "seed": "optim.seed",
    "max_steps": "optim.max_steps",
    "epochs": "optim.epochs",
    "lr": "optim.lr",
    "batch_size": "optim.batch_size",
    "grad_accum": "optim.grad_accum",
    "forget_ratio": "data.forget_ratio",
}


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraConfig(StrictModel):
    """Low-rank adapters on the language model (peft). The frozen teacher is the same model, adapters off."""

    r: int = Field(16, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    targets: list[str] | Literal["all-linear"] = "all-linear"


class ModelConfig(StrictModel):
    path: str
    """A local Hugging Face folder, or ``@tiny/<name>`` for the packaged tiny models (built on first use)."""
    family: Literal["llava", "qwen2_5_vl"] | None = None
    """None: read from the folder's config.json (``model_type``)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    attention: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    """auto: flash-attention-2 when installed and on CUDA, else SDPA."""
    gradient_checkpointing: bool = False
    lora: LoraConfig | None = None


class DataConfig(StrictModel):
    root: str
    """The benchmark folder in MLLMU-Bench layout (or ``@tiny/benchmark``); for ``format: jsonl``, the
    folder holding ``forget.jsonl`` and ``retain.jsonl`` unless those are given explicitly."""
    format: Literal["mllmu", "jsonl"] = "mllmu"
    train_root: str | None = None
    """MLLMU-Bench training pairs (``forget_X/``, ``retain_Y/``); default ``<root>/baseline_train_split``."""
    forget_file: str | None = None
    retain_file: str | None = None
    forget_ratio: Literal[5, 10, 15] = 5
    max_length: int = Field(384, ge=16)
    """Text tokens per sample (prompt + answer); an image's tokens (576 for LLaVA-1.5) come on top. Answers
    are cut to fit; prompts are never cut."""
    score_eos: bool = False
    """Also make the token closing each answer (``</s>`` for LLaVA, ``<|im_end|>`` for Qwen2.5-VL) a scored
    target. false: the answer's own tokens only, as the MLLMU-Bench and VGID reference training code does
    (its training text ends with the answer). The tiny vanilla model, trained from scratch, sets true: it has
    to learn to stop."""


class OptimConfig(StrictModel):
    lr: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    batch_size: int = Field(4, gt=0)
    """Global batch: forget samples per optimiser step, over all ranks and accumulation steps. Methods
    with a retain term draw ``retain_per_forget`` times as many retain samples."""
    retain_per_forget: int = Field(1, gt=0)
    """Retain samples per forget sample in a step (methods with a retain term). 1 is the paper's setting; more
    holds the retain set more firmly when the retain set is much larger than the forget set, at the cost of
    that many more retain rows per forward."""
    grad_accum: int = Field(1, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0)
    """When set, overrides epochs."""
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["constant", "linear", "cosine"] = "linear"
    max_grad_norm: float = Field(1.0, ge=0)
    """0 disables clipping."""
    seed: int = 42


class EvalConfig(StrictModel):
    at_end: bool = False
    """Evaluate the unlearned model on MLLMU-Bench when training ends (results in output_dir)."""
    every_steps: int = Field(0, ge=0)
    """Also evaluate every N optimiser steps (results in output_dir/eval_step{N}.json); 0: never."""
    batch_size: int = Field(16, gt=0)
    max_new_tokens: int = Field(50, gt=0)
    splits: list[Literal["forget", "test", "retain", "celebrity"]] = ["forget", "test", "retain", "celebrity"]
    limit: int | None = Field(None, gt=0)
    """Score at most this many profiles per split (quick looks; never for reported numbers)."""
    protocol: Literal["official", "zero-shot"] = "official"
    """``official``: the official MLLMU-Bench evaluator's examples before classification and cloze questions,
    its Test_Set image draws and reply parsing, seeded by ``optim.seed``; ``zero-shot``: none of these."""
    mc_mode: Literal["generate", "logits"] = "generate"
    """``logits``: also score multiple choice by the option letters' log-probabilities (class_acc_logits)."""

    @model_validator(mode="before")
    @classmethod
    def _no_few_shot(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "few_shot" in data:
            raise ValueError("eval.few_shot was replaced by eval.protocol: 'official' (the official evaluator's "
                             "examples, the default) or 'zero-shot' (none)")
        return data


class MethodConfig(BaseModel):
    """``name`` plus that method's own parameters, validated by the method's parameter model."""

    model_config = ConfigDict(extra="allow")
    name: str

    def params(self) -> BaseModel:
        from vgid_dist.methods import method_params_model

        fields = {k: v for k, v in self.model_dump().items() if k != "name"}
        return method_params_model(self.name).model_validate(fields)


class RunConfig(StrictModel):
    model: ModelConfig
    data: DataConfig
    method: MethodConfig
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    output_dir: str = "runs/${method.name}"
    save_every: int = Field(0, ge=0)
    """Checkpoint every N optimiser steps (0: only at the end and on SIGTERM/SIGUSR1)."""
    ds_config: str = "zero3"
    """A DeepSpeed JSON path, or the name of a packaged one: zero3, zero3_offload, zero2."""
    log_every: int = Field(1, gt=0)
    dist_timeout_s: int = Field(1800, gt=0)
    """Process-group timeout: a stuck collective raises after this many seconds instead of idling."""
    max_consecutive_nonfinite: int = Field(3, gt=0)
    """Steps with a non-finite loss are skipped on every rank; this many in a row stop the run (checkpointed)."""

    @field_validator("method")
    @classmethod
    def _method_params_valid(cls, method: MethodConfig) -> MethodConfig:
        try:
            method.params()
        except KeyError as exc:  # unknown method name; the message lists the known ones
            raise ValueError(exc.args[0]) from None
        except ValidationError as exc:
            raise ValueError("; ".join(_describe(err, prefix="method.") for err in exc.errors())) from None
        return method

    @model_validator(mode="after")
    def _combinations(self) -> RunConfig:
        if self.data.format == "jsonl" and self.eval.at_end:
            raise ValueError("eval.at_end needs an MLLMU-Bench folder (data.format: mllmu); JSONL data has no "
                             "evaluation questions")
        if self.model.dtype == "float16" and self.model.lora is None:
            raise ValueError("model.dtype float16 full fine-tuning is unstable; use bfloat16 (or float32 on CPU)")
        return self

    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir.replace("${method.name}", self.method.name)).expanduser()


# ----------------------------------------------------------------------------------------------------------------
# Loading


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(value: Any) -> Any:
    if isinstance(value, str):
        return _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(2) if m.group(2) is not None else m.group(0)),
                        value)
    if isinstance(value, dict):
        return {k: _expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v) for v in value]
    return value


def packaged_file(name_or_path: str, folder: Path, suffixes: tuple[str, ...], what: str) -> Path:
    """A file path as given (it must exist), or the packaged file of that name in ``folder`` (``tiny`` ->
    ``folder/tiny.yaml``). An unknown name fails listing the packaged ones, the closest first."""
    p = Path(name_or_path).expanduser()
    if p.suffix in suffixes or p.is_file():
        if not p.is_file():
            raise ConfigError(f"{p}: {what} file not found")
        return p
    packaged = folder / f"{name_or_path}{suffixes[0]}"
    if packaged.is_file():
        return packaged
    known = sorted(q.stem for q in folder.glob(f"*{suffixes[0]}"))
    close = difflib.get_close_matches(name_or_path, known, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise ConfigError(f"{what} {name_or_path!r}: neither a {suffixes[0]} file nor a packaged {what}{hint} "
                      f"(known: {', '.join(known)})")


def recipe_path(name_or_path: str) -> Path:
    """A recipe path as given, or the packaged recipe of that name."""
    return packaged_file(name_or_path, RECIPES_DIR, (".yaml", ".yml"), "recipe")


def packaged_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: Mapping, over: Mapping) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_recipe_dict(name_or_path: str, _seen: tuple[Path, ...] = ()) -> dict:
    """The recipe as a plain dict, with ``extends`` chains merged (parent first)."""
    path = recipe_path(name_or_path)
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is not None:
        parent_ref = str(parent)
        local = path.parent / parent_ref
        if local.suffix in (".yaml", ".yml") and local.is_file():
            parent_ref = str(local)
        base = load_recipe_dict(parent_ref, _seen + (path.resolve(),))
        # A different method replaces the parent's whole method section (its parameters mean nothing here).
        if "method" in data and data["method"].get("name", base.get("method", {}).get("name")) != \
                base.get("method", {}).get("name"):
            base.pop("method", None)
        data = deep_merge(base, data)
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], value), the value parsed as YAML (numbers, booleans, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value with a dotted key, e.g. method.alpha=2")
    key, raw = text.split("=", 1)
    key = OVERRIDE_SHORTCUTS.get(key.strip(), key.strip())
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key segment")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _set_dotted(data: dict, keys: list[str], value: Any, what: str) -> None:
    node = data
    for k in keys[:-1]:
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"{what}: {k!r} is a value, not a section")
        node = nxt
    node[keys[-1]] = value


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for text in overrides:
        keys, value = parse_override(text)
        _set_dotted(data, keys, value, f"override {text!r}")
    return data


def updated_config(cfg: RunConfig, values: Mapping[str, Any], source: str) -> RunConfig:
    """``cfg`` with dotted keys set to plain values (``{"optim.max_steps": 20, "method": {...}}``), validated
    again; ``source`` names the run in errors."""
    data = cfg.model_dump(mode="json")
    for key, value in values.items():
        _set_dotted(data, key.split("."), value, f"{source}: {key}")
    return build_run_config(data, source)


def _describe(err: dict, prefix: str = "") -> str:
    loc = prefix + ".".join(str(p) for p in err["loc"])
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "literal_error" and "expected" in err.get("ctx", {}):
        msg = f"expected one of {err['ctx']['expected']}, got {err['input']!r}"
    elif err["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
        if msg.startswith(loc) or not loc:
            return msg
    elif "input" in err and err["type"] not in ("missing",):
        msg = f"{msg} (got {err['input']!r})"
    return f"{loc or '(top level)'}: {msg}"


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    lines += [f"  {_describe(err)}" for err in exc.errors()]
    return "\n".join(lines)


def build_run_config(data: dict, source: str) -> RunConfig:
    try:
        return RunConfig.model_validate(_expand_env(data))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_run_config(config: str, overrides: Iterable[str] = ()) -> RunConfig:
    """Read a recipe (path or packaged name), apply ``key=value`` overrides, validate everything."""
    overrides = list(overrides)
    data = apply_overrides(load_recipe_dict(config), overrides)
    source = str(recipe_path(config)) + (f" (with overrides {' '.join(overrides)})" if overrides else "")
    return build_run_config(data, source)


def resolved_config(cfg: RunConfig) -> dict[str, Any]:
    """What a run of ``cfg`` uses, as plain data: every field with its given or default value, the method's
    parameters filled from the method's own defaults, ``output_dir`` resolved (``vgid config``)."""
    data = cfg.model_dump(mode="json")
    data["method"] = {"name": cfg.method.name, **cfg.method.params().model_dump(mode="json", by_alias=True)}
    data["output_dir"] = str(cfg.resolved_output_dir())
    return data


def flatten(data: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are kept as values."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# ----------------------------------------------------------------------------------------------------------------
# DeepSpeed configuration


def ds_config_path(name_or_path: str) -> Path:
    return packaged_file(name_or_path, DS_CONFIGS_DIR, (".json",), "ds_config")


def load_ds_config(name_or_path: str) -> dict:
    path = ds_config_path(name_or_path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


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
