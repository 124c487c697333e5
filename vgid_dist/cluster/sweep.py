"""``vgid sweep``: expand a matrix, create the MLflow parent run and one child run per cell, submit every cell
that is not finished, and optionally wait for all of them.

Layout under the sweep root (``--out``, default ``runs/sweeps/<experiment>``)::

    mlflow_parent_run_id          the parent run (reused when the same sweep is submitted again)
    sweep.json                    cells, job ids, run ids of the last submission
    submitit/<job id>/            submitit's pickles and logs (stdout/stderr of every task)
    <model>/fr<ratio>/<method>/   one cell's output_dir (mlflow_run_id, config.yaml, model/, eval.json, DONE)
    <model>/fr<ratio>/reference/  evaluations of the untouched model (base.json, icu.json)
    report/                       Table 3 and the trade-off figures (after --wait)

A cell is finished when its output_dir has DONE and its run is FINISHED; finished cells are skipped. A cell
with DONE whose run the store does not have FINISHED is recorded from its output_dir, not trained again.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vgid_dist.cluster.executor import (
    attach_slurm_job,
    choose_executor,
    make_executor,
    sbatch_script,
    slurm_active,
    slurm_parameters,
    wait_jobs,
)
from vgid_dist.cluster.matrix import Cell, Matrix, ReferenceJob, expand, load_matrix, reference_jobs, validate
from vgid_dist.cluster.tasks import CellTask, ReferenceTask, log_reference
from vgid_dist.io import write_json_atomic

PARENT_FILE = "mlflow_parent_run_id"


@dataclass
class SweepPlan:
    matrix: Matrix
    matrix_file: Path
    experiment: str
    root: Path
    cells: list[Cell]
    references: list[ReferenceJob]
    overrides: list[str]


def plan_sweep(matrix_ref: str, *, experiment: str | None = None, out: str | None = None,
               overrides: list[str] = ()) -> SweepPlan:
    matrix, path = load_matrix(matrix_ref)
    experiment = experiment or matrix.experiment or matrix.name
    root = Path(out or Path("runs") / "sweeps" / experiment).expanduser().resolve()
    overrides = list(overrides)
    return SweepPlan(matrix, path, experiment, root, expand(matrix, path, root, overrides),
                     reference_jobs(matrix, path, root, overrides), overrides)


def describe(plan: SweepPlan, kind: str) -> str:
    """The cells and, per job, what is asked of the scheduler (``--dry-run``)."""
    lines = [f"matrix {plan.matrix.name} ({plan.matrix_file}) -> experiment {plan.experiment!r}, root {plan.root}",
             f"{len(plan.cells)} cells, {len(plan.references)} reference jobs, executor {kind}", ""]
    for job in [*plan.cells, *plan.references]:
        lines.append(f"== {job.name}")
        lines.append(f"   recipe {job.recipe}")
        lines.append(f"   overrides {' '.join(job.overrides)}")
        if isinstance(job, ReferenceJob):
            lines.append(f"   evaluations {', '.join(n + (f'+{a}' if a else '') for n, a in job.evaluations)}")
        elif job.attacks:
            lines.append(f"   attacks {', '.join(job.attacks)}")
        params = slurm_parameters(job.resources, job.name)
        lines.append("   submitit " + " ".join(f"{k}={v}" for k, v in params.items()))
        if kind == "slurm":
            header = [line for line in sbatch_script(job.resources, job.name, plan.root / "submitit").splitlines()
                      if line.startswith("#SBATCH") or line.startswith("srun") or line.startswith("module")]
            lines += [f"   {line}" for line in header]
    return "\n".join(lines)


def _job_env(plan: SweepPlan, tracker, parent_id: str | None, model: str) -> dict[str, str]:
    from vgid_dist import tracking

    env = dict(plan.matrix.env)
    env[tracking.MODEL_ENV] = model
    env[tracking.EXPERIMENT_ENV] = plan.experiment
    if tracker is not None:
        env["MLFLOW_TRACKING_URI"] = tracker.uri
        if parent_id:
            env[tracking.PARENT_ENV] = parent_id
    else:
        env[tracking.TRACKING_ENV] = "off"
    # Jobs find the tiny assets where this process built them.
    from vgid_dist.assets import cache_dir

    env["VGID_CACHE_DIR"] = str(cache_dir())
    for key in ("TORCH_EXTENSIONS_DIR",):
        if os.environ.get(key):
            env[key] = os.environ[key]
    return env


def _prepare_assets(plan: SweepPlan, log) -> None:
    """Build the packaged tiny assets once, here, rather than in the first job under its time limit (the
    others would queue on the build lock)."""
    from vgid_dist.assets import TINY_PREFIX, resolve_tiny_path
    from vgid_dist.config import load_run_config

    seen = set()
    for job in [*plan.cells, *plan.references]:
        cfg = load_run_config(job.recipe, list(job.overrides))
        for value in (cfg.data.root, cfg.model.path):
            if value.startswith(TINY_PREFIX) and value not in seen:
                seen.add(value)
                resolve_tiny_path(value, log=log)


def _cell_state(tracker, exp_id: str | None, cell: Cell) -> tuple[str, str | None]:
    """(``finished`` | ``record`` | ``submit``, run id of the output_dir in this experiment)."""
    from vgid_dist import tracking

    run_id = tracking.read_run_id(cell.output_dir)
    run = tracker.run_in_experiment(run_id, exp_id) if tracker is not None and run_id else None
    complete = (cell.output_dir / "DONE").exists() and all(
        (cell.output_dir / f"eval-{a}.json").is_file() for a in cell.attacks)
    if complete:
        if tracker is None or (run is not None and run.info.status == "FINISHED"):
            return "finished", run_id
        return "record", run.info.run_id if run is not None else None
    return "submit", run.info.run_id if run is not None else None


def run_sweep(matrix_ref: str, *, executor: str = "auto", wait: bool = False, experiment: str | None = None,
              out: str | None = None, dry_run: bool = False, wait_timeout_s: float | None = None,
              overrides: list[str] = (), log=print) -> int:
    """Returns 0 when every submitted job was accepted (and, with ``wait``, finished), else non-zero."""
    from vgid_dist import tracking

    plan = plan_sweep(matrix_ref, experiment=experiment, out=out, overrides=overrides)
    kind = choose_executor(executor)
    errors = validate(plan.cells, plan.references)
    if dry_run:
        log(describe(plan, kind))
        for name, err in errors.items():
            log(f"\ninvalid cell {name}:\n{err}")
        return 2 if errors else 0
    if errors:
        for name, err in errors.items():
            log(f"invalid cell {name}:\n{err}")
        log(f"{len(errors)} of {len(plan.cells) + len(plan.references)} jobs are invalid; nothing was submitted")
        return 2

    _prepare_assets(plan, log)
    plan.root.mkdir(parents=True, exist_ok=True)
    tracker = tracking.Tracker() if tracking.enabled() else None
    exp_id = tracker.experiment_id(plan.experiment) if tracker is not None else None
    parent_id = _parent_run(tracker, exp_id, plan) if tracker is not None else None
    if tracker is not None:
        log(f"[sweep] MLflow {tracker.uri}: experiment {plan.experiment!r}, parent run {parent_id}")

    record: dict[str, dict] = {}
    earlier = {name: job_id for name, job_id in _earlier_jobs(plan).items() if kind == "slurm" and slurm_active(job_id)}
    queue = _queue_cells(plan, tracker, exp_id, parent_id, earlier, record, log)
    queue += _queue_references(plan, tracker, parent_id, earlier, record, log)
    submitted, rejected, outcomes = _submit(plan, kind, queue, earlier, tracker, record, wait_timeout_s, log)
    _write_record(plan, parent_id, record)

    if not submitted and not rejected:
        log("[sweep] nothing to run: every cell is finished")
    if not wait and kind == "slurm":
        if tracker is not None:
            tracker.log(parent_id, tags={"vgid.sweep.state": "failed" if rejected else "submitted"})
            tracker.set_status(parent_id, "FAILED" if rejected else "FINISHED")
        log(f"[sweep] {len(submitted)} jobs queued; the same command with --wait waits for them, "
            f"`vgid report --experiment {plan.experiment}` tabulates what has finished")
        return 1 if rejected else 0
    if kind == "slurm":
        outcomes = wait_jobs(submitted, kind, timeout_s=wait_timeout_s, on_finish=_reporter(log))
    failed = rejected + _settle(tracker, submitted, outcomes, record, log)
    _write_record(plan, parent_id, record)
    if tracker is not None:
        tracker.log(parent_id, tags={"vgid.sweep.state": "failed" if failed else "complete"})
        _report_into_parent(tracker, plan, parent_id, log)
        tracker.set_status(parent_id, "FAILED" if failed else "FINISHED")
    total = len(submitted) + len(rejected)
    log(f"[sweep] {total - len(failed)} of {total} jobs finished" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


# (name, task, resources); task None: a job of an earlier submission, still queued or running, to wait for rather
# than submit twice.
QueueEntry = tuple[str, Any, dict]


def _queue_cells(plan: SweepPlan, tracker, exp_id, parent_id, earlier: dict[str, str], record: dict,
                 log) -> list[QueueEntry]:
    """The cells to submit (or to wait for); finished ones are skipped, finished folders the store lacks are
    recorded. Each queued cell gets its child run now (SCHEDULED)."""
    from vgid_dist import tracking

    queue: list[QueueEntry] = []
    for cell in plan.cells:
        state, run_id = _cell_state(tracker, exp_id, cell)
        if state == "submit" and cell.name in earlier:
            record[cell.name] = {"state": "queued earlier", "run_id": run_id, "job_id": earlier[cell.name],
                                 "output_dir": str(cell.output_dir)}
            queue.append((cell.name, None, cell.resources))
            continue
        if state == "finished":
            log(f"[sweep] {cell.name}: finished (run {run_id}), skipped")
            record[cell.name] = {"state": "skipped", "run_id": run_id}
            continue
        if state == "record":
            run_id = tracking.import_finished_output(tracker, cell.output_dir, experiment=plan.experiment,
                                                     model=cell.model, parent_id=parent_id, run_id=run_id)
            log(f"[sweep] {cell.name}: output complete, recorded as run {run_id}, skipped")
            record[cell.name] = {"state": "recorded", "run_id": run_id}
            continue
        if tracker is not None:
            run_id = _child_run(tracker, exp_id, parent_id, cell, run_id)
        task = CellTask(name=cell.name, recipe=cell.recipe, overrides=list(cell.overrides),
                        output_dir=str(cell.output_dir), env=_job_env(plan, tracker, parent_id, cell.model),
                        attacks=list(cell.attacks), relearn=plan.matrix.relearn.model_dump())
        record[cell.name] = {"state": "submitted", "run_id": run_id, "output_dir": str(cell.output_dir)}
        queue.append((cell.name, task, cell.resources))
    return queue


def _queue_references(plan: SweepPlan, tracker, parent_id, earlier: dict[str, str], record: dict,
                      log) -> list[QueueEntry]:
    """The reference jobs with an evaluation still missing; results already on disk are logged on the parent
    run when it lacks them."""
    queue: list[QueueEntry] = []
    for ref in plan.references:
        missing = [(n, a) for n, a in ref.evaluations
                   if not (ref.folder / (f"{n}-{a}.json" if a else f"{n}.json")).is_file()]
        for n, a in ref.evaluations:
            target = ref.folder / (f"{n}-{a}.json" if a else f"{n}.json")
            if target.is_file() and tracker is not None and not _parent_has(tracker, parent_id, ref, n, a):
                log_reference(parent_id, ref.model, ref.forget_ratio, n, a, target)
        if not missing:
            log(f"[sweep] {ref.name}: evaluated, skipped")
            record[ref.name] = {"state": "skipped"}
            continue
        if ref.name in earlier:
            record[ref.name] = {"state": "queued earlier", "job_id": earlier[ref.name]}
            queue.append((ref.name, None, ref.resources))
            continue
        task = ReferenceTask(name=ref.name, model=ref.model, forget_ratio=ref.forget_ratio, recipe=ref.recipe,
                             overrides=list(ref.overrides), folder=str(ref.folder), evaluations=list(ref.evaluations),
                             icu_style=ref.icu_style, parent_run_id=parent_id,
                             env=_job_env(plan, tracker, parent_id, ref.model))
        record[ref.name] = {"state": "submitted"}
        queue.append((ref.name, task, ref.resources))
    return queue


def _submit(plan: SweepPlan, kind: str, queue: list[QueueEntry], earlier: dict[str, str], tracker, record: dict,
            wait_timeout_s: float | None, log) -> tuple[dict[str, Any], list[str], dict[str, str]]:
    """(submitted jobs by name, rejected names, outcomes of the local jobs, which run one at a time here)."""
    folder = plan.root / "submitit"
    submitted: dict[str, Any] = {}
    outcomes: dict[str, str] = {}
    rejected: list[str] = []
    for name, task, resources in queue:
        if task is None:
            submitted[name] = attach_slurm_job(folder, earlier[name], resources)
            log(f"[sweep] {name}: already queued or running (slurm job {earlier[name]})")
            continue
        try:
            job = make_executor(kind, folder, resources, name).submit(task)
        except Exception as exc:  # sbatch refused it (a partition or QOS this account lacks, ...)
            log(f"[sweep] {name}: submission failed: {exc}")
            record[name].update(state="rejected", outcome=str(exc))
            rejected.append(name)
            if tracker is not None and record[name].get("run_id"):
                tracker.set_status(record[name]["run_id"], "FAILED")
            continue
        submitted[name] = job
        record[name]["job_id"] = str(job.job_id)
        log(f"[sweep] {name}: submitted ({kind} job {job.job_id})")
        if kind == "local":
            # One job at a time on this machine: concurrent jobs would fight over its cores and GPUs.
            outcomes.update(wait_jobs({name: job}, kind, timeout_s=wait_timeout_s, on_finish=_reporter(log)))
    return submitted, rejected, outcomes


def _reporter(log):
    def report(name: str, outcome: str) -> None:
        log(f"[sweep] {name}: {outcome}")
    return report


def _settle(tracker, jobs: dict[str, Any], outcomes: dict[str, str], record: dict, log) -> list[str]:
    """Outcome of every job; a job that failed or vanished leaves its child run FAILED (the job may have died
    before its own code could say so)."""
    failed = []
    for name, job in jobs.items():
        outcome = outcomes.get(name, "timeout")
        error = None
        if outcome == "done":
            try:
                job.results()
            except Exception as exc:  # the job's own exception, re-raised by submitit with its traceback
                lines = [line.strip() for line in str(exc).splitlines()]
                causes = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
                error = causes[-1] if causes else f"{type(exc).__name__}: {lines[0] if lines else ''}"
        else:
            error = outcome
        record[name]["outcome"] = "ok" if error is None else error
        if error is None:
            continue
        failed.append(name)
        log(f"[sweep] {name} failed: {error}; logs in {job.paths.stdout.parent}")
        run_id = _current_run_id(record[name])
        if tracker is not None and run_id and tracker.status(run_id) in ("RUNNING", "SCHEDULED"):
            tracker.set_status(run_id, "FAILED")
    return failed


def _current_run_id(entry: dict) -> str | None:
    """A cell's run id as its job left it in the output_dir (the job replaces the placeholder created at
    submission by a run that starts with it), else the one recorded at submission."""
    from vgid_dist import tracking

    folder = entry.get("output_dir")
    run_id = tracking.read_run_id(Path(folder)) if folder else None
    if run_id:
        entry["run_id"] = run_id
    return entry.get("run_id")


def _parent_run(tracker, exp_id: str, plan: SweepPlan) -> str:
    """The sweep's parent run: the one recorded under the root when it is in this experiment, else new."""
    from vgid_dist import tracking

    run = tracker.run_in_experiment(tracking.read_run_id(plan.root, PARENT_FILE), exp_id)
    if run is not None:
        tracker.set_status(run.info.run_id, "RUNNING")
        return run.info.run_id
    run_id = tracker.create_run(exp_id, f"sweep-{plan.matrix.name}", {
        tracking.KIND_TAG: "sweep", "matrix": plan.matrix.name, "matrix_file": str(plan.matrix_file),
        "root": str(plan.root), **tracking.environment_tags()})
    tracker.log(run_id, params={"matrix.models": ",".join(plan.matrix.models),
                                "matrix.forget_ratios": ",".join(map(str, plan.matrix.forget_ratios)),
                                "matrix.methods": ",".join(plan.matrix.methods),
                                "matrix.seeds": ",".join(map(str, plan.matrix.seeds or [])),
                                "matrix.overrides": " ".join(plan.matrix.overrides),
                                "sweep.overrides": " ".join(plan.overrides),
                                "matrix.cells": str(len(plan.cells))})
    tracker.log_files(run_id, [plan.matrix_file])
    tracking.write_run_id(plan.root, run_id, PARENT_FILE)
    return run_id


