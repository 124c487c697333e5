"""The tiny matrix through submitit onto the real Slurm, tracked in the real MLflow server: one sweep is run
once for the module (4 training jobs + 2 reference evaluations, one of the training jobs preempted and
requeued while it trains), then checked from several sides, then submitted again.

The cells train the session's random tiny LLaVA on the session's small synthetic benchmark (``model.path=`` and
``data.root=`` given to every cell on the command line), so the test does not wait for the packaged tiny
vanilla model to be fine-tuned.

Needs the services of ``.ci/services.sh``: skipped when absent, failed when absent under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import MLFLOW_SERVER

pytestmark = [pytest.mark.slurm, pytest.mark.mlflow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")
SWEEP_TIMEOUT_S = 1100  # the tiny matrix takes a few minutes on the 2-core node; bounded whatever happens
PREEMPT_WINDOW_S = 600


def _absent(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: run .ci/services.sh before the tests)", pytrace=False)
    pytest.skip(reason)


def _run(cmd: list[str], timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def require_slurm_and_mlflow() -> str:
    """The MLflow URI, once Slurm answers and the server is healthy (else skip, or fail under CI)."""
    if shutil.which("sbatch") is None:
        _absent("Slurm is not installed: no sbatch on PATH")
    try:
        if "is UP" not in _run(["scontrol", "ping"]).stdout:
            _absent("slurmctld does not answer 'scontrol ping'")
    except (OSError, subprocess.TimeoutExpired) as exc:
        _absent(f"slurmctld does not answer: {exc!r}")
    uri = MLFLOW_SERVER
    if not uri:
        _absent("no MLflow tracking server: MLFLOW_TRACKING_URI named no http(s) URI when the tests started")
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as resp:
            if b"OK" not in resp.read(100):
                _absent(f"MLflow server at {uri} is not healthy")
    except (urllib.error.URLError, OSError) as exc:
        _absent(f"MLflow server at {uri} does not answer /health: {exc}")
    return uri


def _job_field(job_id: str, field: str) -> str:
    out = _run(["scontrol", "show", "job", "-o", job_id]).stdout
    for token in out.split():
        if token.startswith(f"{field}="):
            return token.split("=", 1)[1]
    return ""


def _preempt_a_training_cell(client, experiment: str, proc: subprocess.Popen, log) -> dict | None:
    """Once a cell's job is training (its MLflow run RUNNING), send it the preemption signal as Slurm would;
    submitit checkpoints and requeues it. A requeued job waits ~2 minutes before it may start again: start it
    now. Returns what was preempted."""
    deadline = time.monotonic() + PREEMPT_WINDOW_S
    while time.monotonic() < deadline and proc.poll() is None:
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'") if exp else []
        training = [r for r in runs if r.data.tags.get("vgid.kind") == "train" and r.data.tags.get("slurm_job_id")]
        if training:
            run = training[0]
            job_id = run.data.tags["slurm_job_id"]
            res = _run(["scancel", "--signal=USR2", job_id])
            log(f"preempting {run.info.run_name} (job {job_id}): {res.returncode} {res.stderr.strip()}")
            break
        time.sleep(1)
    else:
        return None
    while time.monotonic() < deadline:
        if _job_field(job_id, "Restarts") not in ("", "0") and _job_field(job_id, "JobState") == "PENDING":
            _run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"])
            return {"run_id": run.info.run_id, "job_id": job_id, "name": run.info.run_name}
        if _job_field(job_id, "JobState") in ("COMPLETED", ""):
            return None  # it finished before the signal landed
        time.sleep(1)
    return None


def _sweep_cmd(experiment: str, root: Path, assets: list[str]) -> list[str]:
    return [sys.executable, "-m", "vgid_dist.cli", "sweep", "tiny-matrix", "--executor", "slurm", "--wait",
            "--experiment", experiment, "--out", str(root), "--wait-timeout", str(SWEEP_TIMEOUT_S - 100), *assets]


def _run_bounded(cmd: list[str], log_path: Path, timeout: float, during=None):
    """Run ``cmd`` (output to ``log_path``) in its own process group, killed on timeout; ``during(proc)`` runs
    while it does."""
    with log_path.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_TRACKING_URI": MLFLOW_SERVER})
        extra = during(proc) if during is not None else None
        try:
            proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, log_path.read_text(), extra


def _cancel_jobs(root: Path) -> None:
    record = root / "sweep.json"
    if record.is_file():
        for job in json.loads(record.read_text())["jobs"].values():
            if job.get("job_id"):
                _run(["scancel", job["job_id"]])


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_llava, bench_dir):
    uri = require_slurm_and_mlflow()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = f"test-tiny-matrix-{uuid.uuid4().hex[:10]}"
    root = tmp_path_factory.mktemp("sweep") / "root"
    root.parent.mkdir(parents=True, exist_ok=True)
    logs: list[str] = []
    t0 = time.monotonic()
    assets = [f"model.path={tiny_llava}", f"data.root={bench_dir}"]
    rc, out, preempted = _run_bounded(_sweep_cmd(experiment, root, assets), root.parent / "sweep.log", SWEEP_TIMEOUT_S,
                                      during=lambda proc: _preempt_a_training_cell(client, experiment, proc,
                                                                                   logs.append))
    seconds = time.monotonic() - t0
    if rc != 0:
        _cancel_jobs(root)
        pytest.fail(f"vgid sweep exited {rc} after {seconds:.0f}s\n{out[-6000:]}\n{logs}", pytrace=False)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    return SimpleNamespace(client=client, experiment=experiment, exp_id=exp.experiment_id, root=root, out=out,
                           runs=runs, preempted=preempted, seconds=seconds, log=logs, assets=assets)


def _parent_and_children(sweep):
    parents = [r for r in sweep.runs if r.data.tags.get("vgid.kind") == "sweep"]
    assert len(parents) == 1, [r.info.run_name for r in sweep.runs]
    parent = parents[0]
    children = [r for r in sweep.runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children


def test_one_parent_and_four_finished_children(sweep):
    parent, children = _parent_and_children(sweep)
    assert parent.info.status == "FINISHED"
    assert len(sweep.runs) == 5 and len(children) == 4, sweep.out[-3000:]
    cells = {(c.data.tags["model"], c.data.tags["forget_ratio"], c.data.tags["method"]) for c in children}
    assert cells == {("tiny", "5", "vgid"), ("tiny", "5", "ga"), ("tiny", "10", "vgid"), ("tiny", "10", "ga")}
    for child in children:
        tags, metrics, params = child.data.tags, child.data.metrics, child.data.params
        assert child.info.status == "FINISHED", child.info.run_name
        for split in ("forget", "test", "retain"):
            assert 0.0 <= metrics[f"{split}/gen_rougeL"] <= 1.0
        # the official protocol shows one forget profile as the classification example: at 5% the forget split
        # has one profile (nothing left to score for classification, and the eval says so), at 10% two
        one_forget_profile = tags["forget_ratio"] == "5"
        for split in ("forget", "test"):
            assert (f"{split}/class_acc" in metrics) != one_forget_profile, (child.info.run_name, split)
        assert "retain/class_acc" in metrics and "retain/cloze_acc" in metrics
        assert {"train/loss", "train/lr", "train/samples_per_s", "train/tokens_per_s", "train/peak_mem_gib"} <= set(
            metrics)
        assert params["method.name"] == tags["method"] and params["data.forget_ratio"] == tags["forget_ratio"]
        assert params["optim.max_steps"] == "3" and tags["seed"] == "42" and tags["slurm_job_id"].isdigit()
        assert tags.get("git_commit")
        out = Path(tags["output_dir"])
        assert (out / "DONE").is_file() and (out / "mlflow_run_id").read_text().strip() == child.info.run_id
        artifacts = {a.path for a in sweep.client.list_artifacts(child.info.run_id)}
        assert {"config.yaml", "metrics.json", "train_log.jsonl", "table3.md", "eval"} <= artifacts
        assert {a.path for a in sweep.client.list_artifacts(child.info.run_id, "eval")} >= {
            "eval/eval.json", "eval/eval.predictions.jsonl"}


def test_parent_holds_the_base_rows(sweep):
    parent, _ = _parent_and_children(sweep)
    for ratio in (5, 10):
        assert 0.0 <= parent.data.metrics[f"ref/tiny/fr{ratio}/base/forget/gen_rougeL"] <= 1.0
    assert {a.path for a in sweep.client.list_artifacts(parent.info.run_id, "report")} >= {
        "report/table3.md", "report/tradeoff-tiny-fr5.png", "report/tradeoff-tiny-fr10.png"}


def test_a_preempted_cell_is_requeued_into_the_same_run(sweep):
    if sweep.preempted is None:
        pytest.fail(f"no cell could be preempted while training: {sweep.log}")
    run = sweep.client.get_run(sweep.preempted["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["slurm_job_id"] == sweep.preempted["job_id"]
    assert int(run.data.tags["slurm_restart_count"]) >= 1  # logged by the requeued job, into the same run
    out = Path(run.data.tags["output_dir"])
    assert (out / "DONE").is_file() and (out / "mlflow_run_id").read_text().strip() == run.info.run_id
    # The first attempt's steps and the requeued attempt's are both in the one run.
    assert len(sweep.client.get_metric_history(run.info.run_id, "train/loss")) >= 3


def test_report_writes_the_tables_and_figures(sweep, tmp_path):
    res = _run([sys.executable, "-m", "vgid_dist.cli", "report", "--experiment", sweep.experiment, "--out",
                str(tmp_path)], timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    table = (tmp_path / "table3.md").read_text()
    for ratio in (5, 10):
        section = table.split(f"**tiny, forget {ratio}%**")[1].split("**")[0]
        rows = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")][1:]
        assert rows == ["base", "ga", "vgid"], section
        png = tmp_path / f"tradeoff-tiny-fr{ratio}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| vgid |" in res.stdout  # the tables are printed too


def test_resubmitting_skips_finished_cells(sweep):
    before = sorted(p.name for p in (sweep.root / "submitit").iterdir())
    rc, out, _ = _run_bounded(_sweep_cmd(sweep.experiment, sweep.root, sweep.assets),
                              sweep.root.parent / "resubmit.log", 600)
    assert rc == 0, out[-4000:]
    assert out.count("skipped") == 6 and "submitted (" not in out, out[-3000:]
    assert sorted(p.name for p in (sweep.root / "submitit").iterdir()) == before
    runs = sweep.client.search_runs([sweep.exp_id], max_results=100)
    assert sorted(r.info.run_id for r in runs) == sorted(r.info.run_id for r in sweep.runs)
