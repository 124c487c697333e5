"""``vgid ui``: the MLflow server on a local store, started in a process group of its own and stopped with all
its children (workers, the server's helpers) when the command ends, whatever ends it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def ui_command(uri: str, host: str, port: int) -> list[str]:
    """The MLflow server command serving ``uri`` (a SQLite file or a folder) to the browser."""
    # One worker: a personal browser, not a shared tracking server.
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", "1"]
    if uri.startswith("sqlite:///"):
        # Runs logged straight to the file store keep their artifacts in ./mlruns beside it.
        cmd += ["--default-artifact-root", (Path(uri[len("sqlite:///"):]).parent / "mlruns").as_uri()]
    return cmd


def ui_environment() -> dict[str, str]:
    """MLflow 3 starts a job runner (several huey consumers, about 2 GB, for GenAI jobs) beside the server
    unless told not to, and sends usage telemetry; a browser on local runs needs neither (a value the user
    set wins)."""
    return {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true", **os.environ}


def _group_alive(proc: subprocess.Popen) -> bool:
    if proc.poll() is None:
        return True
    try:
        os.killpg(proc.pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM to the server's whole process group (the leader and its workers), SIGKILL to what is left after
    ``grace_s``."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while _group_alive(proc) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _group_alive(proc):
            break
    proc.poll()


def serve(uri: str, host: str, port: int) -> int:
    """Run the server until it exits or this process is told to stop (Ctrl-C, SIGTERM, SIGHUP); returns the
    server's exit status (0 after a stop request)."""
    proc = subprocess.Popen(ui_command(uri, host, port), env=ui_environment(), start_new_session=True)
    stopping: list[int] = []

    def request_stop(signum, _frame) -> None:
        stopping.append(signum)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop_group(proc)
        for s, handler in previous.items():
            signal.signal(s, handler)


def browse(host: str, port: int) -> int:
    """``vgid ui``: the MLflow browser of the configured store. A server named by ``MLFLOW_TRACKING_URI`` is only
    named; a local store is served on ``host:port`` (another free port when that one is taken, e.g. by a
    tracking server) until Ctrl-C or SIGTERM."""
    import socket

    from vgid_dist.tracking.names import tracking_uri

    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        print(f"MLflow browser: {uri} (the server named by MLFLOW_TRACKING_URI)", flush=True)
        return 0
    with socket.socket() as s:
        taken = port == 0 or s.connect_ex((host, port)) == 0
    if taken:
        with socket.socket() as free:
            free.bind((host, 0))
            port = free.getsockname()[1]
    print(f"MLflow browser: http://{host}:{port} (store {uri}; Ctrl-C stops it)", flush=True)
    return serve(uri, host, port)
