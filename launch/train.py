"""One unlearning run. Works under ``deepspeed --num_gpus K``, ``torchrun``, Slurm (``srun``) and as plain
``python launch/train.py`` (a single process; rank/world/master defaults are set).

    deepspeed launch/train.py --ds_config zero3 --config tiny output_dir=runs/x method.alpha=2
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="recipe YAML path or packaged recipe name (e.g. tiny)")
    parser.add_argument("--ds_config", "--ds-config", default=None, help="DeepSpeed JSON (default: the recipe's)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help="set by the deepspeed launcher")
    parser.add_argument("--force", action="store_true", help="overwrite a finished output_dir")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. method.alpha=2 max_steps=12")
    args = parser.parse_args(argv)

    from vgid_dist.cli import main as vgid_main

    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    overrides = list(args.overrides)
    if args.ds_config:
        overrides.append(f"ds_config={args.ds_config}")
    return vgid_main(["train", "--config", args.config, *(["--force"] if args.force else []), *overrides])


if __name__ == "__main__":
    sys.exit(main())
