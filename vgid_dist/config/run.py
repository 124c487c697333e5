"""The run configuration as pydantic models: model, data, method, optimiser, evaluation and the run's own fields.
Every field is validated when a ``RunConfig`` is built (``config.recipes`` reads and builds one), before any
model, dataset or process group is touched, so a typo costs seconds instead of a queued GPU job."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vgid_dist.config.method_params import method_params_model
from vgid_dist.errors import ConfigError, close_names, did_you_mean
from vgid_dist.vocab import SPLITS, Dtype, ForgetRatio, InstructionStyle, McMode, Protocol, Split


class StrictModel(BaseModel):
    """Unknown keys are errors; so are infinite and NaN numbers (``epochs: .inf`` would never end)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


Beta = Annotated[float, Field(ge=0, lt=1)]
"""An Adam moment coefficient: in [0, 1)."""


class LoraConfig(StrictModel):
    """Low-rank adapters on the language model (peft). The frozen teacher is the same model, adapters off."""

    r: int = Field(16, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    targets: list[str] | Literal["all-linear"] = "all-linear"

    def scope(self) -> str:
        """Where the adapters go, in words (``vgid config`` prints it)."""
        which = "all-linear: every one of them" if self.targets == "all-linear" else f"those named {self.targets}"
        return (f"adapters on the linear layers of the language model's decoder layers only ({which}); never the "
                "vision tower, projector, embeddings or lm_head")


class ModelConfig(StrictModel):
    path: str
    """A local Hugging Face folder, or ``@tiny/<name>`` for the packaged tiny models (built on first use)."""
    family: Literal["llava", "qwen2_5_vl"] | None = None
    """None: read from the folder's config.json (``model_type``)."""
    dtype: Dtype = "bfloat16"
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
    forget_ratio: ForgetRatio = 5
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
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
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


class EvalSettings(StrictModel):
    """How questions are asked and scored; shared by a run's ``eval`` section and one evaluation's options."""

    batch_size: int = Field(16, gt=0)
    max_new_tokens: int = Field(50, gt=0)
    protocol: Protocol = "official"
    """``official``: the official MLLMU-Bench evaluator's examples before classification and cloze questions,
    its Test_Set image draws and reply parsing, seeded; ``zero-shot``: no examples, one Test_Set image per
    profile, lenient ``class_acc``."""
    mc_mode: McMode = "generate"
    """``logits``: also score multiple choice by the option letters' log-probabilities (class_acc_logits)."""


class EvalConfig(EvalSettings):
    """A run's evaluation during and after training (seeded by ``optim.seed``)."""

    at_end: bool = False
    """Evaluate the unlearned model on MLLMU-Bench when training ends (results in output_dir)."""
    every_steps: int = Field(0, ge=0)
    """Also evaluate every N optimiser steps (results in output_dir/eval_step{N}.json); 0: never."""
    splits: list[Split] = list(SPLITS)
    limit: int | None = Field(None, gt=0)
    """Score at most this many profiles per split (quick looks; never for reported numbers)."""

    @model_validator(mode="before")
    @classmethod
    def _no_few_shot(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "few_shot" in data:
            raise ValueError("eval.few_shot was replaced by eval.protocol: 'official' (the official evaluator's "
                             "examples, the default) or 'zero-shot' (none)")
        return data


class EvalOptions(EvalSettings):
    """One evaluation's options: the settings above plus how the model is asked (``vgid eval``, the evaluations
    of a training run, of a sweep's attacks and reference rows, of the relearning attack)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    icu: InstructionStyle | None = None
    """The unlearning instruction before every question (the ICU baseline)."""
    attack: Literal["reverse"] | None = None
    """``reverse``: the reverse-engineering prompt after every question (VGID paper, appendix A.3.7)."""
    seed: int = 0
    """Seeds every draw: example profiles, Test_Set images."""
    steer: str | None = None
    """A steering file (MLLMEraser, ``eval.steering``) whose hooks are applied to the model while it answers."""

    @classmethod
    def of(cls, source: str, **values: Any) -> EvalOptions:
        """Validated options; a bad value raises ConfigError naming ``source`` (e.g. ``vgid eval``)."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, source, cls)) from None

    @classmethod
    def for_run(cls, cfg: RunConfig, **values: Any) -> EvalOptions:
        """The options of a run's own evaluations (its ``eval`` section, seeded by ``optim.seed``); ``values``
        change some (an attack, the ICU instruction)."""
        shared = {k: getattr(cfg.eval, k) for k in EvalSettings.model_fields}
        return cls(**{**shared, "seed": cfg.optim.seed, **values})

    def but(self, **values: Any) -> EvalOptions:
        """A copy with ``values`` changed, validated."""
        return type(self)(**{**self.model_dump(), **values})


class MethodConfig(BaseModel):
    """``name`` plus that method's own parameters, validated by the method's parameter model."""

    model_config = ConfigDict(extra="allow")
    name: str

    def params(self) -> BaseModel:
        fields = {k: v for k, v in self.model_dump().items() if k != "name"}
        return method_params_model(self.name).model_validate(fields)


class RunConfig(StrictModel):
    model: ModelConfig
    data: DataConfig
    method: MethodConfig
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    output_dir: str = "runs/${method.name}"
    """A new or empty folder, or one a run created (it holds ``.vgid-run``); never a folder of other files."""
    save_every: int = Field(0, ge=0)
    """Checkpoint every N optimiser steps (0: only at the end and on SIGTERM/SIGUSR1)."""
    keep_checkpoints: bool = False
    """Keep the last checkpoint (DeepSpeed's layout: ``checkpoints/global_stepN`` + ``latest``) once the run is
    done; false: removed after DONE (the optimiser state is 12 bytes per trained parameter)."""
    ds_config: str = "zero3"
    """A DeepSpeed JSON path, or the name of a packaged one: zero3, zero3_offload, zero2."""
    log_every: int | None = Field(None, gt=0)
    """Print one line every N optimiser steps (loss terms, lr, samples/s, ETA). None: a progress bar per run on a
    terminal, a line at every tenth of the run elsewhere. ``train_log.jsonl`` holds every step either way."""
    dist_timeout_s: int = Field(1800, gt=0)
    """Process-group timeout: a stuck collective raises after this many seconds instead of idling."""
    max_consecutive_nonfinite: int = Field(3, gt=0)
    """Steps with a non-finite loss are skipped on every rank; this many in a row stop the run (checkpointed)."""

    @field_validator("output_dir")
    @classmethod
    def _output_dir_given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("output_dir: empty; a run needs a folder of its own (the current folder is never "
                             "used), e.g. output_dir=runs/my-run")
        return value

    @field_validator("method")
    @classmethod
    def _method_params_valid(cls, method: MethodConfig) -> MethodConfig:
        try:
            method.params()
        except KeyError as exc:  # unknown method name; the message lists the known ones
            raise ValueError(exc.args[0]) from None
        except ValidationError as exc:
            model = method_params_model(method.name)
            raise ValueError("; ".join(_describe(err, prefix="method.", model=model) for err in exc.errors())) from None
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


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds (``LoraConfig | None`` -> LoraConfig), or None for a plain value."""
    for t in (annotation, *get_args(annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _leaf_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted field path of ``model``: ``optim.lr``, ``model.lora.r``, ..."""
    out = []
    for name, field in model.model_fields.items():
        inner = _section_model(field.annotation)
        out += _leaf_paths(inner, f"{prefix}{name}.") if inner else [f"{prefix}{name}"]
    return out


def unknown_key_hint(model: type[BaseModel], loc: tuple, prefix: str = "") -> str:
    """``; did you mean optim.lr?`` for an unknown key at ``loc`` inside ``model``: the closest keys of the
    same section, else the fields anywhere in the model whose own name is close (``lrr`` -> ``optim.lr``)."""
    section, path = model, prefix
    for part in loc[:-1]:
        field = section.model_fields.get(str(part))
        section = _section_model(field.annotation) if field else None
        if section is None:
            return ""
        path += f"{part}."
    key = str(loc[-1])
    if close_names(key, section.model_fields):
        return did_you_mean(key, section.model_fields, prefix=path)
    by_name: dict[str, list[str]] = {}
    for leaf in _leaf_paths(model):
        by_name.setdefault(leaf.rsplit(".", 1)[-1], []).append(prefix + leaf)
    close = [leaf for name in close_names(key, by_name) for leaf in by_name[name]]
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _describe(err: dict, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    loc = prefix + ".".join(str(p) for p in err["loc"])
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key" + (unknown_key_hint(model, err["loc"], prefix) if model else "")
    elif err["type"] == "literal_error" and "expected" in err.get("ctx", {}):
        msg = f"expected one of {err['ctx']['expected']}, got {err['input']!r}"
    elif err["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
        if msg.startswith(loc) or not loc:
            return msg
    elif "input" in err and err["type"] not in ("missing",):
        msg = f"{msg} (got {err['input']!r})"
    return f"{loc or '(top level)'}: {msg}"


def format_validation_error(exc: ValidationError, source: str, model: type[BaseModel] | None = None) -> str:
    """``source: invalid configuration`` and one line per error; with ``model`` (what was validated), an
    unknown key names the closest known ones."""
    lines = [f"{source}: invalid configuration"]
    lines += [f"  {_describe(err, model=model)}" for err in exc.errors()]
    return "\n".join(lines)
