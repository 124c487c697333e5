"""What a launched training job runs: a recipe and its overrides, read and validated, the packaged tiny assets
built where the recipe names them, and the callbacks the run asks for (MLflow tracking unless
``VGID_TRACKING=off``; evaluation with ``eval.every_steps`` / ``eval.at_end``), handed to the engine's entry.

Shared by ``vgid train``, ``launch/train.py`` (deepspeed, torchrun, the Slurm scripts) and sweep cells.
"""

from __future__ import annotations

from typing import Any

from vgid_dist.assets import resolve_assets
from vgid_dist.config import RunConfig, load_run_config
from vgid_dist.engine.entry import train
from vgid_dist.eval.callback import EvaluationCallback
from vgid_dist.tracking import callback_for


def run_callbacks(cfg: RunConfig, tracker) -> list:
    """Tracking first (it logs a step's metrics before an evaluation of that step sends its results)."""
    callbacks: list = [tracker] if tracker is not None else []
    if EvaluationCallback.wanted(cfg):
        callbacks.append(EvaluationCallback(cfg))
    return callbacks


def train_recipe(recipe: str, overrides: list[str], *, force: bool = False) -> dict[str, Any]:
    """One training run of ``recipe`` (a packaged name or a YAML path) with ``key=value`` overrides; returns its
    summary, raises ``vgid_dist.errors`` for refused input and stopped runs."""
    cfg = load_run_config(recipe, overrides)
    tracker = callback_for(recipe)  # the store is checked here: before any asset is built or model loaded
    cfg = resolve_assets(cfg)
    return train(cfg, force=force, callbacks=run_callbacks(cfg, tracker))
