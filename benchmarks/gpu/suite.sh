#!/usr/bin/env bash
# The GPU measurement suite in one command, for a lent GPU machine (one H200, Python 3.12, torch present, no
# deepspeed/pydantic, no network): installs the carried wheels offline, then runs every stage under its own
# timeout inside an 8-minute deadline and writes suite.json, suite.md and suite.log to $OUT (default
# runs/gpu-suite) as each stage finishes. Prepare the wheels first, where PyPI answers:
#
#   bash benchmarks/gpu/wheelhouse.sh                # -> .whl/ (git-ignored, ~7 MiB)
#   bash benchmarks/gpu/suite.sh                     # on the GPU machine (device tool: carry [".whl"])
#   bash benchmarks/gpu/suite.sh --cpu-smoke         # the same stages at tiny shapes on this CPU (CI runs it)
#   bash benchmarks/gpu/suite.sh --stages fused_kl,plan   # a subset (on a GPU after the install stage)
#
# Stages, fields and the deadline: benchmarks/gpu/suite.py. Exit status 0 iff every stage run is ok.
set -uo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
# A hard stop a little past the suite's own deadline (470 s; 290 s with --cpu-smoke), in case a child ignores its
# kill; raise SUITE_HARD_STOP_S with a longer --deadline.
exec timeout --kill-after=10 "${SUITE_HARD_STOP_S:-540}" "$PYTHON" benchmarks/gpu/suite.py "$@"
