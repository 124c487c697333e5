"""MLflow tracking: the only module that imports mlflow, and only on rank 0.

One MLflow run per training job. Its id is kept in ``output_dir/mlflow_run_id``, so a requeued or re-run job
continues the same run instead of starting a second one. A sweep creates one parent run and one child run per
cell up front (status SCHEDULED); the job then resumes its child run.

Where runs go: ``MLFLOW_TRACKING_URI`` when set (a server, ``http://...``), else a SQLite file under the
working folder (``./mlflow.db``, artifacts in ``./mlruns``), which needs no server. ``VGID_TRACKING=off``
disables tracking.

What a training run holds:
  params     the flattened resolved configuration (``optim.lr``, ``method.alpha``, ...)
  tags       model, forget_ratio, method, seed, git_commit, slurm_job_id (under Slurm), output_dir
  metrics    ``train/<loss term>``, ``train/lr``, ``train/grad_norm``, ``train/samples_per_s``,
             ``train/tokens_per_s``, ``train/mfu`` (GPU), ``train/peak_mem_gib`` per step;
             ``forget/gen_rougeL``, ``retain/class_acc``, ... from the evaluation
             (``reverse/forget/gen_rougeL`` for an evaluation under the reverse attack)
  artifacts  config.yaml, metrics.json, train_log.jsonl, eval.json, eval.predictions.jsonl, table3.md
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRACKING_ENV = "VGID_TRACKING"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
PARENT_ENV = "VGID_MLFLOW_PARENT_RUN_ID"
MODEL_ENV = "VGID_MODEL_NAME"
DEFAULT_EXPERIMENT = "vgid"
RUN_ID_FILE = "mlflow_run_id"
SPLITS = ("forget", "test", "retain", "celebrity")
PARENT_TAG = "mlflow.parentRunId"
KIND_TAG = "vgid.kind"  # "train" (one per training job) or "sweep" (a sweep's parent)

# Dense bf16 peak of common training GPUs (TFLOP/s), for the MFU estimate; VGID_PEAK_TFLOPS overrides.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "V100": 125.0}


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message names the URI and how to turn tracking off."""


def enabled() -> bool:
    return os.environ.get(TRACKING_ENV, "on").strip().lower() not in ("0", "off", "false", "no")


def default_store() -> Path:
    return Path.cwd() / "mlflow.db"


def tracking_uri(uri: str | None = None) -> str:
    """The store runs go to, made absolute: a relative SQLite or file path would mean another folder in a
    job whose working directory differs from the submitter's."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{default_store()}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    if "://" not in uri:
        return str(Path(uri).resolve())
    return uri


def _quiet() -> None:
    # The SQLite store logs its schema migrations at INFO on first use, on every process.
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_name(model: str, forget_ratio: int, method: str, seed: int | None = None) -> str:
    return f"{model}-fr{forget_ratio}-{method}" + (f"-s{seed}" if seed is not None else "")


def eval_metric_key(split: str, metric: str, attack: str | None = None) -> str:
    return f"{attack}/{split}/{metric}" if attack else f"{split}/{metric}"


def eval_metrics(results: Mapping[str, Any], attack: str | None = None, prefix: str = "") -> dict[str, float]:
    """``{split: {metric: v}, by_type: {split: {type: {metric: v}}}}`` -> ``{"forget/gen_rougeL": v,
    "forget/Pure_Text/gen_rougeL": v, ...}`` (under ``<attack>/`` and ``prefix`` when given)."""
    out: dict[str, float] = {}
    for split in SPLITS:
        for metric, value in (results.get(split) or {}).items():
            if isinstance(value, (int, float)):
                out[prefix + eval_metric_key(split, metric, attack)] = float(value)
        for qtype, metrics in ((results.get("by_type") or {}).get(split) or {}).items():
            for metric, value in metrics.items():
                if isinstance(value, (int, float)):
                    out[prefix + eval_metric_key(f"{split}/{qtype}", metric, attack)] = float(value)
    return out


def reference_prefix(model: str, forget_ratio: int, name: str) -> str:
    """Metric prefix of a sweep's reference evaluation (the untouched model, ``base`` or ``icu``), logged on
    the sweep's parent run: ``ref/<model>/fr<ratio>/<name>/``."""
    return f"ref/{model}/fr{forget_ratio}/{name}/"


