"""Evaluation time at batch size 16 vs 1 on the demo's tiny model and data, with the same (greedy) scores.

    python benchmarks/eval_speed.py                       # @tiny/vanilla-llava on @tiny/benchmark (built on first use)
    python benchmarks/eval_speed.py --model M --data D --limit 4

Both runs ask the same questions with the evaluator's own loop (``generate_predictions``) on the plain model in
this process; model loading and benchmark reading are outside the timings. The script fails (exit 1) when the
two batch sizes do not give the same replies, hence the same scores. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time


@contextlib.contextmanager
def stdout_to_stderr():
    """Route file descriptor 1 to stderr (a first-use asset build runs in a child process and logs to its
    inherited stdout), so stdout carries the JSON alone."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="@tiny/vanilla-llava")
    parser.add_argument("--data", default="@tiny/benchmark")
    parser.add_argument("--forget-ratio", type=int, default=5)
    parser.add_argument("--splits", nargs="+", default=["forget", "test", "retain", "celebrity"])
    parser.add_argument("--limit", type=int, default=None, help="at most this many profiles per split")
    parser.add_argument("--batch-sizes", type=int, nargs=2, default=[1, 16], metavar=("SMALL", "LARGE"))
    parser.add_argument("--max-new-tokens", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=1, help="time each batch size this many times; keep the best")
    args = parser.parse_args(argv)
    with stdout_to_stderr():
        result, ok = measure(args)
    print(json.dumps(result, indent=2))
    return 0 if ok else 1


def measure(args) -> tuple[dict, bool]:
    import torch

    from vgid_dist.assets import resolve_tiny_path
    from vgid_dist.config import EvalOptions
    from vgid_dist.data import MLLMUBench
    from vgid_dist.data.collate import Collator
    from vgid_dist.engine.runner import make_generate_fn
    from vgid_dist.eval.evaluator import generate_predictions, score
    from vgid_dist.eval.run import build_items
    from vgid_dist.models import load_adapter

    if args.threads:
        torch.set_num_threads(args.threads)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    model_dir = resolve_tiny_path(args.model, log=log)
    data_dir = resolve_tiny_path(args.data, log=log)
    adapter = load_adapter(model_dir)
    model = adapter.load_model(torch.float32, "sdpa").eval()
    cpu = torch.device("cpu")
    generate = make_generate_fn(model, adapter, cpu, torch.float32, synced=False)
    collator = Collator(adapter, 10**6)
    items = build_items(MLLMUBench(data_dir), args.forget_ratio, args.splits, 0, args.limit)

    load_before = os.getloadavg()
    runs = {}
    for bs in args.batch_sizes:
        opts = EvalOptions(batch_size=bs, max_new_tokens=args.max_new_tokens)
        best = None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            preds = generate_predictions(items, collator, generate, opts, progress=False)
            seconds = time.perf_counter() - t0
            best = seconds if best is None else min(best, seconds)
        runs[bs] = {"seconds": best, "replies": {p.item.uid: p.reply for p in preds},
                    "scores": {s: v for s, v in score(preds, args.splits).items() if s in args.splits}}
        log(f"batch size {bs}: {best:.1f} s for {len(items)} questions")
    small, large = args.batch_sizes
    same_replies = runs[small]["replies"] == runs[large]["replies"]
    same_scores = runs[small]["scores"] == runs[large]["scores"]
    result = {
        "model": model_dir, "data": data_dir, "questions": len(items), "max_new_tokens": args.max_new_tokens,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "seconds": {str(bs): round(runs[bs]["seconds"], 2) for bs in args.batch_sizes},
        "questions_per_s": {str(bs): round(len(items) / runs[bs]["seconds"], 2) for bs in args.batch_sizes},
        "speedup": round(runs[small]["seconds"] / runs[large]["seconds"], 2),
        "same_replies": same_replies, "same_scores": same_scores,
        "scores": runs[large]["scores"],
    }
    if not (same_replies and same_scores):
        differing = [u for u in runs[small]["replies"] if runs[small]["replies"][u] != runs[large]["replies"].get(u)]
        log(f"error: batch sizes {small} and {large} disagree on {len(differing)} replies, e.g. {differing[:3]}")
    return result, same_replies and same_scores


if __name__ == "__main__":
    sys.exit(main())
