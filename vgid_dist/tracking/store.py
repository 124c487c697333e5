"""The MLflow client of one store (the only place that opens one), and the runs it holds read back as plain
data."""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vgid_dist.errors import TrackingError
from vgid_dist.tracking.names import PARENT_TAG, eval_metrics, tracking_uri


def _quiet() -> None:
    # The SQLite store logs its schema migrations at INFO on first use, on every process.
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking"):
        logging.getLogger(name).setLevel(logging.WARNING)


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
    """The MLflow client of one store: experiments, runs, batched logging, artifacts, reading back."""

    def __init__(self, uri: str | None = None):
        _quiet()
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(uri)
        if self.uri.startswith("sqlite:///"):
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
        if self.uri.startswith("sqlite:///"):
            return (Path(self.uri[len("sqlite:///"):]).parent / "mlruns").as_uri()
        return None

    # -- experiments and runs ---------------------------------------------------------------------------------
    def experiment_id(self, name: str, *, create: bool = True) -> str | None:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                raise TrackingError(f"{self.uri}: experiment {name!r} is deleted; restore it or choose another name")
            return exp.experiment_id
        if not create:
            return None
        root = self._artifact_root()
        try:
            return self.client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None)
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
                   parent_id: str | None = None, status: str = "RUNNING") -> str:
        tags = dict(tags)
        if parent_id:
            tags[PARENT_TAG] = parent_id
        run = self.client.create_run(experiment_id, tags=tags, run_name=name)
        if status != "RUNNING":
            self.client.update_run(run.info.run_id, status=status)
        return run.info.run_id

    def set_status(self, run_id: str, status: str) -> None:
        if status in ("FINISHED", "FAILED", "KILLED"):
            self.client.set_terminated(run_id, status)
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
        """One call per 1000 metrics / 100 params (the store's batch limits)."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, step) for k, v in (metrics or {}).items()]
        ps = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
        ts = [RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()]
        for i in range(0, max(len(ms), 1), 1000):
            if ms[i:i + 1000]:
                self.client.log_batch(run_id, metrics=ms[i:i + 1000])
        for i in range(0, len(ps), 100):
            self.client.log_batch(run_id, params=ps[i:i + 100])
        if ts:
            self.client.log_batch(run_id, tags=ts)

    def log_files(self, run_id: str, files: Iterable[Path], artifact_path: str | None = None) -> None:
        for f in files:
            if Path(f).is_file():
                self.client.log_artifact(run_id, str(f), artifact_path)

    def log_text(self, run_id: str, text: str, name: str, artifact_path: str | None = None) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(text)
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_eval(self, run_id: str, results: Mapping[str, Any], *, attack: str | None = None, step: int = 0,
                 prefix: str = "") -> None:
        self.log(run_id, metrics=eval_metrics(results, attack, prefix), step=step)

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




def ui_command(uri: str, host: str, port: int) -> list[str]:
    """The MLflow server command serving ``uri`` (a SQLite file or a folder) to the browser."""
    # One worker: a personal browser, not a shared tracking server.
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", "1"]
    if uri.startswith("sqlite:///"):
        # Runs logged straight to the file store keep their artifacts in ./mlruns beside it.
        cmd += ["--default-artifact-root", (Path(uri[len("sqlite:///"):]).parent / "mlruns").as_uri()]
    return cmd
