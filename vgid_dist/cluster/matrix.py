"""Sweep matrices: a YAML of models x forget ratios x methods x seeds, expanded into one job per cell.

A matrix is given as a path or as the name of a packaged one (``vgid_dist/recipes/matrices/*.yaml``)::

    name: tiny-matrix
    models:                       # name -> recipe (+ overrides, resources)
      tiny: {recipe: tiny}
    forget_ratios: [5, 10]
    methods:                      # name -> parameters of the method (empty: the method's defaults)
      vgid: {}
      ga: {}
    seeds: [42]                   # optional; absent: the recipe's seed
    overrides: [max_steps=4]      # every cell
    reference: [base]             # evaluate the untouched model per model x ratio (Table 3's Base row)
    resources: {gpus_per_node: 8, time_min: 240, partition: gpu}
    cells:                        # per-cell overrides, matched on model / forget_ratio / method / seed
      - match: {model: tiny, method: ga}
        overrides: [optim.lr=1e-4]

A matrix may start from another with ``extends: <matrix>`` (its keys merged over the parent's).

Each cell is a recipe plus ``key=value`` overrides with its own output_dir
(``<root>/<model>/fr<ratio>/<method>[/seed<seed>]``). Resources merge matrix <- model <- method <- cell rule.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vgid_dist.config import RECIPES_DIR, format_validation_error, load_recipe_dict, packaged_file
from vgid_dist.config.recipes import read_extending
from vgid_dist.errors import ConfigError
from vgid_dist.vocab import ForgetRatio, InstructionStyle

MATRICES_DIR = RECIPES_DIR / "matrices"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Resources(_Strict):
    """What one cell's job asks Slurm for. Unset fields inherit from the level above."""

    nodes: int | None = Field(None, gt=0)
    gpus_per_node: int | None = Field(None, ge=0)
    tasks_per_node: int | None = Field(None, gt=0)
    """Default: one task per GPU (gpus_per_node), one task without GPUs."""
    cpus_per_task: int | None = Field(None, gt=0)
    mem_gb: float | None = Field(None, gt=0)
    time_min: int | None = Field(None, gt=0)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    signal_delay_s: int | None = Field(None, ge=0)
    """Seconds before the time limit when Slurm signals the job, so it can be requeued."""
    sbatch: dict[str, str | int | bool] = {}
    """Extra ``#SBATCH`` options, e.g. ``{constraint: h100, exclusive: true}`` (merged across levels)."""
    setup: list[str] | None = None
    """Shell lines run in the job script before srun (``module load cuda/12.4``, ``source env/bin/activate``)."""
    python: str | None = None
    """The command that runs Python in a job, default this one's interpreter; a container wrapper such as
    ``apptainer exec --nv vgid.sif python`` runs every task in the image (docker/README.md)."""


RESOURCE_DEFAULTS = {"nodes": 1, "gpus_per_node": 0, "cpus_per_task": 1, "time_min": 60, "signal_delay_s": 120}


class ModelEntry(_Strict):
    recipe: str
    overrides: list[str] = []
    resources: Resources = Resources()


class MethodEntry(_Strict):
    params: dict[str, Any] = {}
    """The method's parameters (``method.<key>``); absent keys keep the recipe's or the method's defaults."""
    overrides: list[str] = []
    resources: Resources = Resources()


class RelearnSpec(_Strict):
    """The relearning attack run after a cell's training when its attacks hold ``relearn`` (``vgid attack
    relearn`` on the cell's model): fine-tune on a fraction of the forget profiles, score the others."""

    steps: int = Field(10, ge=1)
    subset: float = Field(0.34, gt=0, lt=1)
    """Fraction of the forget profiles whose training pairs are fitted (the rest are scored)."""
    lora: bool = False
    lr: float | None = Field(None, gt=0)
    """Learning rate of the attack (default: the cell recipe's)."""
    seed: int = 0


class CellRule(_Strict):
    match: dict[Literal["model", "forget_ratio", "method", "seed"], str | int]
    overrides: list[str] = []
    resources: Resources = Resources()
    attacks: list[Literal["reverse", "relearn"]] | None = None


