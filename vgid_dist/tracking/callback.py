"""The trainer callback that logs one training job to MLflow, from rank 0 only."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vgid_dist.errors import TrackingError
from vgid_dist.tracking.names import (
    DEFAULT_EXPERIMENT,
    EXPERIMENT_ENV,
    MODEL_ENV,
    PARENT_ENV,
    TRACKING_ENV,
    enabled,
    step_metrics,
    tracking_uri,
)
from vgid_dist.tracking.runs import log_output_artifacts, start_or_resume
from vgid_dist.tracking.store import Tracker


class TrackingCallback:
    """Trainer callback: logs one training job to MLflow from rank 0. Other ranks only take part in the one
    broadcast that tells every rank whether the store could be opened (so all ranks stop together)."""

    def __init__(self, *, model: str, uri: str | None = None, experiment: str | None = None,
                 parent_id: str | None = None):
        self.model = os.environ.get(MODEL_ENV) or model
        self.uri = uri
        self.experiment = experiment or os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT
        self.parent_id = parent_id or os.environ.get(PARENT_ENV)
        self.run_id: str | None = None
        self.error: str | None = None
        self._tracker: Tracker | None = None
        self._step = 0
        self._results: dict | None = None
        self._warned = False

    # -- events -----------------------------------------------------------------------------------------------
    def on_start(self, trainer) -> None:
        strategy = trainer.strategy
        error = None
        if strategy.is_main:
            try:
                self._tracker = Tracker(self.uri)
                self.run_id = start_or_resume(self._tracker, trainer.cfg, model=self.model,
                                              experiment=self.experiment, parent_id=self.parent_id)
                self._tracker.log(self.run_id, tags={"world_size": str(strategy.world_size),
                                                     "device": "cuda" if strategy.on_gpu else "cpu"})
                self._out = trainer.out
                self._method = trainer.cfg.method.name
            except Exception as exc:  # any store failure ends the run the same way
                error = (f"MLflow tracking at {tracking_uri(self.uri)} failed: {type(exc).__name__}: {exc}. "
                         f"Start the server, point MLFLOW_TRACKING_URI elsewhere, or set {TRACKING_ENV}=off")
                self.on_failure()
                self.run_id = None
        # Every rank calls the broadcast (a collective): if rank 0 cannot track, all ranks stop here together
        # instead of the others waiting for it in the first training all-reduce.
        error = strategy.broadcast_object(error)
        if error:
            raise TrackingError(error)

    def on_step(self, step: int, metrics: Mapping[str, Any]) -> None:
        if self.run_id is None:
            return
        self._step = step
        values = step_metrics(metrics)
        try:
            self._tracker.log(self.run_id, metrics=values, step=step)
        except Exception as exc:  # a lost metric must not stop hours of training
            if not self._warned:
                print(f"[vgid] warning: MLflow logging failed at step {step} ({exc}); training continues, "
                      "later steps are still sent", file=sys.stderr, flush=True)
                self._warned = True

    def on_eval(self, results: Mapping[str, Any] | None) -> None:
        if self.run_id is None or not results:
            return
        self._results = dict(results)
        try:
            self._tracker.log_eval(self.run_id, results, step=self._step)
        except Exception as exc:  # recorded; on_end marks the run failed
            self.error = f"MLflow: logging evaluation metrics failed: {exc}"

    def on_end(self, summary: Mapping[str, Any]) -> None:
        if self.run_id is None:
            return
        # Never raises: rank 0 must reach the trainer's final barrier, where the other ranks wait.
        try:
            self._tracker.log(self.run_id, metrics={"train/total_seconds": float(summary.get("train_seconds", 0.0)),
                                                    "train/steps": float(summary.get("steps", 0))},
                              step=self._step)
            log_output_artifacts(self._tracker, self.run_id, self._out, method=self._method, results=self._results)
            self._tracker.set_status(self.run_id, "FAILED" if self.error else "FINISHED")
        except Exception as exc:
            self.error = f"MLflow: finishing run {self.run_id} at {self._tracker.uri} failed: {exc}"
            print(f"[vgid] error: {self.error}", file=sys.stderr, flush=True)

    def on_failure(self, status: str = "FAILED") -> None:
        """The job stopped with an error (``KILLED`` for an interrupt): say so in the run."""
        if self.run_id is None:
            return
        try:
            self._tracker.set_status(self.run_id, status)
        except Exception as exc:  # the job's own error is the one to report
            print(f"[vgid] warning: could not mark MLflow run {self.run_id} {status}: {exc}", file=sys.stderr)


def callback_for(config: str) -> TrackingCallback | None:
    """The callback a training job attaches, or None when ``VGID_TRACKING=off``. The ``model`` tag is the
    recipe's name unless ``VGID_MODEL_NAME`` says otherwise (a sweep cell sets it)."""
    if not enabled():
        return None
    return TrackingCallback(model=Path(config).stem if config.endswith((".yaml", ".yml")) else config)


