"""The MLflow client of one store (the only place that opens one), whether a store answers (checked in seconds,
without mlflow), and the runs it holds read back as plain data."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vgid_dist.errors import TrackingError
from vgid_dist.tracking.names import PARENT_TAG, TRACKING_ENV, eval_metrics, tracking_uri

# MLflow retries a failed HTTP call 7 times with a backoff factor of 2 (about 4 minutes) before it gives up.
# A training job sets these shorter (a variable the user set wins): a store that does not answer is then
# known in seconds, and the background sender gives up instead of retrying for minutes at every step.
TRAINING_HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                          "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def use_training_http_settings() -> None:
    for key, value in TRAINING_HTTP_SETTINGS.items():
        os.environ.setdefault(key, value)


def _quiet() -> None:
    # The SQLite store logs its schema migrations at INFO on first use, on every process. The system-metrics
    # monitor says at INFO that it started and that it found no GPU (every CPU-only run), and warns when it
    # cannot reach the store (which the tracking's own message says once).
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def store_problem(uri: str, timeout: float = 5.0) -> str | None:
    """Why the store at ``uri`` cannot be used, or None when it answers. No mlflow: plain HTTP for a server
    (any HTTP reply counts as an answer: only a refused, timed-out or unresolvable connection does not), a
    writable folder for a local SQLite file or file store. Other schemes (databricks, ...) are not checked."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
                return None
        except urllib.error.HTTPError:
            return None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return f"{uri} does not answer: {type(reason).__name__}: {reason}"
    path = _sqlite_path(uri) or (None if "://" in uri and not uri.startswith("file://") else
                                 Path(uri.removeprefix("file://")))
    if path is None:
        return None
    folder = path.parent if _sqlite_path(uri) else path
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not os.access(existing, os.W_OK):
        return f"{uri}: cannot write in {existing or folder}"
    return None


def check_store(uri: str | None = None, timeout: float = 5.0) -> str:
    """The store's URI when it can be used; else a TrackingError that says how to go on without it."""
    uri = tracking_uri(uri)
    problem = store_problem(uri, timeout)
    if problem:
        raise TrackingError(f"MLflow tracking store unavailable: {problem}. Start the server, point "
                            f"MLFLOW_TRACKING_URI at one that answers, or run without tracking: {TRACKING_ENV}=off")
    return uri


# MLflow 3's browser opens an experiment of this kind on its runs table and a run on its training metrics (the
# other kind, GenAI development, opens on traces); runs tracked here are training runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


@dataclass
class RunRecord:
    """A run read back from the store, as plain data."""

    run_id: str
    name: str
    status: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    parent_id: str | None = field(default=None)
    start_time: int = 0


