"""The fault matrix: inject each fault into a tiny run and report what happened and whether output was lost.

    python benchmarks/faults.py [--check] [--only NAME ...] [--keep DIR]

One JSON line per fault on stdout (``fault``, ``injected``, ``outcome``, ``expected``, ``ok``,
``output_lost``, ``seconds``), then a table. ``--check`` exits 1 when any fault did not end as expected.
Builds a small synthetic benchmark and a 2-layer random LLaVA in a temporary folder (nothing downloaded).
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
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "VGID_TRACKING": "off",
       "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))}


# ---- fault injection inside a training process (``python benchmarks/faults.py _run KIND ...``) ----------------


def _register_faulty_method(kind: str, at_steps: set[int]) -> None:
    """A VGID whose loss is NaN at given steps (``nan``), or whose rank 1 stalls (``stall``)."""
    import torch
    import torch.distributed as dist

    from vgid_dist.methods import REGISTRY
    from vgid_dist.methods.vgid import Vgid

    class Faulty(Vgid):
        name = "vgid"
        calls = 0

        def compute_loss(self, batch, student, frozen, counts):
            out = super().compute_loss(batch, student, frozen, counts)
            Faulty.calls += 1  # one micro-batch per step in these runs
            if Faulty.calls in at_steps:
                if kind == "nan":
                    out.loss = out.loss * torch.tensor(float("nan"))
                elif kind == "stall" and dist.get_rank() == 1:
                    time.sleep(60)
            return out

    REGISTRY["vgid"] = Faulty


def _run(argv: list[str]) -> int:
    kind, steps, *rest = argv
    _register_faulty_method(kind, {int(s) for s in steps.split(",") if s})
    sys.path.insert(0, str(REPO))
    from launch.train import main

    return main(rest)


# ---- the matrix ----------------------------------------------------------------------------------------------


def sh(cmd: list[str], timeout: int = 600, on_line=None, env: dict | None = None) -> tuple[int, str]:
    proc = subprocess.Popen(cmd, cwd=REPO, env={**ENV, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    deadline = time.time() + timeout
    try:
        for line in proc.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line, proc)
            if time.time() > deadline:
                raise subprocess.TimeoutExpired(cmd, timeout)
        proc.wait(timeout=max(1, deadline - time.time()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return -9, "".join(lines) + f"\n[timed out after {timeout}s]"
    return proc.returncode, "".join(lines)


def last_error(text: str) -> str:
    for line in reversed(text.splitlines()):
        if line.startswith("error:") or "[vgid] stopped" in line:
            return line.strip()[:400]
    return text.strip().splitlines()[-1][:400] if text.strip() else ""


class Matrix:
    def __init__(self, work: Path):
        from vgid_dist.data.synthetic import corpus, write_synthetic_benchmark
        from vgid_dist.models.tiny import build_tiny_llava

        self.work = work
        self.bench = write_synthetic_benchmark(work / "bench", num_profiles=20, num_celebrities=4, seed=2)
        self.model = build_tiny_llava(work / "model", corpus(self.bench), hidden=32, vocab_size=512)
        self.recipe = work / "recipe.yaml"
        self.recipe.write_text(yaml.safe_dump({
            "extends": "tiny", "model": {"path": str(self.model)}, "data": {"root": str(self.bench)},
            "optim": {"max_steps": 12, "batch_size": 2, "lr": 1e-2, "schedule": "constant", "seed": 3}}))

    def train(self, out: Path, *extra: str, ranks: int = 1, port: int = 29650, runner: list[str] | None = None,
              on_line=None, timeout: int = 600, env: dict | None = None) -> tuple[int, str]:
        args = ["--ds_config", "ds_configs/zero3.json", "--config", str(self.recipe), f"output_dir={out}", *extra]
        entry = runner or ["launch/train.py"]
        if ranks == 1:
            cmd = [PY, *entry, *args]
        else:
            cmd = [PY, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port", str(port),
                   *entry, *args]
        return sh(cmd, timeout, on_line, env)

    def bench_copy(self, name: str) -> Path:
        dst = self.work / name
        shutil.copytree(self.bench, dst)
        return dst


def weights_equal(a: Path, b: Path, tol: float = 1e-6) -> tuple[bool, float]:
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model" / "model.safetensors")), load_file(str(b / "model" / "model.safetensors"))
    diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    return diff <= tol, diff


def rewrite_pairs(folder: Path, edit) -> None:
    import pyarrow.parquet as pq

    for file in sorted(folder.glob("*.parquet")):
        table = pq.read_table(file)
        pq.write_table(edit(table), file)


def fault_sigterm(m: Matrix, ranks: int) -> dict:
    ref, cut = m.work / f"ref{ranks}", m.work / f"cut{ranks}"
    port = 29660 + 10 * ranks
    rc, out = m.train(ref, "save_every=2", ranks=ranks, port=port)
    if rc != 0:
        return {"outcome": f"reference run failed: {last_error(out)}", "ok": False, "output_lost": None}

    def kill_after_step6(line, proc):
        if line.startswith("step 6/12"):
            # Like Slurm: every task gets SIGTERM (not the launcher, which would kill them outright).
            kids = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            for pid in (kids if ranks > 1 else [str(proc.pid)]):
                os.kill(int(pid), signal.SIGTERM)

    rc1, out1 = m.train(cut, "save_every=2", ranks=ranks, port=port + 1, on_line=kill_after_step6)
    rc2, out2 = m.train(cut, "save_every=2", ranks=ranks, port=port + 2)
    resumed = next((line.strip() for line in out2.splitlines() if "resumed from step" in line), None)
    if rc2 != 0 or resumed is None:
        return {"outcome": f"resume failed (rc {rc1}/{rc2}): {last_error(out2)}", "ok": False, "output_lost": True}
    equal, diff = weights_equal(ref, cut)
    return {"outcome": f"exit {rc1} with checkpoint; rerun: {resumed.removeprefix('[vgid] ')}; final weights max "
                       f"abs diff {diff:.1e} vs uninterrupted", "ok": equal and rc1 != 0, "output_lost": not equal}


def expect_error(rc: int, out: str, *needles: str) -> dict:
    err = last_error(out)
    ok = rc == 2 and all(n in out for n in needles)
    return {"outcome": f"exit {rc}: {err}", "ok": ok, "output_lost": False}


def fault_corrupt_image(m: Matrix) -> dict:
    import pyarrow as pa

    bench = m.bench_copy("bench-corrupt")

    def corrupt(table):
        images = table.column("image").to_pylist()
        images[0] = {"bytes": b"\x89PNG this is not an image", "path": None}
        return table.set_column(table.schema.get_field_index("image"), "image",
                                pa.array(images, type=table.schema.field("image").type))

    rewrite_pairs(bench / "baseline_train_split" / "forget_5", corrupt)
    rc, out = m.train(m.work / "o-corrupt", f"data.root={bench}")
    return expect_error(rc, out, "unreadable image", "field 'image'", "forget_5")


def fault_overlap(m: Matrix) -> dict:
    import pyarrow as pa

    bench = m.bench_copy("bench-overlap")
    forget_id = json.loads((bench / "synthetic.json").read_text())["forget_ids"]["5"][0]

    def steal(table):
        ids = table.column("ID").to_pylist()
        ids[0] = forget_id
        return table.set_column(table.schema.get_field_index("ID"), "ID", pa.array(ids, type=pa.string()))

    rewrite_pairs(bench / "baseline_train_split" / "retain_95", steal)
    rc, out = m.train(m.work / "o-overlap", f"data.root={bench}")
    return expect_error(rc, out, f"profile id '{forget_id}' is in both the forget split", "retain_95")


def fault_empty_forget(m: Matrix) -> dict:
    bench = m.bench_copy("bench-empty")
    rewrite_pairs(bench / "baseline_train_split" / "forget_5", lambda t: t.slice(0, 0))
    rc, out = m.train(m.work / "o-empty", f"data.root={bench}")
    return expect_error(rc, out, "training split", "is empty")


def fault_all_truncated(m: Matrix) -> dict:
    rc, out = m.train(m.work / "o-trunc", "data.max_length=16")
    return expect_error(rc, out, "no sample has an answer token left", "data.max_length=16")


def fault_unknown_family(m: Matrix) -> dict:
    model = m.work / "model-gpt"
    shutil.copytree(m.model, model)
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = "gpt_neox"
    (model / "config.json").write_text(json.dumps(config))
    rc, out = m.train(m.work / "o-family", f"model.path={model}", "model.family=null")
    return expect_error(rc, out, "config.json", "'model_type' is 'gpt_neox'")


def fault_ds_batch(m: Matrix) -> dict:
    ds = m.work / "bad_ds.json"
    data = json.loads((REPO / "ds_configs" / "zero3.json").read_text())
    data["train_micro_batch_size_per_gpu"] = 8
    ds.write_text(json.dumps(data))
    rc, out = sh([PY, "launch/train.py", "--ds_config", str(ds), "--config", str(m.recipe),
                  f"output_dir={m.work / 'o-ds'}"])
    return expect_error(rc, out, "train_micro_batch_size_per_gpu=8 contradicts the run")


def fault_nan_once(m: Matrix) -> dict:
    out_dir = m.work / "o-nan"
    rc, out = m.train(out_dir, runner=["benchmarks/faults.py", "_run", "nan", "3"])
    metrics = json.loads((out_dir / "metrics.json").read_text()) if (out_dir / "metrics.json").is_file() else {}
    skipped = metrics.get("nonfinite_skipped")
    ok = rc == 0 and skipped == 1 and "skipped: non-finite loss" in out and (out_dir / "model").is_dir()
    return {"outcome": f"exit {rc}; step 3 skipped on every rank, run finished with nonfinite_skipped={skipped}",
            "ok": ok, "output_lost": not (out_dir / "model").is_dir()}


def fault_nan_streak(m: Matrix) -> dict:
    out_dir = m.work / "o-nan3"
    rc, out = m.train(out_dir, "save_every=2", runner=["benchmarks/faults.py", "_run", "nan", "5,6,7"])
    ckpt = out_dir / "checkpoints" / "LATEST"
    saved = json.loads(ckpt.read_text())["step"] if ckpt.is_file() else None
    ok = rc == 1 and "3 consecutive steps had a non-finite loss" in out and saved == 7
    return {"outcome": f"exit {rc}: {last_error(out)[:160]}... checkpoint at step {saved}", "ok": ok,
            "output_lost": saved is None}


def fault_stalled_rank(m: Matrix) -> dict:
    t0 = time.time()
    rc, out = m.train(m.work / "o-stall", "dist_timeout_s=20", ranks=2, port=29690,
                      runner=["benchmarks/faults.py", "_run", "stall", "2"], timeout=300)
    took = time.time() - t0
    named = next((line.strip() for line in out.splitlines() if "a collective failed during" in line), "")
    ok = rc != 0 and "rank 0/2" in named and "step 2" in named
    return {"outcome": f"exit {rc} after {took:.0f} s: {named[:220]}", "ok": ok, "output_lost": False}


def fault_uneven(m: Matrix) -> dict:
    import pyarrow as pa

    bench = m.bench_copy("bench-uneven")  # forget_5 is one person with 7 pairs: keep 5

    def five(table):
        meta = [json.dumps(json.loads(x)[:5]) for x in table.column("metadata").to_pylist()]
        return table.set_column(table.schema.get_field_index("metadata"), "metadata", pa.array(meta))

    rewrite_pairs(bench / "baseline_train_split" / "forget_5", five)
    rc, out = m.train(m.work / "o-uneven", f"data.root={bench}", "max_steps=4", "optim.batch_size=2", ranks=2,
                      port=29695, timeout=400)
    ok = rc == 0 and "5 primary" in out
    return {"outcome": f"exit {rc}: 5 forget samples, 2 ranks, batch 2: every step full on both ranks", "ok": ok,
            "output_lost": rc != 0}


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
    rc, _ = m.train(m.work / name)
    return time.time() - t0 if rc == 0 else None


def fault_mlflow_dies(m: Matrix) -> dict:
    """The server is killed (its whole process group, SIGKILL) once the run has logged step 3 of 12. Compared
    with the same 12 steps untracked, run before and after it (the faster of the two: the first may build the
    DeepSpeed and kernel caches)."""
    before = _untracked_seconds(m, "o-untracked-1")
    server, uri = mlflow_server(m.work / "mlflow-dies")
    out_dir = m.work / "o-mlflow-dies"
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
    out_dir = m.work / "o-mlflow-unreachable"
    t0 = time.time()
    rc, out = m.train(out_dir, env=_tracked(f"http://127.0.0.1:{port}", "fault-unreachable"), timeout=300)
    took = time.time() - t0
    loaded = "[vgid] data:" in out or "trainable parameters" in out or out_dir.exists()
    ok = rc == 2 and "VGID_TRACKING=off" in out and not loaded and took < 60
    return {"outcome": f"exit {rc} after {took:.1f} s, nothing loaded: {last_error(out)[:240]}", "ok": ok,
            "output_lost": False}


FAULTS = {
    "sigterm_resume_1rank": ("SIGTERM after step 6/12, rerun", lambda m: fault_sigterm(m, 1), "resumed, equal weights"),
    "sigterm_resume_2ranks": ("SIGTERM to both ZeRO-3 ranks after step 6/12, rerun", lambda m: fault_sigterm(m, 2),
                              "resumed, equal weights"),
    "corrupt_image": ("garbage bytes in a forget pair's image", fault_corrupt_image, "error names file/row/field"),
    "id_in_both_splits": ("a forget id copied into the retain pairs", fault_overlap, "error names id and files"),
    "empty_forget": ("forget pairs file with no rows", fault_empty_forget, "error before compute"),
    "all_answers_truncated": ("data.max_length=16", fault_all_truncated, "error before compute"),
    "unknown_model_family": ("config.json model_type gpt_neox", fault_unknown_family, "error names file/field"),
    "ds_batch_contradiction": ("ds_config micro batch 8 vs run's 2", fault_ds_batch, "error names field"),
    "nan_loss_once": ("NaN loss at step 3", fault_nan_once, "step skipped, run completes"),
    "nan_loss_streak": ("NaN loss at steps 5,6,7", fault_nan_streak, "stops with checkpoint"),
    "stalled_rank": ("rank 1 stalls 60 s at step 2 (dist_timeout_s=20)", fault_stalled_rank,
                     "error names rank and op"),
    "uneven_data": ("5 samples on 2 ranks", fault_uneven, "no hang"),
    "mlflow_dies_midrun": ("MLflow server killed after step 3/12", fault_mlflow_dies,
                           "finishes < 2x untracked time, says tracking was lost, exit 3"),
    "mlflow_unreachable": ("MLFLOW_TRACKING_URI names a closed port", fault_mlflow_unreachable,
                           "error in seconds before any model loads"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_run":
        return _run(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 unless every fault ended as expected")
    parser.add_argument("--only", nargs="*", choices=sorted(FAULTS), help="run only these faults")
    parser.add_argument("--keep", default=None, help="work folder to keep (default: a temporary one)")
    args = parser.parse_args(argv)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="vgid-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    matrix = Matrix(work)
    rows = []
    for name in args.only or FAULTS:
        injected, fn, expected = FAULTS[name]
        t0 = time.time()
        try:
            result = fn(matrix)
        except Exception as exc:  # a broken fault script is a failed row, not a crash of the matrix
            result = {"outcome": f"matrix error: {type(exc).__name__}: {exc}", "ok": False, "output_lost": None}
        row = {"fault": name, "injected": injected, "expected": expected, **result,
               "seconds": round(time.time() - t0, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print("| fault | injected | what happened | ok | output lost |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['fault']} | {r['injected']} | {r['outcome']} | {'yes' if r['ok'] else 'NO'} | "
              f"{'-' if r['output_lost'] is None else ('yes' if r['output_lost'] else 'no')} |")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if (not args.check or all(r["ok"] for r in rows)) else 1


if __name__ == "__main__":
    sys.exit(main())