def step_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The trainer's per-step dict -> ``train/...`` metric names (scored-token counts under
    ``train/scored_tokens/``)."""
    out = {}
    for key, value in metrics.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            continue
        if key.startswith("tokens/"):
            out[f"train/scored_tokens/{key[len('tokens/'):]}"] = float(value)
        else:
            out[f"train/{key}"] = float(value)
    return out


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


def read_run_id(folder: Path, name: str = RUN_ID_FILE) -> str | None:
    path = Path(folder) / name
    text = path.read_text().strip() if path.is_file() else ""
    return text or None


def write_run_id(folder: Path, run_id: str, name: str = RUN_ID_FILE) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp"
    tmp.write_text(run_id + "\n")
    os.replace(tmp, folder / name)


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


# ----------------------------------------------------------------------------------------------------------------
# A run of one training job


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
        self._tokens = {"student": 0, "frozen": 0}
        self._hooks: list = []

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
                self._setup_throughput(trainer)
            except Exception as exc:  # any store failure ends the run the same way
                error = (f"MLflow tracking at {tracking_uri(self.uri)} failed: {type(exc).__name__}: {exc}. "
                         f"Start the server, point MLFLOW_TRACKING_URI elsewhere, or set {TRACKING_ENV}=off")
                self.fail()
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
        values.update(self._throughput(metrics.get("step_time_s")))
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
        for hook in self._hooks:
            hook.remove()
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

    def fail(self, status: str = "FAILED") -> None:
        """The job stopped with an error (``KILLED`` for an interrupt): say so in the run."""
        if self.run_id is None:
            return
        try:
            self._tracker.set_status(self.run_id, status)
        except Exception as exc:  # the job's own error is the one to report
            print(f"[vgid] warning: could not mark MLflow run {self.run_id} {status}: {exc}", file=sys.stderr)

    # -- throughput -------------------------------------------------------------------------------------------
    def _setup_throughput(self, trainer) -> None:
        """Count the tokens each forward of the student and of the frozen model sees on this rank (forward
        pre-hooks); with the parameter count they give tokens/s and, on GPU, an MFU estimate."""
        self._out = trainer.out
        self._method = trainer.cfg.method.name
        self._world = trainer.strategy.world_size
        self._on_gpu = trainer.strategy.on_gpu
        self._device = trainer.strategy.device
        student = trainer.student.module
        # Under ZeRO-3 a parameter holds only its shard; ds_numel is the full size.
        self._n_params = sum(getattr(p, "ds_numel", p.numel()) for p in student.parameters())
        self._peak_flops = _peak_flops() if self._on_gpu else None

        import torch

        def count_student(module, args, kwargs):
            # The student's module also serves as the frozen model in LoRA mode (adapters off, no grad);
            # evaluation forwards (eval mode) are not training throughput.
            if module.training:
                self._count("student" if torch.is_grad_enabled() else "frozen", args, kwargs)

        def count_frozen(module, args, kwargs):
            self._count("frozen", args, kwargs)

        self._hooks.append(student.register_forward_pre_hook(count_student, with_kwargs=True))
        if trainer.frozen is not None and trainer.frozen.module is not student:
            self._hooks.append(trainer.frozen.module.register_forward_pre_hook(count_frozen, with_kwargs=True))

    def _count(self, key: str, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and hasattr(ids, "numel"):
            self._tokens[key] += int(ids.numel())

    def _throughput(self, step_time: float | None) -> dict[str, float]:
        out: dict[str, float] = {}
        tokens, frozen = self._tokens["student"], self._tokens["frozen"]
        self._tokens = {"student": 0, "frozen": 0}
        if step_time and step_time > 0 and tokens:
            out["train/tokens_per_s"] = tokens * self._world / step_time
            if self._peak_flops:
                # 6 N flops per trained token (forward + backward), 2 N per frozen-model token; attention's
                # quadratic term is left out, as in the usual estimate.
                flops = 6 * self._n_params * tokens + 2 * self._n_params * frozen
                out["train/mfu"] = flops / (step_time * self._peak_flops)
        out["train/peak_mem_gib"] = _peak_memory_gib(self._on_gpu, self._device)
        return out


def _peak_flops() -> float | None:
    import torch

    if os.environ.get("VGID_PEAK_TFLOPS"):
        return float(os.environ["VGID_PEAK_TFLOPS"]) * 1e12
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def _peak_memory_gib(on_gpu: bool, device) -> float:
    if on_gpu:
        import torch

        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def callback_for(config: str) -> TrackingCallback | None:
    """The callback ``train_entry`` attaches, or None when ``VGID_TRACKING=off``. The ``model`` tag is the
    recipe's name unless ``VGID_MODEL_NAME`` says otherwise (a sweep cell sets it)."""
    if not enabled():
        return None
    return TrackingCallback(model=Path(config).stem if config.endswith((".yaml", ".yml")) else config)


# ----------------------------------------------------------------------------------------------------------------
# The browser


def ui_command(uri: str, host: str, port: int) -> list[str]:
    """The MLflow server command serving ``uri`` (a SQLite file or a folder) to the browser."""
    # One worker: a personal browser, not a shared tracking server.
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", "1"]
    if uri.startswith("sqlite:///"):
        # Runs logged straight to the file store keep their artifacts in ./mlruns beside it.
        cmd += ["--default-artifact-root", (Path(uri[len("sqlite:///"):]).parent / "mlruns").as_uri()]
    return cmd
