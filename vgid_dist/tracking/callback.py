"""The trainer callback that logs one training job to MLflow, from rank 0 only, without ever making training
wait: the run is opened when training starts (the store was checked before any model loaded, by
``callback_for``); everything after goes through a background ``Sender``."""

from __future__ import annotations

import logging
import os
import sys
import time
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
    system_metrics_enabled,
    tracking_uri,
)
from vgid_dist.tracking.runs import output_artifacts, start_or_resume
from vgid_dist.tracking.sender import Sender
from vgid_dist.tracking.store import Tracker, check_store, store_problem, use_training_http_settings

FINISH_TIMEOUT_S = 300.0
"""How long the end of a run waits for the last metrics and the output folder's files to reach the store."""
FAILURE_TIMEOUT_S = 20.0
"""The same for a run that stopped with an error or a signal (a preempted job has seconds left)."""


_process_run_started = False


def job_start() -> float:
    """When the run starts, in seconds since the epoch: the first run of a process starts with the process
    (imports, data and models load before training, and belong to the job's wall time); a later run of the same
    process (``vgid attack relearn`` over several models) when its callback is made."""
    global _process_run_started
    if not _process_run_started:
        _process_run_started = True
        try:
            import psutil

            return float(psutil.Process().create_time())
        except (ImportError, OSError):
            pass
    return time.time()


