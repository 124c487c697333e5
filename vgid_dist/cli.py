"""The ``vgid`` command: demo, train, eval."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def train_entry(config: str, overrides: list[str], *, force: bool = False, local_rank: int | None = None) -> int:
    """Shared by ``vgid train``, ``launch/train.py`` and cluster tasks."""
    from vgid_dist.assets import resolve_assets
    from vgid_dist.config import ConfigError, load_run_config
    from vgid_dist.data.schema import DataError
    from vgid_dist.engine.trainer import RunExistsError, run_training
    from vgid_dist.models import ModelFolderError

    if local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
    try:
        cfg = resolve_assets(load_run_config(config, overrides))
        run_training(cfg, force=force)
    except (ConfigError, DataError, ModelFolderError, RunExistsError) as exc:
        return _fail(str(exc))
    return 0


def cmd_train(args) -> int:
    return train_entry(args.config, args.overrides, force=args.force)


def cmd_eval(args) -> int:
    from vgid_dist.data.schema import DataError
    from vgid_dist.eval.evaluator import EvalOptions
    from vgid_dist.eval.run import evaluate_model
    from vgid_dist.models import ModelFolderError

    opts = EvalOptions(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, icu=args.icu,
                       attack=args.attack, seed=args.seed)
    try:
        results = evaluate_model(args.model, args.data, args.forget_ratio, args.out, opts=opts, dtype=args.dtype,
                                 splits=args.splits, limit=args.limit)
    except (DataError, ModelFolderError) as exc:
        return _fail(str(exc))
    if results is not None:
        from vgid_dist.eval.report import format_split_table

        print(format_split_table({"model": results}))
        print(f"results: {args.out}")
    return 0


def cmd_demo(args) -> int:
    from vgid_dist.demo import run_demo

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    run_demo(Path(args.out), methods, family=args.family, force=args.force)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vgid", description="Distributed unlearning for multimodal LLMs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the whole job on the embedded default: synthetic benchmark, tiny model, CPU")
    p.add_argument("--out", default="vgid-demo", help="output folder (reused when run again)")
    p.add_argument("--methods", default="vgid", help="comma-separated methods to train and compare (default vgid)")
    p.add_argument("--family", default="llava", choices=["llava", "qwen2_5_vl"])
    p.add_argument("--force", action="store_true", help="retrain and re-evaluate methods already finished")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="one unlearning run (single process; use deepspeed/torchrun for several)")
    p.add_argument("--config", required=True, help="recipe YAML path or packaged recipe name")
    p.add_argument("--force", action="store_true", help="overwrite a finished output_dir")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a model folder on MLLMU-Bench")
    p.add_argument("--model", required=True, help="local Hugging Face model folder")
    p.add_argument("--data", required=True, help="benchmark folder in MLLMU-Bench layout")
    p.add_argument("--forget-ratio", type=int, default=5, choices=[5, 10, 15])
    p.add_argument("--out", required=True, help="results JSON (predictions go beside it)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--icu", choices=["declarative", "polite", "strict"], default=None,
                   help="unlearning instruction before every question (the ICU baseline)")
    p.add_argument("--attack", choices=["reverse"], default=None, help="reverse-engineering prompt after every question")
    p.add_argument("--splits", nargs="+", default=["forget", "test", "retain", "celebrity"],
                   choices=["forget", "test", "retain", "celebrity"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--limit", type=int, default=None, help="at most this many profiles per split (quick looks)")
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