class Matrix(_Strict):
    name: str
    description: str = ""
    experiment: str | None = None
    """Default MLflow experiment (``--experiment`` overrides); default: the matrix name."""
    models: dict[str, ModelEntry]
    forget_ratios: list[ForgetRatio]
    methods: dict[str, MethodEntry]
    seeds: list[int] | None = None
    overrides: list[str] = []
    reference: list[Literal["base", "icu", "mllmeraser"]] = []
    """Evaluations of each untouched model per forget ratio, logged on the sweep's parent run: ``base`` (plain),
    ``icu`` (the unlearning instruction before every question) and ``mllmeraser`` (activation steering: its
    file is built in the job from the forget/retain training pairs, then applied); none of them trains."""
    icu_style: InstructionStyle = "strict"
    attacks: list[Literal["reverse", "relearn"]] = []
    """Also evaluate every trained cell under these attacks: ``reverse`` (Table 6), ``relearn`` (the relearning
    attack, see ``relearn``); cell rules may change it per cell."""
    relearn: RelearnSpec = RelearnSpec()
    reference_attacks: list[Literal["reverse"]] | None = None
    """Attacks for the reference evaluations (default: ``attacks`` other than ``relearn``, which needs training)."""
    env: dict[str, str] = {}
    """Environment of every job (set before anything is imported there, e.g. OMP_NUM_THREADS)."""
    resources: Resources = Resources()
    cells: list[CellRule] = []

    @field_validator("models", "methods", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # ``models: {tiny: tiny}`` and ``methods: {ga: null}`` are accepted as shorthands.
        if isinstance(value, dict):
            return {k: ({"recipe": v} if isinstance(v, str) else ({} if v is None else v)) for k, v in value.items()}
        return value

    @field_validator("models", "methods")
    @classmethod
    def _names(cls, value: dict) -> dict:
        if not value:
            raise ValueError("expected at least one entry")
        for key in value:
            if not NAME.match(key):
                raise ValueError(f"{key!r}: names may hold letters, digits, '.', '_' and '-' (they name folders)")
        return value

    @field_validator("forget_ratios")
    @classmethod
    def _ratios(cls, value: list) -> list:
        if not value:
            raise ValueError("expected at least one forget ratio (5, 10, 15)")
        return value


@dataclass(frozen=True)
class Cell:
    """One training job of a sweep."""

    model: str
    forget_ratio: int
    method: str
    seed: int | None
    recipe: str
    overrides: tuple[str, ...]
    output_dir: Path
    resources: dict[str, Any] = field(hash=False)
    attacks: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.model}-fr{self.forget_ratio}-{self.method}" + (f"-s{self.seed}" if self.seed is not None else "")


@dataclass(frozen=True)
class ReferenceJob:
    """The untouched model of one (model, forget ratio) evaluated as Table 3's Base (and ICU) rows."""

    model: str
    forget_ratio: int
    evaluations: tuple[tuple[str, str | None], ...]
    """(name, attack) pairs: ("base", None), ("icu", None), ("base", "reverse"), ..."""
    recipe: str
    overrides: tuple[str, ...]
    folder: Path
    icu_style: str
    resources: dict[str, Any] = field(hash=False)

    @property
    def name(self) -> str:
        return f"{self.model}-fr{self.forget_ratio}-reference"


def matrix_path(name_or_path: str) -> Path:
    return packaged_file(name_or_path, MATRICES_DIR, (".yaml", ".yml"), "matrix")


def packaged_matrices() -> list[str]:
    return sorted(p.stem for p in MATRICES_DIR.glob("*.yaml"))


def load_matrix_dict(name_or_path: str) -> tuple[dict, Path]:
    """The matrix as plain data, with an ``extends: <matrix name or path>`` parent merged under it (the
    child's keys win; mappings such as ``methods`` merge key by key, lists such as ``overrides`` replace)."""
    return read_extending(name_or_path, matrix_path)


def load_matrix(name_or_path: str) -> tuple[Matrix, Path]:
    data, path = load_matrix_dict(name_or_path)
    try:
        return Matrix.model_validate(data), path
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path), Matrix)) from None


def merge_resources(*levels: Resources) -> dict[str, Any]:
    """Defaults <- each level's set fields; ``sbatch`` options merge key by key."""
    out: dict[str, Any] = dict(RESOURCE_DEFAULTS)
    sbatch: dict[str, Any] = {}
    for level in levels:
        for key, value in level.model_dump(exclude_unset=True).items():
            if key == "sbatch":
                sbatch.update(value)
            elif value is not None:
                out[key] = value
    if out.get("tasks_per_node") is None:
        out["tasks_per_node"] = out["gpus_per_node"] or 1
    out["sbatch"] = sbatch
    return out