def _child_run(tracker, exp_id: str, parent_id: str, cell: Cell, run_id: str | None) -> str:
    """The cell's run, created before the job starts (SCHEDULED) so the matrix shows in the browser at once;
    an unfinished run of an earlier submission is reused."""
    from vgid_dist import tracking

    tags = {"model": cell.model, "forget_ratio": str(cell.forget_ratio), "method": cell.method,
            "output_dir": str(cell.output_dir), tracking.KIND_TAG: "train", tracking.PARENT_TAG: parent_id}
    if cell.seed is not None:
        tags["seed"] = str(cell.seed)
    status = tracker.status(run_id) if run_id is not None else None
    if status == "FINISHED" and (cell.output_dir / "DONE").exists():
        return run_id  # trained and tracked; only an attack evaluation is missing, logged to this run
    if status is not None and status != "FINISHED":
        tracker.set_status(run_id, "SCHEDULED")
        tracker.log(run_id, tags=tags)
        return run_id
    run_id = tracker.create_run(exp_id, cell.name, tags, status="SCHEDULED")
    tracking.write_run_id(cell.output_dir, run_id)
    return run_id


def _parent_has(tracker, parent_id: str | None, ref: ReferenceJob, name: str, attack: str | None) -> bool:
    from vgid_dist import tracking

    run = tracker.get_run(parent_id) if parent_id else None
    if run is None:
        return False
    key = tracking.reference_prefix(ref.model, ref.forget_ratio, name) + tracking.eval_metric_key("forget", "",
                                                                                                    attack)
    return any(k.startswith(key) for k in run.data.metrics)


