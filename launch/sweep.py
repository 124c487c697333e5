"""Submit a sweep: the model x forget-ratio x method matrix through submitit, tracked in MLflow. The same as
``vgid sweep``, for clusters where the package's console script is not on PATH.

    python launch/sweep.py tiny-matrix --executor slurm --wait --experiment X
    python launch/sweep.py vgid_dist/recipes/matrices/paper-table3.yaml --dry-run
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from vgid_dist.cli import main as vgid_main

    return vgid_main(["sweep", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
