"""``sbatch slurm/vgid_7b.sh`` on the real single-node Slurm, pointed at the tiny recipe on CPU through sbatch
options and the script's environment overrides: two tasks (two ZeRO-3 ranks over gloo) whose ranks come from
Slurm's variables, tracked in the real MLflow server by rank 0 only. The model and data are the session's
random tiny LLaVA and small synthetic benchmark."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.test_sweep_slurm import REPO, require_slurm_and_mlflow

pytestmark = [pytest.mark.slurm, pytest.mark.mlflow, pytest.mark.integration]

JOB_TIMEOUT_S = 900
STEPS = 2


def _scontrol_state(job_id: str) -> str:
    res = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=20,
                         check=False)
    for token in res.stdout.split():
        if token.startswith("JobState="):
            return token.split("=", 1)[1]
    return "GONE" if "Invalid job id" in res.stderr else "UNKNOWN"


def test_vgid_7b_script_runs_two_ranks_and_logs_one_run(tmp_path, tiny_llava, bench_dir):
    uri = require_slurm_and_mlflow()
    from mlflow.tracking import MlflowClient

    experiment = f"test-slurm-script-{uuid.uuid4().hex[:10]}"
    out_dir = tmp_path / "run"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "VGID_RECIPE": "tiny", "VGID_PYTHON": sys.executable, "MLFLOW_EXPERIMENT_NAME": experiment,
           "VGID_OVERRIDES": f"optim.max_steps={STEPS} eval.at_end=true eval.limit=1 output_dir={out_dir} "
                             f"model.path={tiny_llava} data.root={bench_dir}"}
    cmd = ["sbatch", "--parsable", "--job-name=vgid-script-test", "--gpus-per-node=0", "--ntasks-per-node=2",
           "--cpus-per-task=1", "--time=20", f"--chdir={REPO}", f"--output={tmp_path}/slurm-%j.out"]
    if os.environ.get("VGID_SLURM_PARTITION"):
        cmd.append(f"--partition={os.environ['VGID_SLURM_PARTITION']}")
    res = subprocess.run([*cmd, "slurm/vgid_7b.sh"], capture_output=True, text=True, env=env, cwd=REPO, timeout=30,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    job_id = res.stdout.strip().split(";")[0]
    log = tmp_path / f"slurm-{job_id}.out"

    deadline = time.monotonic() + JOB_TIMEOUT_S
    state = "PENDING"
    while time.monotonic() < deadline:
        state = _scontrol_state(job_id)
        if state.split("+")[0] not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "UNKNOWN"):
            break
        time.sleep(2)
    else:
        subprocess.run(["scancel", job_id], timeout=20, check=False)
        pytest.fail(f"job {job_id} still {state} after {JOB_TIMEOUT_S}s\n{log.read_text()[-4000:] if log.exists() else ''}")
    text = log.read_text() if log.exists() else ""
    assert state in ("COMPLETED", "GONE"), f"job {job_id} ended {state}\n{text[-6000:]}"
    assert f"[vgid] job {job_id} (restart 0)" in text and ": 2 tasks," in text, text[-3000:]
    assert (out_dir / "DONE").is_file() and (out_dir / "model").is_dir()

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, text[-3000:]
    runs = client.search_runs([exp.experiment_id])
    # Two ranks ran; rank 1 never created a run, nor logged a step (one value per step, from rank 0).
    assert len(runs) == 1, [r.info.run_name for r in runs]
    run = runs[0]
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert (tags["model"], tags["method"], tags["forget_ratio"], tags["slurm_job_id"], tags["world_size"]) == (
        "tiny", "vgid", "5", job_id, "2")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == list(range(1, STEPS + 1))
    assert run.data.params["optim.max_steps"] == str(STEPS) and run.data.params["method.name"] == "vgid"
    assert run.data.params["data.root"] == str(bench_dir) and run.data.params["model.path"] == str(tiny_llava)
    assert 0.0 <= run.data.metrics["forget/gen_rougeL"] <= 1.0
    assert (out_dir / "mlflow_run_id").read_text().strip() == run.info.run_id

    # Artifacts come back from the server as they were written.
    got = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path)))
    assert got.read_text() == (out_dir / "config.yaml").read_text()
    assert {a.path for a in client.list_artifacts(run.info.run_id, "eval")} == {"eval/eval.json",
                                                                                 "eval/eval.predictions.jsonl"}
    table = Path(client.download_artifacts(run.info.run_id, "table3.md", str(tmp_path))).read_text()
    assert "| vgid |" in table