def _report_into_parent(tracker, plan: SweepPlan, parent_id: str, log) -> None:
    from vgid_dist.cluster.report import build_report

    try:
        written = build_report(tracker, plan.experiment, plan.root / "report")
    except Exception as exc:  # the sweep's jobs are done; a report problem must not hide that
        log(f"[sweep] warning: the report could not be written: {exc}")
        return
    tracker.log_files(parent_id, written, "report")
    # Each finished cell gets the trade-off figure of its model and forget ratio (its method beside the base
    # model and the other methods): an evaluated run's artifacts hold it.
    from vgid_dist import tracking

    for cell in plan.cells:
        figure = plan.root / "report" / f"tradeoff-{cell.model}-fr{cell.forget_ratio}.png"
        run_id = tracking.read_run_id(cell.output_dir)
        if figure.is_file() and run_id and tracker.status(run_id) == "FINISHED":
            tracker.log_file_as(run_id, figure, "tradeoff.png")
    log(f"[sweep] report: {plan.root / 'report'}")


def _earlier_jobs(plan: SweepPlan) -> dict[str, str]:
    """Job ids of the last submission of this sweep (``sweep.json``), by job name."""
    path = plan.root / "sweep.json"
    if not path.is_file():
        return {}
    jobs = json.loads(path.read_text()).get("jobs", {})
    return {name: str(j["job_id"]) for name, j in jobs.items() if j.get("job_id")}


def _write_record(plan: SweepPlan, parent_id: str | None, record: dict) -> None:
    write_json_atomic(plan.root / "sweep.json", {
        "matrix": plan.matrix.name, "matrix_file": str(plan.matrix_file), "experiment": plan.experiment,
        "parent_run_id": parent_id, "written": time.time(), "jobs": record}, sort_keys=False)

