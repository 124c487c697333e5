"""The fault matrix: inject each fault into a tiny run and report what happened and whether output was lost.

    python benchmarks/faults.py [--check] [--quick | --only NAME ...] [--keep DIR]

One JSON line per fault on stdout (``fault``, ``injected``, ``outcome``, ``expected``, ``ok``,
``output_lost``, ``seconds``), then a table. ``--check`` exits 1 when any fault did not end as expected.
Builds a small synthetic benchmark and a 2-layer random LLaVA in a temporary folder (nothing downloaded; a kept
folder's are reused). Preemption, bad input and collectives are here; the output folder, logs, final save,
checkpoints and rendezvous in ``faults_output.py``; hostile input in ``faults_input.py``; tracking
outages in ``faults_tracking.py``; the faults installed
inside a training process in ``fault_inject.py``.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

import faults_input  # noqa: E402
import faults_output  # noqa: E402
import faults_tracking  # noqa: E402
from fault_kit import (  # noqa: E402
    PY,
    REPO,
    Matrix,
    expect_error,
    last_error,
    rewrite_pairs,
    sh,
    weights_equal,
)


def _run(argv: list[str]) -> int:
    """A training process with a fault installed (``fault_inject``), then the usual entry."""
    from fault_inject import install

    kind, steps, *rest = argv
    install(kind, steps)
    sys.path.insert(0, str(REPO))
    from launch.train import main

    return main(rest)


# ---- the matrix ----------------------------------------------------------------------------------------------


def fault_sigterm(m: Matrix, ranks: int) -> dict:
    cut = m.fresh(f"cut{ranks}")
    port = 29660 + 10 * ranks
    if ranks == 1:
        ref = m.reference()  # checkpoints change no weight: the plain run is the reference
    else:
        ref = m.fresh(f"ref{ranks}")
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


def fault_corrupt_image(m: Matrix) -> dict:
    import pyarrow as pa

    bench = m.bench_copy("bench-corrupt")

    def corrupt(table):
        images = table.column("image").to_pylist()
        images[0] = {"bytes": b"\x89PNG this is not an image", "path": None}
        return table.set_column(table.schema.get_field_index("image"), "image",
                                pa.array(images, type=table.schema.field("image").type))

    rewrite_pairs(bench / "baseline_train_split" / "forget_5", corrupt)
    rc, out = m.train(m.fresh("o-corrupt"), f"data.root={bench}")
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
    rc, out = m.train(m.fresh("o-overlap"), f"data.root={bench}")
    return expect_error(rc, out, f"profile id '{forget_id}' is in both the forget split", "retain_95")


def fault_empty_forget(m: Matrix) -> dict:
    bench = m.bench_copy("bench-empty")
    rewrite_pairs(bench / "baseline_train_split" / "forget_5", lambda t: t.slice(0, 0))
    rc, out = m.train(m.fresh("o-empty"), f"data.root={bench}")
    return expect_error(rc, out, "training split", "is empty")


def fault_all_truncated(m: Matrix) -> dict:
    rc, out = m.train(m.fresh("o-trunc"), "data.max_length=16")
    return expect_error(rc, out, "no sample has an answer token left", "data.max_length=16")


def fault_unknown_family(m: Matrix) -> dict:
    model = m.fresh("model-gpt")
    shutil.copytree(m.model, model)
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = "gpt_neox"
    (model / "config.json").write_text(json.dumps(config))
    rc, out = m.train(m.fresh("o-family"), f"model.path={model}", "model.family=null")
    return expect_error(rc, out, "config.json", "'model_type' is 'gpt_neox'")


def fault_ds_batch(m: Matrix) -> dict:
    ds = m.work / "bad_ds.json"
    data = json.loads((REPO / "vgid_dist" / "recipes" / "ds" / "zero3.json").read_text())
    data["train_micro_batch_size_per_gpu"] = 8
    ds.write_text(json.dumps(data))
    rc, out = sh([PY, "launch/train.py", "--ds_config", str(ds), "--config", str(m.recipe),
                  f"output_dir={m.fresh('o-ds')}"])
    return expect_error(rc, out, "train_micro_batch_size_per_gpu=8 contradicts the run")


def fault_nan_once(m: Matrix) -> dict:
    out_dir = m.fresh("o-nan")
    rc, out = m.train(out_dir, runner=["benchmarks/faults.py", "_run", "nan", "3"])
    metrics = json.loads((out_dir / "metrics.json").read_text()) if (out_dir / "metrics.json").is_file() else {}
    skipped = metrics.get("nonfinite_skipped")
    ok = rc == 0 and skipped == 1 and "skipped: non-finite loss" in out and (out_dir / "model").is_dir()
    return {"outcome": f"exit {rc}; step 3 skipped on every rank, run finished with nonfinite_skipped={skipped}",
            "ok": ok, "output_lost": not (out_dir / "model").is_dir()}


def fault_nan_streak(m: Matrix) -> dict:
    out_dir = m.fresh("o-nan3")
    rc, out = m.train(out_dir, "save_every=2", runner=["benchmarks/faults.py", "_run", "nan", "5,6,7"])
    ckpt = out_dir / "checkpoints" / "latest"
    saved = int(ckpt.read_text().removeprefix("global_step")) if ckpt.is_file() else None
    ok = rc == 1 and "3 consecutive steps had a non-finite loss" in out and saved == 7
    return {"outcome": f"exit {rc}: {last_error(out)[:160]}... checkpoint at step {saved}", "ok": ok,
            "output_lost": saved is None}


def fault_stalled_rank(m: Matrix) -> dict:
    t0 = time.time()
    rc, out = m.train(m.fresh("o-stall"), "dist_timeout_s=20", ranks=2, port=29690,
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
    rc, out = m.train(m.fresh("o-uneven"), f"data.root={bench}", "max_steps=4", "optim.batch_size=2", ranks=2,
                      port=29695, timeout=400)
    ok = rc == 0 and "5 primary" in out
    said = "every step full on both ranks" if ok else last_error(out)
    return {"outcome": f"exit {rc}: 5 forget samples, 2 ranks, batch 2: {said}", "ok": ok,
            "output_lost": rc != 0}


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
    **faults_output.FAULTS,
    **faults_input.FAULTS,
    **faults_tracking.FAULTS,
}


QUICK = ("sigterm_resume_1rank", "output_dir_user_files", "output_dir_empty", "concurrent_runs", "log_append_torn",
         "kill_in_final_export", "killed_run_leftovers", "deepspeed_layout", "decompression_bomb", "non_utf8_input",
         "invalid_values", "extends_method_string", "steer_override_typo", "mlflow_unreachable")
"""The rows CI runs (``--quick``: about 3 minutes on 2 cores). The whole matrix (10-13 minutes) adds two
ranks, a stalled collective, NaN losses, a full disk in the export, a planted pickle, the rendezvous address, 30
large photos, an MLflow server killed mid-run and the input checks the unit tests also cover."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_run":
        return _run(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 unless every fault ended as expected")
    parser.add_argument("--only", nargs="*", choices=sorted(FAULTS), help="run only these faults")
    parser.add_argument("--quick", action="store_true", help=f"run only the {len(QUICK)} rows CI runs (QUICK)")
    parser.add_argument("--keep", default=None, help="work folder to keep (default: a temporary one)")
    args = parser.parse_args(argv)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="vgid-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    matrix = Matrix(work)
    rows = []
    for name in args.only or (QUICK if args.quick else FAULTS):
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
