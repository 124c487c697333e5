#!/bin/bash
# VGID on LLaVA-1.5-13B (the MLLMU-Bench vanilla model) with DeepSpeed ZeRO-3:
# one Slurm task per GPU, each running launch/train.py as one rank (the body is slurm/common.sh).
# Submit from the repository root:
#
#   sbatch slurm/vgid_13b.sh                                       # the recipe (llava-1.5-13b) as it is
#   sbatch slurm/vgid_13b.sh data.forget_ratio=10 method.alpha=2   # key=value overrides
#   VGID_OVERRIDES="data.forget_ratio=15" sbatch slurm/vgid_13b.sh
#
# What to change for your cluster (edit the #SBATCH lines, or pass the option to sbatch, which wins):
# slurm/README.md. Environment overrides (VGID_RECIPE, VGID_OVERRIDES, VGID_DS_CONFIG, VGID_PYTHON, ...):
# slurm/common.sh.
#
#SBATCH --job-name=vgid-13b
#SBATCH --nodes=1
#SBATCH --gpus-per-node=4
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
##SBATCH --partition=gpu
##SBATCH --account=my-project
##SBATCH --qos=normal
##SBATCH --mem=0
export VGID_RECIPE=${VGID_RECIPE:-llava-1.5-13b}
# sbatch runs a copy of this script from its spool folder: the shared body is found in the repository.
exec bash "${VGID_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/common.sh" "$@"