class TrackingCallback:
    """Trainer callback: logs one training job to MLflow from rank 0. Other ranks only take part in the one
    broadcast that tells every rank whether the run could be opened (so all ranks stop together).

    ``error`` is set when the run finished but its tracking did not (the store was lost, a file was refused):
    the training entry then exits with status 3 after everything else is done."""

    def __init__(self, *, model: str, uri: str | None = None, experiment: str | None = None,
                 parent_id: str | None = None):
        self.model = os.environ.get(MODEL_ENV) or model
        self.uri = uri
        self.experiment = experiment or os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT
        self.parent_id = parent_id or os.environ.get(PARENT_ENV)
        self.started_at = job_start()
        self.run_id: str | None = None
        self.error: str | None = None
        self._tracker: Tracker | None = None
        self._sender: Sender | None = None
        self._monitor = None
        self._step = 0
        self._results: dict | None = None

    # -- events -----------------------------------------------------------------------------------------------
    def on_start(self, trainer) -> None:
        strategy = trainer.strategy
        error = None
        if strategy.is_main:
            try:
                self._open(trainer)
            except Exception as exc:  # any store failure ends the run the same way
                error = (f"MLflow tracking at {tracking_uri(self.uri)} failed: {type(exc).__name__}: {exc}. "
                         f"Start the server, point MLFLOW_TRACKING_URI elsewhere, or set {TRACKING_ENV}=off")
                self.run_id = None
        # Every rank calls the broadcast (a collective): if rank 0 cannot track, all ranks stop here together
        # instead of the others waiting for it in the first training all-reduce.
        error = strategy.broadcast_object(error)
        if error:
            raise TrackingError(error)

    def _open(self, trainer) -> None:
        use_training_http_settings()
        tracker = self._tracker = Tracker(self.uri)
        self.run_id, resumed = start_or_resume(tracker, trainer.cfg, model=self.model, experiment=self.experiment,
                                               parent_id=self.parent_id, start_time=self.started_at)
        self._out, self._method = trainer.out, trainer.cfg.method.name
        self._sender = Sender(self._send_steps, lambda: store_problem(tracker.uri), on_lost=self._on_lost)
        tags = {"world_size": str(trainer.strategy.world_size), "device": "cuda" if trainer.strategy.on_gpu else "cpu"}
        self._sender.call("the run's tags", lambda: tracker.log(self.run_id, tags=tags))
        if system_metrics_enabled():
            # Rank 0's machine only: one monitor per run, no duplicate system/ series from other ranks.
            self._monitor = tracker.system_metrics(self.run_id, resume=resumed)

    def on_step(self, step: int, metrics: Mapping[str, Any]) -> None:
        if self._sender is None:
            return
        self._step = step
        self._sender.metrics(step, step_metrics(metrics))

    def _send_steps(self, steps: dict[int, dict[str, float]]) -> None:
        self._tracker.log_steps(self.run_id, steps)

    def on_eval(self, results: Mapping[str, Any] | None) -> None:
        if self._sender is None or not results:
            return
        results, step = dict(results), self._step
        self._results = results  # the last one sent is the final evaluation (eval.json) when there is one
        self._sender.call(f"the evaluation at step {step}",
                          lambda: self._tracker.log_eval(self.run_id, results, step=step))

    def on_end(self, summary: Mapping[str, Any]) -> None:
        if self._sender is None:
            return
        # Never raises: rank 0 must reach the trainer's final barrier, where the other ranks wait.
        tracker, sender, run_id, results = self._tracker, self._sender, self.run_id, self._results
        totals = {"train/total_seconds": float(summary.get("train_seconds", 0.0)),
                  "train/steps": float(summary.get("steps", 0))}
        sender.call("the run's totals", lambda: tracker.log(run_id, metrics=totals, step=self._step))
        if sender.dropped_steps:
            print(f"[vgid] warning: the metrics of {sender.dropped_steps} steps were not sent (the store was slower "
                  "than training); they are in train_log.jsonl", file=sys.stderr, flush=True)
            sender.call("the dropped-steps tag",
                        lambda: tracker.log(run_id, tags={"vgid.tracking.dropped_steps": str(sender.dropped_steps)}))
        self._stop_monitor()
        sender.call("the output folder's files",
                    lambda: output_artifacts(tracker, run_id, self._out, method=self._method, results=results))
        sender.call("the run's end",
                    lambda: tracker.set_status(run_id, "FAILED" if sender.failed else "FINISHED"))
        finished = sender.close(FINISH_TIMEOUT_S)
        self.error = self._outcome(finished)

    def on_failure(self, status: str = "FAILED") -> None:
        """The job stopped with an error (``KILLED`` for a stop signal or an interrupt): say so in the run, if
        the store can be told within ``FAILURE_TIMEOUT_S``. Never raises: the job's own error is the one to
        report."""
        if self._sender is None:
            return
        self._stop_monitor()
        tracker, run_id = self._tracker, self.run_id
        self._sender.call(f"the run's status {status}", lambda: tracker.set_status(run_id, status))
        if not self._sender.close(FAILURE_TIMEOUT_S) or self._sender.lost:
            print(f"[vgid] warning: MLflow run {run_id} could not be marked {status}", file=sys.stderr, flush=True)

    # -- the outcome ------------------------------------------------------------------------------------------
    def _on_lost(self, reason: str, what: str) -> None:
        """Said once, from the sender's thread, when it gives up."""
        print(f"[vgid] warning: MLflow tracking lost while sending {what}: {reason}. Training goes on without it; "
              f"{Path(self._out) / 'train_log.jsonl'} keeps every logged step", file=sys.stderr, flush=True)
        self._stop_monitor()

    def _stop_monitor(self) -> None:
        monitor, self._monitor = self._monitor, None
        if monitor is None:
            return
        if self._sender.lost:
            # Its own failure to reach the store would only repeat what was said.
            logging.getLogger("mlflow.system_metrics").setLevel(logging.CRITICAL)
        try:
            monitor.finish()
        except Exception:  # system metrics are a convenience: never the reason a run fails
            pass

    def _outcome(self, finished: bool) -> str | None:
        """None when the store holds the whole run; else what the user is told (exit status 3)."""
        sender = self._sender
        head = (f"MLflow tracking {{}}; the training itself finished: {self._out} holds the model, metrics.json, "
                f"train_log.jsonl and DONE. ")
        fix = (f" Once the store answers, `vgid track {self._out}` records what is missing into run {self.run_id}"
               " (VGID_TRACKING=off trains without tracking).")
        if sender.lost is not None:
            return (head.format("was lost") + f"The store stopped answering while sending {sender.lost_during} "
                    f"({sender.lost}); run {self.run_id} holds the steps up to {sender.last_sent_step} and stays "
                    f"RUNNING." + fix)
        if not finished:
            return (head.format("is incomplete") + f"The last files were still being sent to {self._tracker.uri} "
                    f"after {FINISH_TIMEOUT_S:.0f} s." + fix)
        if sender.failed:
            more = f" (and {len(sender.failed) - 1} more)" if len(sender.failed) > 1 else ""
            return (head.format("is incomplete") + f"{self._tracker.uri} refused {sender.failed[0]}{more}; run "
                    f"{self.run_id} is marked FAILED." + fix)
        return None


def callback_for(config: str) -> TrackingCallback | None:
    """The callback a training job attaches, or None when ``VGID_TRACKING=off``. The store is checked here, on
    every rank, before anything is built or loaded: one that does not answer fails in seconds, saying how to
    go on without it. The ``model`` tag is the recipe's name unless ``VGID_MODEL_NAME`` says otherwise (a
    sweep cell sets it)."""
    if not enabled():
        return None
    check_store()
    return TrackingCallback(model=Path(config).stem if config.endswith((".yaml", ".yml")) else config)
