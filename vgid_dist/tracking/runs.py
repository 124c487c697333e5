"""Runs: the MLflow run of one training job (created or continued from ``output_dir/mlflow_run_id``, its
params and tags, the artifacts of its output folder), recording a finished output folder into the store, and
``open_run``: one run with params, metrics and files for any other command."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vgid_dist.errors import TrackingError
from vgid_dist.tracking.names import (
    DEFAULT_EXPERIMENT,
    EXPERIMENT_ENV,
    KIND_TAG,
    MODEL_ENV,
    PARENT_TAG,
    read_run_id,
    run_name,
    step_metrics,
    write_run_id,
)
from vgid_dist.tracking.store import Tracker


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        res = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                             check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def environment_tags() -> dict[str, str]:
    """Where the job ran and which code it ran: the host, the package's git commit and whether tracked files
    differ from it (``git_commit``, ``git_dirty``: a sweep job's entry script is submitit's, outside the
    repository, so MLflow's own ``mlflow.source.git.commit`` may be missing), Slurm's job ids."""
    tags = {"host": socket.gethostname()}
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["git_commit"] = commit
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        if dirty is not None:
            tags["git_dirty"] = str(bool(dirty)).lower()
    for env, tag in (("SLURM_JOB_ID", "slurm_job_id"), ("SLURM_ARRAY_JOB_ID", "slurm_array_job_id"),
                     ("SLURM_RESTART_COUNT", "slurm_restart_count")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def config_params(cfg) -> dict[str, str]:
    from vgid_dist.config import flatten

    return {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v)
            for k, v in flatten(cfg.model_dump(mode="json")).items()}


def run_tags(cfg, model: str) -> dict[str, str]:
    return {"model": model, "forget_ratio": str(cfg.data.forget_ratio), "method": cfg.method.name,
            "seed": str(cfg.optim.seed), "output_dir": str(cfg.resolved_output_dir().resolve()),
            KIND_TAG: "train"}


def start_or_resume(tracker: Tracker, cfg, *, model: str, experiment: str, parent_id: str | None = None,
                    start_time: float | None = None, log=print) -> tuple[str, bool]:
    """(run id, resumed) of ``cfg``'s output_dir: the run named in ``output_dir/mlflow_run_id`` when it belongs
    to this experiment, is not finished and has the same params (a requeued or rerun job: it continues), else
    a new one starting at ``start_time``. A sweep's placeholder (SCHEDULED, created at submission) is replaced
    by a run that starts now, so the run's duration is the job's, not its time in the queue. Params and tags
    are logged; the id is written back to output_dir."""
    out = cfg.resolved_output_dir()
    exp_id = tracker.experiment_id(experiment)
    params = config_params(cfg)
    tags = {**run_tags(cfg, model), **environment_tags()}
    run = tracker.run_in_experiment(read_run_id(out), exp_id)
    name = run_name(model, cfg.data.forget_ratio, cfg.method.name, cfg.optim.seed)
    if run is not None:
        changed = [k for k, v in run.data.params.items() if k in params and params[k] != v]
        if run.info.status == "FINISHED":
            log(f"[vgid] MLflow run {run.info.run_id} of {out} is finished; starting a new run")
            run = None
        elif changed:
            log(f"[vgid] MLflow run {run.info.run_id} of {out} has other values for {', '.join(changed[:5])}; "
                "starting a new run")
            run = None
        elif run.info.status == "SCHEDULED":
            tags = {**{k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}, **tags}
            parent_id = parent_id or run.data.tags.get("mlflow.parentRunId")
            name = run.info.run_name or name
            tracker.client.delete_run(run.info.run_id)
            run = None
    if run is not None:
        run_id = run.info.run_id
        tracker.set_status(run_id, "RUNNING")
        tracker.log(run_id, params={k: v for k, v in params.items() if k not in run.data.params}, tags=tags)
        log(f"[vgid] MLflow: continuing run {run_id} ({tracker.uri}, experiment {experiment!r})")
        return run_id, True
    run_id = tracker.create_run(exp_id, name, tags, parent_id=parent_id or None, start_time=start_time)
    write_run_id(out, run_id)
    tracker.log(run_id, params=params)
    log(f"[vgid] MLflow: run {run_id} ({tracker.uri}, experiment {experiment!r})")
    return run_id, False


def evaluation_files(out: Path) -> list[Path]:
    """An output folder's evaluations: ``eval.json``, ``eval_step<N>.json``, ``eval-<attack>.json`` and
    their predictions."""
    out = Path(out)
    return sorted(out.glob("eval*.json")) + sorted(out.glob("eval*.predictions.jsonl"))


def output_artifacts(tracker: Tracker, run_id: str, out: Path, *, method: str,
                     results: Mapping[str, Any] | None) -> None:
    """What a finished output_dir holds, as artifacts: config.yaml, metrics.json, train_log.jsonl, the
    evaluations (``eval/``) and, for an evaluated run, its Table 3 (``table3.md``)."""
    out = Path(out)
    tracker.log_files(run_id, [out / n for n in ("config.yaml", "metrics.json", "train_log.jsonl")])
    tracker.log_files(run_id, evaluation_files(out), "eval")
    if results:
        from vgid_dist.eval.report import table3_markdown

        tracker.log_text(run_id, table3_markdown({method: results}) + "\n", "table3.md")


def _read_log(path: Path, after: int) -> dict[int, dict[str, float]]:
    """``{step: train/... metrics}`` of the lines of ``train_log.jsonl`` after step ``after``; a torn last
    line (a write cut off) is left out."""
    steps: dict[int, dict[str, float]] = {}
    if not path.is_file():
        return steps
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        step = int(row.pop("step", 0))
        if step > after:
            steps[step] = step_metrics(row)
    return steps


def _finished_span(out: Path) -> tuple[float | None, float | None]:
    """(start, end) of a finished output folder in seconds since the epoch: the end from DONE, the start that
    much earlier than the training's own time in metrics.json (None when unknown)."""
    try:
        end = float(json.loads((out / "DONE").read_text())["finished"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, None
    try:
        seconds = float(json.loads((out / "metrics.json").read_text()).get("train_seconds", 0.0))
    except (OSError, ValueError, AttributeError):
        seconds = 0.0
    return end - seconds, end


def import_finished_output(tracker: Tracker, out: Path, *, experiment: str, model: str,
                           parent_id: str | None = None, run_id: str | None = None) -> str:
    """Record a finished output_dir (DONE present) as a FINISHED run: params from config.yaml, the steps of
    train_log.jsonl, evaluation metrics and artifacts. ``run_id``, when the store has it unfinished (tracking
    lost during training), is completed: only the steps after the last one it holds are sent. Used by
    ``vgid track`` and by a sweep re-submitted against a store that lost (or never saw) a finished cell."""
    import yaml

    from vgid_dist.config import build_run_config

    out = Path(out)
    cfg = build_run_config(yaml.safe_load((out / "config.yaml").read_text()), str(out / "config.yaml"))
    exp_id = tracker.experiment_id(experiment)
    run = tracker.run_in_experiment(run_id, exp_id) if run_id else None
    start, end = _finished_span(out)
    params = config_params(cfg)
    if run is None or run.info.status == "FINISHED":
        run_id = tracker.create_run(exp_id, run_name(model, cfg.data.forget_ratio, cfg.method.name,
                                                     cfg.optim.seed), {}, parent_id=parent_id, start_time=start)
        after = 0
    else:
        params = {k: v for k, v in params.items() if k not in run.data.params}
        after = tracker.last_step(run_id)
    tracker.log_steps(run_id, _read_log(out / "train_log.jsonl", after), params=params,
                      tags={**run_tags(cfg, model), "imported_from": str(out.resolve())})
    results = None
    if (out / "eval.json").is_file():
        results = json.loads((out / "eval.json").read_text())
        tracker.log_eval(run_id, results)
    for path in sorted(out.glob("eval-*.json")):
        tracker.log_eval(run_id, json.loads(path.read_text()), attack=path.stem[len("eval-"):])
    output_artifacts(tracker, run_id, out, method=cfg.method.name, results=results)
    tracker.set_status(run_id, "FINISHED", end_time=end)
    write_run_id(out, run_id)
    return run_id


def record_output(out: Path, *, experiment: str | None = None, uri: str | None = None) -> tuple[str, str]:
    """(run id, store URI) of a finished output folder recorded in the store (``vgid track``): its run is
    completed when the store has it unfinished, left alone when finished; a folder the store has no run of
    gets a new one in ``experiment``."""
    import yaml

    out = Path(out)
    if not (out / "DONE").is_file() or not (out / "config.yaml").is_file():
        raise TrackingError(f"{out}: not a finished run's output folder (DONE or config.yaml missing); rerun its "
                            "training command to finish it first")
    tracker = Tracker(uri)
    run = tracker.get_run(read_run_id(out) or "")
    if run is not None and run.info.status == "FINISHED":
        return run.info.run_id, tracker.uri
    if run is not None:
        name = tracker.client.get_experiment(run.info.experiment_id).name
        model = run.data.tags.get("model")
    else:
        name = experiment or os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT
        model = None
    model = model or os.environ.get(MODEL_ENV) or Path(yaml.safe_load((out / "config.yaml").read_text())
                                                       ["model"]["path"]).name
    run_id = import_finished_output(tracker, out, experiment=name, model=model,
                                    parent_id=run.data.tags.get(PARENT_TAG) if run is not None else None,
                                    run_id=run.info.run_id if run is not None else None)
    return run_id, tracker.uri


class OneRun:
    """One MLflow run that a command fills in (``open_run``): params, metrics, tags, files, text and dicts as
    artifacts. FINISHED when the ``with`` block ends, FAILED when it raises."""

    def __init__(self, tracker: Tracker, run_id: str):
        self.tracker, self.run_id = tracker, run_id

    def log(self, *, metrics: Mapping[str, float] | None = None, step: int = 0,
            params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None) -> None:
        self.tracker.log(self.run_id, metrics=metrics, step=step,
                         params={k: str(v) for k, v in (params or {}).items()},
                         tags={k: str(v) for k, v in (tags or {}).items()})

    def log_files(self, files: Iterable[Path], folder: str | None = None) -> None:
        self.tracker.log_files(self.run_id, files, folder)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.tracker.log_text(self.run_id, text, artifact_file)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self.tracker.log_dict(self.run_id, data, artifact_file)

    def __enter__(self) -> OneRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.tracker.set_status(self.run_id, "FAILED" if exc_type else "FINISHED")


def open_run(name: str, *, experiment: str | None = None, kind: str, params: Mapping[str, Any] | None = None,
             tags: Mapping[str, Any] | None = None, parent_id: str | None = None, uri: str | None = None) -> OneRun:
    """A new run named ``name`` in ``experiment`` (default ``MLFLOW_EXPERIMENT_NAME``, else ``vgid``) of the
    store (``MLFLOW_TRACKING_URI``, else ./mlflow.db), tagged ``vgid.kind=<kind>`` plus MLflow's user, source
    and git tags; use it as a context manager::

        with open_run("forget-alice", kind="forget", params={"people": 3}) as run:
            run.log(metrics={"forget/gen_rougeL": 0.2})
            run.log_dict(audit, "audit.json")
    """
    tracker = Tracker(uri)
    exp_id = tracker.experiment_id(experiment or os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT)
    run = OneRun(tracker, tracker.create_run(exp_id, name, {KIND_TAG: kind, **environment_tags()},
                                              parent_id=parent_id))
    run.log(params=params, tags=tags)
    return run
