"""Smoke tests for the real services started by ``.ci/services.sh``.

* Slurm (single node): a plain ``sbatch`` job, a submitit round trip, and a
  two-task submitit job doing a torch.distributed (gloo) all-reduce.
* MLflow tracking server at ``$MLFLOW_TRACKING_URI``: log a param, a metric
  and an artifact (proxied upload), read them back with ``MlflowClient``.

A missing service skips the test, except under ``CI=true``, where it fails:
CI runs ``.ci/services.sh`` first, so absence there is a broken setup.
Every wait is bounded, so nothing hangs on a stuck queue or server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import MLFLOW_SERVER

JOB_TIMEOUT_S = 120
CMD_TIMEOUT_S = 20
FINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "GONE",
}
IN_CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _absent(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: run .ci/services.sh before the tests)", pytrace=False)
    pytest.skip(reason)


def _run(cmd: list[str], timeout: float = CMD_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _slurm_diagnostics(job_id: str | None = None) -> str:
    parts = []
    cmds = [["squeue", "-a"], ["sinfo", "-N", "-l"]]
    if job_id:
        cmds.insert(0, ["scontrol", "show", "job", job_id])
    for cmd in cmds:
        try:
            res = _run(cmd, timeout=10)
            parts.append(f"$ {' '.join(cmd)}\n{res.stdout}{res.stderr}")
        except (OSError, subprocess.TimeoutExpired) as exc:
            parts.append(f"$ {' '.join(cmd)}\n{exc!r}")
    return "\n".join(parts)


def _job_state(job_id: str) -> str:
    """State from slurmctld (no accounting database here, so no sacct)."""
    res = _run(["scontrol", "show", "job", "-o", job_id], timeout=10)
    for field in res.stdout.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    # A finished job leaves slurmctld's memory after MinJobAge.
    return "GONE" if res.returncode != 0 else "UNKNOWN"


@pytest.fixture(scope="module")
def slurm_partition() -> str | None:
    """Skip (or fail in CI) unless sbatch exists and slurmctld answers."""
    if shutil.which("sbatch") is None:
        _absent("Slurm is not installed: no sbatch on PATH")
    try:
        ping = _run(["scontrol", "ping"], timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _absent(f"slurmctld does not answer 'scontrol ping': {exc!r}")
    if "is UP" not in ping.stdout:
        _absent(f"slurmctld is not up: {ping.stdout.strip()} {ping.stderr.strip()}")
    try:
        nodes = _run(["sinfo", "-h", "-o", "%T"], timeout=10).stdout.split()
    except subprocess.TimeoutExpired as exc:
        _absent(f"sinfo does not answer: {exc!r}")
    if not any(s.split("+")[0] in ("idle", "mixed", "allocated", "completing") for s in nodes):
        _absent(f"no usable Slurm node (sinfo states: {nodes})")
    return os.environ.get("VGID_SLURM_PARTITION") or None


@pytest.fixture
def submitit_executor(slurm_partition: str | None, tmp_path: Path):
    submitit = pytest.importorskip("submitit")

    def make(**params):
        executor = submitit.AutoExecutor(folder=tmp_path / "submitit" / "%j", cluster="slurm")
        base = {"timeout_min": 5, "nodes": 1, "tasks_per_node": 1, "cpus_per_task": 1}
        if slurm_partition:
            base["slurm_partition"] = slurm_partition
        base.update(params)
        executor.update_parameters(**base)
        return executor

    return make


def _submitit_logs(job) -> str:
    folder = Path(job.paths.folder)
    parts = []
    for log in sorted(folder.glob("*_log.*")) if folder.is_dir() else []:
        parts.append(f"--- {log}\n{log.read_text(errors='replace')[-2000:]}")
    return "\n".join(parts) or f"(no logs in {folder})"


def _wait_submitit(job, timeout: float = JOB_TIMEOUT_S) -> None:
    """Wait until every task has written its result file.

    Without sacct, submitit cannot see a job's state (``job.state`` stays
    UNKNOWN, and a job killed before writing its result is never ``done()``),
    so poll with a deadline and ask slurmctld whether the job ended.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if job.done():
            return
        state = _job_state(str(job.job_id))
        if state in FINAL_STATES - {"COMPLETED"}:
            time.sleep(2)  # let the last result file land
            if job.done():
                return
            pytest.fail(
                f"submitit job {job.job_id} ended {state} without a result\n"
                f"{_submitit_logs(job)}\n{_slurm_diagnostics(str(job.job_id))}"
            )
        time.sleep(1)
    job.cancel(check=False)
    pytest.fail(
        f"submitit job {job.job_id} not done after {timeout}s\n"
        f"{_submitit_logs(job)}\n{_slurm_diagnostics(str(job.job_id))}"
    )


