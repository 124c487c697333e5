"""What a user sees of a tracked run in the MLflow browser: a tiny training run with evaluation, tracked into a
real MLflow server started here, then screenshots of its pages taken by a headless Chromium.

    python benchmarks/tracking_pages.py [--out DIR] [--steps 12] [--chromium chromium]

Prints one JSON object: the run's wall time as measured around the training command and as MLflow records it
(start/end), its tags, metric and artifact names, and the screenshots written to DIR (the experiment list, the
run's overview, model metrics, system metrics and artifacts). Builds a small synthetic benchmark and a 2-layer
random LLaVA in a temporary folder (nothing downloaded). Needs ``chromium`` (Debian: ``apt-get install
chromium``) for the screenshots; without it the JSON says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from faults_tracking import mlflow_server  # the server vgid ui starts, on a free port

REPO = Path(__file__).resolve().parents[1]
PAGES = {"experiments": "#/experiments/{exp}", "overview": "#/experiments/{exp}/runs/{run}",
         "model-metrics": "#/experiments/{exp}/runs/{run}/model-metrics",
         "system-metrics": "#/experiments/{exp}/runs/{run}/system-metrics",
         "artifacts": "#/experiments/{exp}/runs/{run}/artifacts"}


def train(work: Path, uri: str, steps: int) -> tuple[Path, float, str]:
    from vgid_dist.data.synthetic import corpus, write_synthetic_benchmark
    from vgid_dist.models.tiny import build_tiny_llava

    bench = write_synthetic_benchmark(work / "bench", num_profiles=20, num_celebrities=4, seed=2)
    model = build_tiny_llava(work / "model", corpus(bench), hidden=32, vocab_size=512)
    recipe = work / "tiny-tracked.yaml"
    recipe.write_text(yaml.safe_dump({
        "extends": "tiny", "model": {"path": str(model)}, "data": {"root": str(bench)},
        "optim": {"max_steps": steps, "batch_size": 2, "lr": 1e-2, "schedule": "constant", "seed": 3},
        "eval": {"at_end": True, "every_steps": steps // 2, "limit": 2, "max_new_tokens": 8}}))
    out = work / "run"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "tracking-pages",
           "VGID_TRACKING": "on", "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "2", "PYTHONUNBUFFERED": "1"}
    t0 = time.time()
    res = subprocess.run([sys.executable, "launch/train.py", "--config", str(recipe), f"output_dir={out}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=1200, check=False)
    wall = time.time() - t0
    if res.returncode != 0:
        raise RuntimeError(f"training failed ({res.returncode}): {(res.stdout + res.stderr)[-3000:]}")
    return out, wall, res.stdout + res.stderr


def screenshot(chromium: str, url: str, path: Path, profile: Path) -> bool:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--hide-scrollbars", "--window-size=1600,1000", "--virtual-time-budget=20000",
           f"--screenshot={path}", url]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    return res.returncode == 0 and path.is_file() and path.stat().st_size > 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/tracking-pages", help="folder for the screenshots")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--chromium", default="chromium")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="vgid-pages-"))
    server, uri = mlflow_server(work / "server")
    try:
        run_dir, wall, log = train(work, uri, args.steps)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        run = client.get_run((run_dir / "mlflow_run_id").read_text().strip())
        exp = run.info.experiment_id
        artifacts = sorted(a.path for top in client.list_artifacts(run.info.run_id)
                           for a in ([top] if not top.is_dir else client.list_artifacts(run.info.run_id, top.path)))
        shots = {}
        if shutil.which(args.chromium):
            for name, page in PAGES.items():
                path = out / f"{name}.png"
                url = f"{uri}/{page.format(exp=exp, run=run.info.run_id)}"
                shots[name] = str(path) if screenshot(args.chromium, url, path, work / f"profile-{name}") else None
        else:
            shots = {"error": f"{args.chromium} not found"}
        print(json.dumps({
            "run_id": run.info.run_id, "status": run.info.status, "wall_s_measured": round(wall, 1),
            "duration_s_in_mlflow": round((run.info.end_time - run.info.start_time) / 1000, 1),
            "tags": {k: v for k, v in sorted(run.data.tags.items()) if not k.startswith("mlflow.log-model")},
            "metrics": sorted(run.data.metrics), "artifacts": artifacts, "screenshots": shots,
            "tracking_lines": [line for line in log.splitlines() if "MLflow" in line or "mlflow" in line][:10]},
            indent=1))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
