"""The tiny demo's VGID run on this machine's device, end to end through the ``vgid`` command: training steps of a
tiny random LLaVA on the synthetic benchmark (ZeRO-3 student and frozen teacher engines, fused KL), bf16 with
flash-attention where it is installed (SDPA otherwise) on a GPU, fp32 on CPU, then ``vgid eval`` of the result
on a few questions (batched generation). Prints one JSON line:

    {"vgid_step": "tiny", "device", "dtype", "attention", "steps", "loss_first", "loss_last", "finite",
     "step_time_s", "train_seconds", "eval_questions", "eval_seconds", "eval_forget_gen_rougeL"}

    python benchmarks/gpu/vgid_step.py --work /tmp/vgid-step [--steps 3] [--eval-limit 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(args: list[str], timeout: float) -> float:
    """A ``vgid`` command in a child process (as a user runs it); its wall time. Fails with its output's tail."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vgid_dist.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "VGID_TRACKING": "off"})
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"vgid {args[0]} exited {proc.returncode}")
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="folder for the model, the run and the evaluation")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--eval-limit", type=int, default=1, help="profiles per split in the evaluation")
    p.add_argument("--timeout", type=float, default=300, help="per vgid command, seconds")
    args = p.parse_args(argv)

    import torch

    from vgid_dist.assets import resolve_tiny_path
    from vgid_dist.data.synthetic import corpus
    from vgid_dist.models.tiny import build_tiny_llava

    on_gpu = torch.cuda.is_available()
    dtype = "bfloat16" if on_gpu else "float32"
    # What model.attention=auto resolves to (DeepSpeedStrategy.attention_impl).
    attention = "flash_attention_2" if on_gpu and importlib.util.find_spec("flash_attn") else "sdpa"
    work = Path(args.work)
    bench = Path(resolve_tiny_path("@tiny/benchmark", log=lambda *_: None))
    init = work / "init"
    if not (init / "config.json").is_file():
        build_tiny_llava(init, corpus(bench))
    run_dir = work / "run"
    train_s = run(["train", "--config", "tiny", "--force", f"model.path={init}", f"data.root={bench}",
                   f"model.dtype={dtype}", f"model.attention={attention}", f"max_steps={args.steps}", "log_every=1",
                   "eval.at_end=false", f"output_dir={run_dir}"], args.timeout)
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines() if line.strip()]
    losses = [float(row["loss"]) for row in log]
    step_times = [float(row["step_time_s"]) for row in log if "step_time_s" in row]
    results = work / "eval.json"
    eval_s = run(["eval", "--model", str(run_dir / "model"), "--data", str(bench), "--out", str(results),
                  "--limit", str(args.eval_limit), "--dtype", dtype], args.timeout)
    scores = json.loads(results.read_text())
    print(json.dumps({
        "vgid_step": "tiny", "device": torch.cuda.get_device_name() if on_gpu else "cpu", "dtype": dtype,
        "attention": attention, "steps": len(losses), "loss_first": losses[0], "loss_last": losses[-1],
        "finite": all(math.isfinite(x) for x in losses),
        # The first step carries one-time costs (allocations, kernel selection): the steady figure is the rest.
        "step_time_s": round(sum(step_times[1:]) / max(1, len(step_times) - 1), 4) if step_times else None,
        "train_seconds": round(train_s, 2), "eval_questions": scores["meta"]["questions"],
        "eval_seconds": round(eval_s, 2), "eval_forget_gen_rougeL": scores["forget"].get("gen_rougeL"),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