@pytest.mark.slurm
def test_sbatch_job_runs(slurm_partition: str | None, tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        f"echo token={token}\n"
        "echo host=$(hostname -s)\n"
        "echo cwd=$(pwd)\n"
        "echo partition=$SLURM_JOB_PARTITION\n"
    )
    cmd = [
        "sbatch",
        "--parsable",
        "--job-name=vgid-smoke",
        "--time=5",
        "--ntasks=1",
        f"--chdir={tmp_path}",
        f"--output={tmp_path}/out-%j.txt",
    ]
    if slurm_partition:
        cmd.append(f"--partition={slurm_partition}")
    res = _run([*cmd, str(script)])
    assert res.returncode == 0, f"sbatch failed: {res.stdout}{res.stderr}"
    job_id = res.stdout.strip().split(";")[0]
    assert job_id.isdigit(), res.stdout
    out = tmp_path / f"out-{job_id}.txt"

    deadline = time.monotonic() + JOB_TIMEOUT_S
    state = "PENDING"
    while time.monotonic() < deadline:
        state = _job_state(job_id)
        if state in FINAL_STATES:
            break
        time.sleep(1)
    else:
        _run(["scancel", job_id], timeout=10)
        pytest.fail(f"sbatch job {job_id} still {state} after {JOB_TIMEOUT_S}s\n{_slurm_diagnostics(job_id)}")

    text = out.read_text() if out.exists() else ""
    assert state in ("COMPLETED", "GONE"), f"job {job_id} ended {state}: {text}\n{_slurm_diagnostics(job_id)}"
    assert f"token={token}" in text, f"no token in {out}: {text!r}"
    assert f"cwd={tmp_path}" in text, text


def _add(a: int, b: int) -> dict:
    # Runs inside the Slurm job (pickled by value: defined in a test module).
    import os
    import sys

    return {"sum": a + b, "python": sys.executable, "job_id": os.environ.get("SLURM_JOB_ID")}


@pytest.mark.slurm
def test_submitit_round_trip(submitit_executor) -> None:
    import sys

    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        job = submitit_executor().submit(_add, 2, 3)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    _wait_submitit(job)
    out = job.result()
    assert out["sum"] == 5
    assert out["job_id"] == str(job.job_id)
    assert os.path.realpath(out["python"]) == os.path.realpath(sys.executable)


def _all_reduce() -> dict:
    import datetime
    import os

    import submitit.helpers
    import torch
    import torch.distributed as dist

    env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    seen = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    dist.init_process_group("gloo", init_method="env://", timeout=datetime.timedelta(seconds=60))
    try:
        t = torch.tensor([float(env.rank + 1)])
        dist.all_reduce(t)
    finally:
        dist.destroy_process_group()
    return {"env": seen, "sum": t.item()}


@pytest.mark.slurm
def test_submitit_two_tasks_gloo_all_reduce(submitit_executor) -> None:
    import sys

    import cloudpickle

    pytest.importorskip("torch")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        job = submitit_executor(tasks_per_node=2).submit(_all_reduce)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    _wait_submitit(job)
    results = job.results()
    assert sorted(r["env"]["RANK"] for r in results) == ["0", "1"]
    assert sorted(r["env"]["LOCAL_RANK"] for r in results) == ["0", "1"]
    for r in results:
        assert r["env"]["WORLD_SIZE"] == "2"
        assert r["env"]["MASTER_ADDR"] and r["env"]["MASTER_PORT"]
        assert r["sum"] == 3.0  # 1 + 2


@pytest.fixture
def mlflow_uri(monkeypatch: pytest.MonkeyPatch) -> str:
    uri = MLFLOW_SERVER
    if not uri:
        _absent("no MLflow tracking server: MLFLOW_TRACKING_URI named no http(s) URI when the tests started")
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as resp:
            body = resp.read(100).decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        _absent(f"MLflow server at {uri} does not answer /health: {exc}")
    if "OK" not in body:
        _absent(f"MLflow server at {uri} answered /health with {body!r}")
    # Fail fast instead of MLflow's default minutes of retries.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    return uri


@pytest.mark.mlflow
def test_mlflow_log_and_read_back(mlflow_uri: str, tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_uri)
    try:
        exp_id = mlflow.create_experiment(f"vgid-smoke-{uuid.uuid4().hex[:12]}")
        note = tmp_path / "note.txt"
        note.write_text("hello from vgid_dist")
        with mlflow.start_run(experiment_id=exp_id) as run:
            mlflow.log_param("lr", 0.125)
            for step, loss in enumerate([1.0, 0.5, 0.25]):
                mlflow.log_metric("loss", loss, step=step)
            mlflow.log_artifact(str(note), artifact_path="notes")
        run_id = run.info.run_id

        client = MlflowClient(tracking_uri=mlflow_uri)
        got = client.get_run(run_id)
        assert got.info.status == "FINISHED"
        assert got.data.params == {"lr": "0.125"}
        assert [m.value for m in client.get_metric_history(run_id, "loss")] == [1.0, 0.5, 0.25]
        # Proxied artifacts: the server stores them, the client only speaks HTTP.
        assert got.info.artifact_uri.startswith("mlflow-artifacts:"), got.info.artifact_uri
        assert [a.path for a in client.list_artifacts(run_id, "notes")] == ["notes/note.txt"]
        dst = tmp_path / "download"
        dst.mkdir()
        local = client.download_artifacts(run_id, "notes/note.txt", str(dst))
        assert Path(local).read_text() == "hello from vgid_dist"
    finally:
        mlflow.set_tracking_uri(previous)
