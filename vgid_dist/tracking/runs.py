"""The MLflow run of one training job: created or continued from ``output_dir/mlflow_run_id``, its params and
tags, the artifacts of a finished output folder, and recording a finished folder the store never saw."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vgid_dist.tracking.names import (
    KIND_TAG,
    read_run_id,
    run_name,
    step_metrics,
    write_run_id,
)
from vgid_dist.tracking.store import Tracker


def git_commit() -> str | None:
    root = Path(__file__).resolve().parents[1]
    try:
        res = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return None
    return res.stdout.strip() or None


def git_dirty() -> bool | None:
    """Whether tracked files differ from the commit (the run's code is then not exactly ``git_commit``)."""
    root = Path(__file__).resolve().parents[1]
    try:
        res = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return bool(res.stdout.strip()) if res.returncode == 0 else None


def environment_tags() -> dict[str, str]:
    tags = {"host": socket.gethostname()}
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
        dirty = git_dirty()
        if dirty is not None:
            tags["git_dirty"] = str(dirty).lower()
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
                    log=print) -> str:
    """The run of ``cfg``'s output_dir: the one named in ``output_dir/mlflow_run_id`` when it belongs to this
    experiment, is not finished and has the same params (a requeued job, or a sweep's pre-created child run),
    else a new one. Params and tags are logged; the id is written back to output_dir."""
    out = cfg.resolved_output_dir()
    exp_id = tracker.experiment_id(experiment)
    params = config_params(cfg)
    tags = {**run_tags(cfg, model), **environment_tags()}
    run = tracker.run_in_experiment(read_run_id(out), exp_id)
    if run is not None:
        changed = [k for k, v in run.data.params.items() if k in params and params[k] != v]
        if run.info.status == "FINISHED":
            log(f"[vgid] MLflow run {run.info.run_id} of {out} is finished; starting a new run")
            run = None
        elif changed:
            log(f"[vgid] MLflow run {run.info.run_id} of {out} has other values for {', '.join(changed[:5])}; "
                "starting a new run")
            run = None
    if run is not None:
        run_id = run.info.run_id
        tracker.set_status(run_id, "RUNNING")
        params = {k: v for k, v in params.items() if k not in run.data.params}
        log(f"[vgid] MLflow: continuing run {run_id} ({tracker.uri}, experiment {experiment!r})")
    else:
        parent_id = parent_id or None
        run_id = tracker.create_run(exp_id, run_name(model, cfg.data.forget_ratio, cfg.method.name,
                                                     cfg.optim.seed), {}, parent_id=parent_id)
        write_run_id(out, run_id)
        log(f"[vgid] MLflow: run {run_id} ({tracker.uri}, experiment {experiment!r})")
    tracker.log(run_id, params=params, tags=tags)
    return run_id


def log_output_artifacts(tracker: Tracker, run_id: str, out: Path, *, method: str,
                         results: Mapping[str, Any] | None) -> None:
    """What a finished output_dir holds, as artifacts, plus Table 3 of its evaluation."""
    out = Path(out)
    tracker.log_files(run_id, [out / n for n in ("config.yaml", "metrics.json", "train_log.jsonl")])
    tracker.log_files(run_id, sorted(out.glob("eval*.json")) + sorted(out.glob("eval*.predictions.jsonl")), "eval")
    if results:
        from vgid_dist.eval.report import table3_markdown

        tracker.log_text(run_id, table3_markdown({method: results}) + "\n", "table3.md")


def import_finished_output(tracker: Tracker, out: Path, *, experiment: str, model: str,
                           parent_id: str | None = None, run_id: str | None = None) -> str:
    """Record a finished output_dir (DONE present) that the store does not have as a FINISHED run: params
    from config.yaml, step metrics from train_log.jsonl, evaluation metrics and artifacts. Used when a sweep is
    re-submitted against a store that lost (or never saw) a finished cell, instead of training it again."""
    import yaml

    from vgid_dist.config import build_run_config

    out = Path(out)
    cfg = build_run_config(yaml.safe_load((out / "config.yaml").read_text()), str(out / "config.yaml"))
    exp_id = tracker.experiment_id(experiment)
    run = tracker.run_in_experiment(run_id, exp_id) if run_id else None
    if run is None or run.info.status == "FINISHED":
        run_id = tracker.create_run(exp_id, run_name(model, cfg.data.forget_ratio, cfg.method.name,
                                                     cfg.optim.seed), {}, parent_id=parent_id)
    params = config_params(cfg)
    if run is not None and run.info.status != "FINISHED":
        params = {k: v for k, v in params.items() if k not in run.data.params}
    tracker.log(run_id, params=params, tags={**run_tags(cfg, model), "imported_from": str(out.resolve())})
    log_path = out / "train_log.jsonl"
    if log_path.is_file():
        for line in log_path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                step = int(row.pop("step", 0))
                tracker.log(run_id, metrics=step_metrics(row), step=step)
    results = None
    if (out / "eval.json").is_file():
        results = json.loads((out / "eval.json").read_text())
        tracker.log_eval(run_id, results)
    for path in sorted(out.glob("eval-*.json")):
        tracker.log_eval(run_id, json.loads(path.read_text()), attack=path.stem[len("eval-"):])
    log_output_artifacts(tracker, run_id, out, method=cfg.method.name, results=results)
    tracker.set_status(run_id, "FINISHED")
    write_run_id(out, run_id)
    return run_id


