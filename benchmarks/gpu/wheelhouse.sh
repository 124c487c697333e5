#!/usr/bin/env bash
# Builds, on a machine with PyPI access, the wheels the lent GPU machine lacks, into .whl/ (git-ignored), for
# that machine's Python (3.12, x86-64 Linux, CPython ABI). The GPU machine has torch, transformers, peft,
# accelerate, safetensors, tokenizers, numpy, pyarrow, pandas, matplotlib, pyyaml, tqdm, psutil, py-cpuinfo,
# msgpack, einops, ninja, triton, pytest and no network; what the service needs beyond that is carried:
#
#   deepspeed         no wheel on PyPI: built here from its sdist, pure Python (its ops are JIT-built on use)
#   hjson             deepspeed's config parser
#   pydantic (+ pydantic-core, cp312 manylinux; annotated-types, typing-inspection, typing-extensions)
#   liger-kernel      the fused-KL benchmark's third implementation (Triton)
#   vgid-dist         this package, as a wheel (what `pip install` of the working tree gives)
#
# Not carried: rouge-score and nltk (vgid_dist.eval.metrics computes ROUGE-L and BLEU itself; only the tests'
# reference checks import them, and skip without them), mlflow and submitit (tracking and Slurm sweeps; the GPU
# suite runs with VGID_TRACKING=off) and flash-attn (a CUDA source build; SDPA serves). Versions are the ones this repository's tests run with.
#
#   bash benchmarks/gpu/wheelhouse.sh            # -> .whl/*.whl and .whl/manifest.json (<= 60 MiB)
#
# On the GPU machine `bash benchmarks/gpu/suite.sh` installs them offline (`pip install --no-index --no-deps
# --target`); the device tool carries the folder with carry=[".whl"].
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
DEST=$(realpath -m "${WHEELHOUSE:-.whl}")
TARGET_PYTHON=3.12
LIMIT_MIB=60
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
           manylinux1_x86_64)

# Wheels on PyPI (platform-specific ones are fetched for the target's ABI, whatever this machine runs).
BINARY=(
  pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2
  typing-extensions==4.16.0 hjson==3.1.0
  liger-kernel==0.8.5
)
# Source distributions only: built here into pure-Python wheels.
SOURCE=(deepspeed==0.19.8)

mkdir -p "$DEST"
rm -f "$DEST"/*.whl "$DEST"/manifest.json  # a fresh set: two versions of a project stop the install
platform_args=()
for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$TARGET_PYTHON" --implementation cp \
  "${platform_args[@]}" -d "$DEST" "${BINARY[@]}"
# --no-build-isolation: deepspeed's setup.py imports torch, which an isolated build env would not have. With no
# DS_BUILD_* set it prebuilds no op, so the wheel is pure Python and picks its accelerator at run time.
"$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "${SOURCE[@]}"
# This package from a copy of the working tree's files (tracked and untracked, not ignored): a build in place
# would reuse a stale build/ folder.
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$tree"
"$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "$tree"

"$PYTHON" - "$DEST" "$TARGET_PYTHON" "$LIMIT_MIB" <<'PY'
"""Checks every wheel installs on the target (tags, one version per project) and writes manifest.json."""
import hashlib, json, re, subprocess, sys
from pathlib import Path

dest, target, limit = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
wheels = sorted(dest.glob("*.whl"))
digits = target.replace(".", "")
runs_here = {"py3", "py" + digits, "cp" + digits}
projects = {}
for w in wheels:
    name, _, rest = w.name.partition("-")
    projects.setdefault(re.sub(r"[-_.]+", "-", name).lower(), []).append(w.name)
    python_tag, abi_tag, platform_tag = w.stem.split("-")[-3:]
    if not runs_here & set(python_tag.split(".")):
        sys.exit(f"{w.name}: python tag {python_tag} does not run on CPython {target}")
    if platform_tag != "any" and "x86_64" not in platform_tag:
        sys.exit(f"{w.name}: platform {platform_tag} is not x86-64 Linux")
doubles = {k: v for k, v in projects.items() if len(v) > 1}
if doubles:
    sys.exit(f"two versions of one project would stop the install: {doubles}")
total = sum(w.stat().st_size for w in wheels) / 2**20
if total > limit:
    sys.exit(f"{dest}: {total:.1f} MiB of wheels, over the {limit:g} MiB the device tool can carry")
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None
dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                            text=True).stdout.strip())
manifest = {"python": target, "commit": commit, "dirty": dirty, "mib": round(total, 2),
            "wheels": [{"file": w.name, "bytes": w.stat().st_size,
                        "sha256": hashlib.sha256(w.read_bytes()).hexdigest()} for w in wheels]}
(dest / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
print(f"{dest}: {len(wheels)} wheels, {total:.1f} MiB, for CPython {target} (commit {commit}{'+dirty' if dirty else ''})")
PY
