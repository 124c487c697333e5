"""Tracking against the real MLflow server (``MLFLOW_TRACKING_URI``), and ``vgid ui`` on a local store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import MLFLOW_SERVER
from tests.integration.test_sweep_slurm import IN_CI, REPO


def _server_uri() -> str:
    uri = MLFLOW_SERVER
    reason = None
    if not uri:
        reason = "no MLflow tracking server: MLFLOW_TRACKING_URI named no http(s) URI when the tests started"
    else:
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as resp:
                if b"OK" not in resp.read(100):
                    reason = f"MLflow server at {uri} is not healthy"
        except (urllib.error.URLError, OSError) as exc:
            reason = f"MLflow server at {uri} does not answer /health: {exc}"
    if reason:
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: run .ci/services.sh before the tests)", pytrace=False)
        pytest.skip(reason)
    return uri


@pytest.mark.mlflow
def test_a_finished_run_reads_back_from_the_server(tmp_path):
    """Params, step metrics, evaluation metrics and artifacts, as a report or a user reads them."""
    from vgid_dist import tracking
    from vgid_dist.config import load_run_config

    tracker = tracking.Tracker(_server_uri())
    out = tmp_path / "run"
    out.mkdir()
    cfg = load_run_config("tiny", [f"output_dir={out}", "method.alpha=2.5"])
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    (out / "train_log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 2.0 / s, "lr": 1e-3}) + "\n"
                                                 for s in (1, 2, 3)))
    results = {"forget": {"gen_rougeL": 0.25, "class_acc": 0.5}, "retain": {"gen_rougeL": 0.75}}
    (out / "eval.json").write_text(json.dumps(results))
    (out / "eval.predictions.jsonl").write_text(json.dumps({"split": "forget", "reply": "no idea"}) + "\n")
    (out / "DONE").write_text("{}")
    experiment = f"test-tracking-{uuid.uuid4().hex[:10]}"
    run_id = tracking.import_finished_output(tracker, out, experiment=experiment, model="tiny")

    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["method.alpha"] == "2.5" and run.data.params["optim.lr"] == str(cfg.optim.lr)
    assert (run.data.tags["model"], run.data.tags["method"], run.data.tags["forget_ratio"]) == ("tiny", "vgid", "5")
    assert run.data.metrics["forget/gen_rougeL"] == 0.25 and run.data.metrics["retain/gen_rougeL"] == 0.75
    assert [(m.step, m.value) for m in tracker.client.get_metric_history(run_id, "train/loss")] == [
        (1, 2.0), (2, 1.0), (3, 2.0 / 3)]
    # Proxied artifacts: the server stores them, the client only speaks HTTP.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    got = tracker.download(run_id, "eval/eval.json", tmp_path / "dl")
    assert json.loads(got.read_text()) == results
    assert "| vgid |" in tracker.download(run_id, "table3.md", tmp_path / "dl").read_text()


@pytest.mark.mlflow
def test_ui_points_at_the_configured_server():
    uri = _server_uri()
    res = subprocess.run([sys.executable, "-m", "vgid_dist.cli", "ui"], capture_output=True, text=True, timeout=120,
                         check=False, cwd=REPO, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert res.returncode == 0 and uri in res.stdout, res.stdout + res.stderr


def _group(pgid: int) -> list[str]:
    """Command lines of the live processes of process group ``pgid``."""
    out = subprocess.run(["ps", "-eo", "pgid=,stat=,args="], capture_output=True, text=True, check=False).stdout
    return [line.split(None, 2)[2] for line in out.splitlines()
            if line.split()[0] == str(pgid) and not line.split()[1].startswith("Z")]


@pytest.mark.integration
def test_ui_serves_the_local_store_and_sigterm_stops_all_of_it(tmp_path):
    """No server configured: ``vgid ui`` serves ./mlflow.db on 127.0.0.1 and prints where, without MLflow's
    job runner; SIGTERM to the command (as a service manager or ``kill`` sends it) stops the server and all
    its children, and frees the port."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen([sys.executable, "-m", "vgid_dist.cli", "ui", "--port", "0"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    server_group = None
    try:
        line = proc.stdout.readline()
        assert line.startswith("MLflow browser: http://127.0.0.1:"), line
        address = line.split()[2]
        assert f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}" in line
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            try:
                with urllib.request.urlopen(address + "/health", timeout=5) as resp:
                    assert resp.read(100).startswith(b"OK")
                    break
            except (urllib.error.URLError, OSError):
                time.sleep(2)
        else:
            pytest.fail(f"vgid ui did not answer at {address} within 240 s")
        assert Path(tmp_path / "mlflow.db").is_file()
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        server_group = os.getpgid(int(children[0]))
        assert server_group != proc.pid  # the server runs in a group of its own, which vgid ui stops
        assert not [c for c in _group(server_group) if "huey" in c or "job" in c.lower()], _group(server_group)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        deadline = time.monotonic() + 30
        while _group(server_group) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _group(server_group) == []
        with pytest.raises((urllib.error.URLError, OSError)):
            urllib.request.urlopen(address + "/health", timeout=5)
    finally:
        for group in (proc.pid, server_group):
            if group is not None and _group(group):
                os.killpg(group, signal.SIGKILL)
        proc.wait(timeout=30)