class Tracker:
    """The MLflow client of one store: experiments, runs, logging, artifacts, reading back.

    ``create=False`` opens an existing store only (reading never creates a SQLite file or a folder)."""

    def __init__(self, uri: str | None = None, *, create: bool = True):
        _quiet()
        self.uri = check_store(uri)
        local = _sqlite_path(self.uri)
        if not create and ((local is not None and not local.is_file()) or
                           ("://" not in self.uri and not Path(self.uri).is_dir())):
            raise TrackingError(f"no tracking store at {self.uri}: nothing was tracked there yet (a run tracks into "
                                "./mlflow.db of the folder it started in, or into MLFLOW_TRACKING_URI)")
        from mlflow.tracking import MlflowClient

        if local is not None and create:
            # Two processes creating the same new SQLite store race on its schema migration. The lock lives in
            # the temporary folder, keyed by the store's path, so the working folder holds only the store.
            import hashlib

            from vgid_dist.assets import file_lock

            key = hashlib.sha1(self.uri.encode()).hexdigest()[:16]
            with file_lock(Path(tempfile.gettempdir()) / f"vgid-mlflow-{key}.lock"):
                self.client = MlflowClient(tracking_uri=self.uri)
                self.client.search_experiments(max_results=1)
        else:
            self.client = MlflowClient(tracking_uri=self.uri)

    def _artifact_root(self) -> str | None:
        # Keep a local store's artifacts beside its database, whatever the working folder of the process.
        local = _sqlite_path(self.uri)
        return (local.parent / "mlruns").as_uri() if local is not None else None

    # -- experiments and runs ---------------------------------------------------------------------------------
    def experiment_id(self, name: str, *, create: bool = True) -> str | None:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                raise TrackingError(f"{self.uri}: experiment {name!r} is deleted; restore it or choose another name")
            if create and EXPERIMENT_KIND_TAG not in exp.tags:
                self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
            return exp.experiment_id
        if not create:
            return None
        root = self._artifact_root()
        try:
            return self.client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None,
                                                 tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
        except MlflowException:
            # Another job created it between the lookup and the create.
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def get_run(self, run_id: str):
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return None
        return None if run.info.lifecycle_stage == "deleted" else run

    def create_run(self, experiment_id: str, name: str, tags: Mapping[str, str], *,
                   parent_id: str | None = None, status: str = "RUNNING", start_time: float | None = None) -> str:
        """A new run with the tags ``mlflow.start_run`` sets (user, source, git commit of the entry script,
        parent) beside ``tags``; ``start_time`` in seconds since the epoch (default now)."""
        from mlflow.tracking.context.registry import resolve_tags

        tags = dict(tags)
        if parent_id:
            tags[PARENT_TAG] = parent_id
        resolved = resolve_tags(tags)
        if tags.get("git_commit"):
            # The package's commit when the entry script (submitit's, in a sweep job) is outside the repository.
            resolved.setdefault("mlflow.source.git.commit", tags["git_commit"])
        run = self.client.create_run(experiment_id, tags=resolved, run_name=name,
                                     start_time=int(start_time * 1000) if start_time else None)
        if status != "RUNNING":
            self.client.update_run(run.info.run_id, status=status)
        return run.info.run_id

    def set_status(self, run_id: str, status: str, *, end_time: float | None = None) -> None:
        """``end_time`` in seconds since the epoch (default now) for a terminal status."""
        if status in ("FINISHED", "FAILED", "KILLED"):
            self.client.set_terminated(run_id, status, end_time=int(end_time * 1000) if end_time else None)
        else:
            self.client.update_run(run_id, status=status)

    def status(self, run_id: str | None) -> str | None:
        run = self.get_run(run_id) if run_id else None
        return run.info.status if run is not None else None

    def run_in_experiment(self, run_id: str | None, experiment_id: str):
        run = self.get_run(run_id) if run_id else None
        return run if run is not None and run.info.experiment_id == experiment_id else None

    # -- logging ----------------------------------------------------------------------------------------------
    def log(self, run_id: str, *, metrics: Mapping[str, float] | None = None, step: int = 0,
            params: Mapping[str, str] | None = None, tags: Mapping[str, str] | None = None) -> None:
        """One ``log_batch`` (MLflow splits it at the store's batch limits); values longer than the store
        takes are cut."""
        self.log_steps(run_id, {step: metrics} if metrics else {}, params=params, tags=tags)

    def log_steps(self, run_id: str, steps: Mapping[int, Mapping[str, float]], *,
                  params: Mapping[str, str] | None = None, tags: Mapping[str, str] | None = None) -> None:
        """The metrics of several steps (``{step: {name: value}}``), params and tags in one ``log_batch``."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, int(step)) for step, values in steps.items() for k, v in values.items()]
        ps = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
        ts = [RunTag(k, str(v)[:8000]) for k, v in (tags or {}).items()]
        if ms or ps or ts:
            self.client.log_batch(run_id, metrics=ms, params=ps, tags=ts)

    def log_files(self, run_id: str, files: Iterable[Path], artifact_path: str | None = None) -> None:
        for f in files:
            if Path(f).is_file():
                self.client.log_artifact(run_id, str(f), artifact_path)

    def log_file_as(self, run_id: str, path: Path, artifact_file: str) -> None:
        """``path`` under another name (``artifact_file``, a path inside the run's artifacts)."""
        import shutil

        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / Path(artifact_file).name
            shutil.copyfile(path, target)
            self.client.log_artifact(run_id, str(target), str(Path(artifact_file).parent) if "/" in artifact_file
                                     else None)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_dict(self, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
        self.client.log_dict(run_id, dict(data), artifact_file)

    def log_eval(self, run_id: str, results: Mapping[str, Any], *, attack: str | None = None, step: int = 0,
                 prefix: str = "") -> None:
        self.log(run_id, metrics=eval_metrics(results, attack, prefix), step=step)

    def last_step(self, run_id: str, key: str = "train/loss") -> int:
        """The highest step the store holds for ``key`` (0 when none)."""
        return max((m.step for m in self.client.get_metric_history(run_id, key)), default=0)

    def system_metrics(self, run_id: str, *, resume: bool):
        """MLflow's system-metrics monitor (CPU, memory, disk, network; GPUs when ``nvidia-ml-py`` is installed)
        logging ``system/...`` to ``run_id`` from its own thread, or None without psutil. Its ``finish()``
        stops it."""
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        except ImportError:
            return None
        try:
            monitor = SystemMetricsMonitor(run_id, resume_logging=resume, tracking_uri=self.uri)
        except Exception as exc:  # psutil missing or a monitor that cannot start: the run goes on without
            print(f"[vgid] note: no system metrics ({exc})", file=sys.stderr, flush=True)
            return None
        monitor.start()
        return monitor

    # -- reading back -----------------------------------------------------------------------------------------
    def runs(self, experiment_id: str, filter_string: str = "") -> list[RunRecord]:
        out: list[RunRecord] = []
        token = None
        while True:
            page = self.client.search_runs([experiment_id], filter_string=filter_string, max_results=1000,
                                           page_token=token)
            for r in page:
                out.append(RunRecord(run_id=r.info.run_id, name=r.info.run_name or "", status=r.info.status,
                                     tags=dict(r.data.tags), params=dict(r.data.params),
                                     metrics=dict(r.data.metrics), parent_id=r.data.tags.get(PARENT_TAG),
                                     start_time=r.info.start_time or 0))
            token = page.token
            if not token:
                return out

    def download(self, run_id: str, path: str, dst: Path) -> Path | None:
        from mlflow.exceptions import MlflowException

        try:
            return Path(self.client.download_artifacts(run_id, path, str(dst)))
        except (MlflowException, OSError):
            return None
