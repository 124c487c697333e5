"""submitit executors for sweep jobs: Slurm parameters from a cell's resources, the local fallback, and waiting
for jobs on a cluster without accounting (no ``sacct``: submitit cannot see job states, so ask slurmctld)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from vgid_dist.errors import ConfigError

# Slurm states after which a job will not write a result any more (a requeued job goes back to PENDING).
# PREEMPTED is left out: a requeueable job passes through it on its way back to PENDING.
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE"}


def slurm_available() -> bool:
    """sbatch is installed and slurmctld answers."""
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return False
    try:
        res = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "is UP" in res.stdout


def choose_executor(kind: str) -> str:
    """``slurm``, ``local``, or ``auto``: Slurm when it answers, else local."""
    if kind not in ("auto", "slurm", "local"):
        raise ConfigError(f"--executor {kind!r}: expected slurm, local or auto")
    if kind == "auto":
        return "slurm" if slurm_available() else "local"
    return kind


def slurm_parameters(resources: dict[str, Any], job_name: str) -> dict[str, Any]:
    """submitit ``SlurmExecutor`` parameters (sbatch option names) of one job."""
    params: dict[str, Any] = {
        "job_name": job_name,
        "nodes": resources["nodes"],
        "ntasks_per_node": resources["tasks_per_node"],
        "cpus_per_task": resources["cpus_per_task"],
        "time": resources["time_min"],
        "signal_delay_s": resources["signal_delay_s"],
        # submitit requeues a preempted or timed-out job itself (scontrol requeue); say it is requeueable even
        # where the cluster's default says otherwise.
        "additional_parameters": {"requeue": True, **resources.get("sbatch", {})},
    }
    if resources.get("gpus_per_node"):
        params["gpus_per_node"] = resources["gpus_per_node"]
    if resources.get("mem_gb"):
        params["mem"] = _mem(resources["mem_gb"])
    for key in ("partition", "account", "qos"):
        if resources.get(key):
            params[key] = resources[key]
    if resources.get("setup"):
        params["setup"] = list(resources["setup"])
    return params


def _mem(gb: float) -> str:
    return f"{int(gb)}GB" if gb == int(gb) else f"{int(gb * 1024)}MB"


def make_executor(kind: str, folder: Path, resources: dict[str, Any], job_name: str):
    import submitit

    folder = Path(folder)
    extra = {"python": resources["python"]} if resources.get("python") else {}
    if kind == "slurm":
        executor = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=3, **extra)
        executor.update_parameters(**slurm_parameters(resources, job_name))
        return executor
    if resources["nodes"] != 1:
        raise ConfigError(f"job {job_name}: the local executor runs on this machine only; nodes must be 1, "
                         f"got {resources['nodes']}")
    # Local job ids are process ids; submitit names each job's files after it in this one folder.
    executor = submitit.LocalExecutor(folder=folder / "local", **extra)
    executor.update_parameters(timeout_min=resources["time_min"], tasks_per_node=resources["tasks_per_node"],
                               gpus_per_node=resources["gpus_per_node"])
    return executor


def sbatch_script(resources: dict[str, Any], job_name: str, folder: Path) -> str:
    """The sbatch file submitit would write for this job (``--dry-run``)."""
    import submitit

    executor = submitit.SlurmExecutor(folder=Path(folder) / "%j")
    executor.update_parameters(**slurm_parameters(resources, job_name))
    python = resources.get("python") or "python"
    return executor._make_submission_file_text(f"{python} -u -m submitit.core._submit ...", "dry-run")


def slurm_state(job_id: str) -> str:
    """The job's state from slurmctld (``GONE`` once it left slurmctld's memory, ``UNKNOWN`` if no answer)."""
    try:
        res = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True,
                             timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "UNKNOWN"
    for token in res.stdout.split():
        if token.startswith("JobState="):
            return token.split("=", 1)[1]
    return "GONE" if "Invalid job id" in res.stderr else "UNKNOWN"


def slurm_active(job_id: str) -> bool:
    """The job is still queued or running (an earlier submission of the sweep that has not ended)."""
    state = slurm_state(job_id).split("+")[0]
    return state not in FINAL_STATES and state != "GONE"


def attach_slurm_job(folder: Path, job_id: str, resources: dict[str, Any]):
    """The submitit handle of a job submitted earlier, to wait for it instead of submitting the cell twice."""
    import submitit

    tasks = tuple(range(resources["nodes"] * resources["tasks_per_node"]))
    return submitit.SlurmJob(folder=Path(folder) / "%j", job_id=str(job_id), tasks=tasks)


def results_written(job) -> bool:
    """Every task of the job wrote its result (or its exception). submitit's own ``done()`` asks sacct when a
    result is missing, which many clusters (and this one) do not have, and which floods the log with errors."""
    return all(job.task(k).paths.result_pickle.exists() for k in range(job.num_tasks))


def job_outcome(job, kind: str) -> str | None:
    """``done`` (every task wrote its result), ``lost:<state>`` (the job ended without a result), or None while
    it runs."""
    if kind != "slurm":
        return "done" if job.done() else None
    if results_written(job):
        return "done"
    state = slurm_state(str(job.job_id)).split("+")[0]
    if state in FINAL_STATES or state == "GONE":
        time.sleep(3)  # a result file written just before the job ended
        if results_written(job):
            return "done"
        return f"lost:{state}"
    return None


def wait_jobs(jobs: dict[str, Any], kind: str, *, timeout_s: float | None = None, poll_s: float = 5.0,
              on_finish=None) -> dict[str, str]:
    """Wait for every job (name -> submitit job); returns name -> outcome (``done``, ``lost:<state>`` or
    ``timeout``). ``on_finish(name, outcome)`` is called as each one ends."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pending = dict(jobs)
    outcomes: dict[str, str] = {}
    while pending:
        for name, job in list(pending.items()):
            outcome = job_outcome(job, kind)
            if outcome is not None:
                outcomes[name] = outcome
                del pending[name]
                if on_finish is not None:
                    on_finish(name, outcome)
        if not pending:
            break
        if deadline is not None and time.monotonic() > deadline:
            for name in pending:
                outcomes[name] = "timeout"
            break
        time.sleep(poll_s)
    return outcomes
