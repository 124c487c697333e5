"""Fault rows about tracking outages: the MLflow server killed mid-run (training never waits on it) and a store
that cannot be reached from the start (refused in seconds, before any model loads)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from fault_kit import REPO, Matrix, last_error


def mlflow_server(folder: Path) -> tuple[subprocess.Popen, str]:
    """A real MLflow server (the one ``vgid ui`` starts: SQLite store, no job runner) on a free port, in its own
    process group, answering /health."""
    import socket
    import urllib.request

    from vgid_dist.tracking.ui import ui_command, ui_environment

    folder.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (folder / "server.log").open("w")
    proc = subprocess.Popen(ui_command(f"sqlite:///{folder / 'mlflow.db'}", "127.0.0.1", port), cwd=folder,
                            env={**ui_environment(), "PYTHONPATH": str(REPO)}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=5):
                return proc, uri
        except OSError:
            time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError(f"the MLflow server did not answer at {uri}: {(folder / 'server.log').read_text()[-800:]}")


def _tracked(uri: str, experiment: str) -> dict:
    return {"VGID_TRACKING": "on", "MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": experiment}


def _untracked_seconds(m: Matrix, name: str) -> float | None:
    t0 = time.time()
    rc, _ = m.train(m.fresh(name))
    return time.time() - t0 if rc == 0 else None


def fault_mlflow_dies(m: Matrix) -> dict:
    """The server is killed (its whole process group, SIGKILL) once the run has logged step 3 of 12. Compared
    with the same 12 steps untracked, run before and after it (the faster of the two: the first may build the
    DeepSpeed and kernel caches)."""
    before = _untracked_seconds(m, "o-untracked-1")
    server, uri = mlflow_server(m.work / "mlflow-dies")
    out_dir = m.fresh("o-mlflow-dies")
    killed: list[float] = []

    def kill_after_step3() -> None:  # watches the run's own log, whatever the console prints
        log = out_dir / "train_log.jsonl"
        while server.poll() is None and not killed:
            if log.is_file() and len(log.read_text().splitlines()) >= 3:
                os.killpg(server.pid, signal.SIGKILL)
                killed.append(time.time())
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_after_step3, daemon=True)
    t0 = time.time()
    watcher.start()
    rc, out = m.train(out_dir, env=_tracked(uri, "fault-mlflow-dies"), timeout=900)
    tracked = time.time() - t0
    server.wait()
    after = _untracked_seconds(m, "o-untracked-2")
    if before is None or after is None:
        return {"outcome": "an untracked reference run failed", "ok": False, "output_lost": None}
    untracked = min(before, after)
    steps = len((out_dir / "train_log.jsonl").read_text().splitlines()) if (out_dir / "train_log.jsonl").is_file() else 0
    said = out.count("MLflow tracking lost")
    ok = (rc == 3 and bool(killed) and said == 1 and "vgid track" in out and steps == 12
          and (out_dir / "DONE").is_file() and tracked < 2 * untracked)
    return {"outcome": f"exit {rc}; 12 steps in {tracked:.1f} s with the server killed after step 3 vs "
                       f"{untracked:.1f} s untracked ({tracked / untracked:.2f}x); loss said {said}x; "
                       f"{steps} steps in train_log.jsonl; {last_error(out)[:150]}...",
            "ok": ok, "output_lost": steps != 12 or not (out_dir / "model").is_dir(),
            "untracked_s": round(untracked, 1), "tracked_s": round(tracked, 1)}


def fault_mlflow_unreachable(m: Matrix) -> dict:
    """MLFLOW_TRACKING_URI names a port nobody listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out_dir = m.fresh("o-mlflow-unreachable")
    t0 = time.time()
    rc, out = m.train(out_dir, env=_tracked(f"http://127.0.0.1:{port}", "fault-unreachable"), timeout=300)
    took = time.time() - t0
    loaded = "[vgid] data:" in out or "trainable parameters" in out or out_dir.exists()
    ok = rc == 2 and "VGID_TRACKING=off" in out and not loaded and took < 60
    return {"outcome": f"exit {rc} after {took:.1f} s, nothing loaded: {last_error(out)[:240]}", "ok": ok,
            "output_lost": False}


FAULTS = {
    "mlflow_dies_midrun": ("MLflow server killed after step 3/12", fault_mlflow_dies,
                           "finishes < 2x untracked time, says tracking was lost, exit 3"),
    "mlflow_unreachable": ("MLFLOW_TRACKING_URI names a closed port", fault_mlflow_unreachable,
                           "error in seconds before any model loads"),
}