def _recipe_ref(recipe: str, matrix_file: Path) -> str:
    """A recipe path relative to the matrix file when it exists there, else the reference as given."""
    local = matrix_file.parent / recipe
    if Path(recipe).suffix in (".yaml", ".yml") and not Path(recipe).is_absolute() and local.is_file():
        return str(local)
    return recipe


def method_overrides(recipe_method: str | None, method: str, params: dict[str, Any]) -> list[str]:
    """The recipe's method section kept and adjusted (same method), or replaced (another method)."""
    if method == recipe_method:
        return [f"method.{k}={json.dumps(v)}" for k, v in params.items()]
    return [f"method={json.dumps({'name': method, **params})}"]


def _matches(rule: CellRule, model: str, ratio: int, method: str, seed: int | None) -> bool:
    values = {"model": model, "forget_ratio": ratio, "method": method, "seed": seed}
    return all(str(values[k]) == str(v) for k, v in rule.match.items())


def expand(matrix: Matrix, matrix_file: Path, root: Path, extra: list[str] = ()) -> list[Cell]:
    """Every cell, in model, forget ratio, method, seed order. ``extra`` overrides (from the command line) win
    over the matrix's, but not over what makes the cell (forget ratio, seed, output_dir)."""
    cells = []
    for model, m in matrix.models.items():
        recipe = _recipe_ref(m.recipe, matrix_file)
        recipe_method = (load_recipe_dict(recipe).get("method") or {}).get("name")
        for ratio in matrix.forget_ratios:
            for method, meth in matrix.methods.items():
                for seed in matrix.seeds or [None]:
                    rules = [r for r in matrix.cells if _matches(r, model, ratio, method, seed)]
                    folder = root / model / f"fr{ratio}" / method
                    if seed is not None and len(matrix.seeds) > 1:
                        folder = folder / f"seed{seed}"
                    overrides = [*m.overrides, *method_overrides(recipe_method, method, meth.params),
                                 *matrix.overrides, *meth.overrides, *(o for r in rules for o in r.overrides),
                                 *extra, f"data.forget_ratio={ratio}", *([f"optim.seed={seed}"] if seed is not None else []),
                                 f"output_dir={folder}"]
                    attacks = matrix.attacks
                    for r in rules:
                        if r.attacks is not None:
                            attacks = r.attacks
                    cells.append(Cell(model=model, forget_ratio=ratio, method=method, seed=seed, recipe=recipe,
                                      overrides=tuple(overrides), output_dir=folder,
                                      resources=merge_resources(matrix.resources, m.resources, meth.resources,
                                                                *(r.resources for r in rules)),
                                      attacks=tuple(attacks)))
    return cells


def reference_jobs(matrix: Matrix, matrix_file: Path, root: Path, extra: list[str] = ()) -> list[ReferenceJob]:
    if not matrix.reference:
        return []
    attacks = ([a for a in matrix.attacks if a != "relearn"] if matrix.reference_attacks is None
               else matrix.reference_attacks)
    evaluations = tuple((name, attack) for attack in (None, *attacks) for name in matrix.reference)
    jobs = []
    for model, m in matrix.models.items():
        for ratio in matrix.forget_ratios:
            jobs.append(ReferenceJob(model=model, forget_ratio=ratio, evaluations=evaluations,
                                     recipe=_recipe_ref(m.recipe, matrix_file),
                                     overrides=(*m.overrides, *matrix.overrides, *extra,
                                                f"data.forget_ratio={ratio}"),
                                     folder=root / model / f"fr{ratio}" / "reference", icu_style=matrix.icu_style,
                                     resources=merge_resources(matrix.resources, m.resources)))
    return jobs


def validate(cells: list[Cell], references: list[ReferenceJob]) -> dict[str, str]:
    """Load every cell's configuration (nothing is built or loaded): {job name: error} for those that fail."""
    from vgid_dist.config import load_run_config

    errors = {}
    for job in [*cells, *references]:
        try:
            load_run_config(job.recipe, list(job.overrides))
        except ConfigError as exc:
            errors[job.name] = str(exc)
    return errors
