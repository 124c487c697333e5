#!/bin/bash
# VGID on Qwen2.5-VL-3B-Instruct (the MLLMU-Bench vanilla model) with DeepSpeed ZeRO-3: one Slurm task per
# GPU, each running launch/train.py as one rank. Submit from the repository root:
#
#   sbatch slurm/qwen_3b.sh                                    # the recipe as it is
#   sbatch slurm/qwen_3b.sh data.forget_ratio=10 method.alpha=2  # key=value overrides
#   VGID_OVERRIDES="data.forget_ratio=15" sbatch slurm/qwen_3b.sh
#
# What to change for your cluster (edit the #SBATCH lines, or pass the option to sbatch, which wins):
#   --partition, --account, --qos   your cluster's names (uncomment the lines below)
#   --gpus-per-node, --ntasks-per-node
#                                   always equal (one task per GPU). The paper's global batch of 4 allows
#                                   1, 2 or 4 GPUs: optim.batch_size must divide by GPUs x optim.grad_accum
#   --cpus-per-task, --mem          what your GPU nodes have per GPU
#   --time                          an upper bound for one epoch; a job that reaches it is requeued
#   VGID_MODELS, VGID_DATA          (environment) the folders holding qwen2.5-vl-3b-vanilla and MLLMU-Bench,
#                                   read by the recipe; or override model.path= and data.root=
#
# Environment overrides (exported before sbatch; sbatch passes the environment on to the job):
#   VGID_RECIPE        recipe name or YAML path                     (default qwen2.5-vl-3b)
#   VGID_OVERRIDES     key=value overrides, space separated; the script's arguments are appended
#   VGID_DS_CONFIG     DeepSpeed JSON                               (default ds_configs/zero3.json)
#   VGID_PYTHON        the Python that has vgid_dist installed      (default python3), or a command that
#                      runs it in a container: "apptainer exec --nv vgid.sif python" (docker/README.md)
#   VGID_REPO          the repository root                          (default the directory sbatch ran in)
#   VGID_SRUN_ARGS     extra srun arguments, e.g. a container: --container-image=... (see docker/README.md)
#   VGID_CKPT_GRACE_S  seconds the trainer gets to checkpoint after the warning signal, before the job is
#                      requeued                                     (default 240; keep it below --signal's)
#   MASTER_PORT        rendezvous port                              (default derived from the job id)
#   MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME   where the run is tracked (default ./mlflow.db, "vgid")
#
#SBATCH --job-name=vgid-qwen3b
#SBATCH --nodes=1
#SBATCH --gpus-per-node=4
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
##SBATCH --partition=gpu
##SBATCH --account=my-project
##SBATCH --qos=normal
##SBATCH --mem=0
set -euo pipefail

RECIPE=${VGID_RECIPE:-qwen2.5-vl-3b}
DS_CONFIG=${VGID_DS_CONFIG:-ds_configs/zero3.json}
REPO=${VGID_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
GRACE_S=${VGID_CKPT_GRACE_S:-240}
read -r -a PYTHON <<<"${VGID_PYTHON:-python3}"
read -r -a OVERRIDES <<<"${VGID_OVERRIDES:-}"
read -r -a SRUN_ARGS <<<"${VGID_SRUN_ARGS:-}"
cd "$REPO"

# torch.distributed meets on the first node of the allocation, on a port the job id makes unique per job.
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_ADDR
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
# Each rank's CPU threads: the CPUs Slurm gave its task, not every core of the node.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export PYTHONUNBUFFERED=1

echo "[vgid] job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST: $SLURM_NTASKS tasks," \
    "master $MASTER_ADDR:$MASTER_PORT, recipe $RECIPE, $DS_CONFIG, overrides: ${OVERRIDES[*]} $*"

# Slurm sends USR1 to this script --signal's seconds before the time limit (and on a preemption notice where
# the cluster is set up so): pass it on to the ranks, which write a checkpoint, give them GRACE_S, then
# requeue. The requeued job runs this script again with the same output_dir, which resumes there and
# continues the same MLflow run.
requeue() {
    echo "[vgid] USR1: asking the ranks to checkpoint, then requeueing job $SLURM_JOB_ID"
    scancel --signal=USR1 "$SLURM_JOB_ID" || true
    for ((i = 0; i < GRACE_S; i++)); do
        kill -0 "$SRUN_PID" 2>/dev/null || break
        sleep 1
    done
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
}
trap requeue USR1

# One task per GPU; each task gets its rank from Slurm's variables (DeepSpeed picks the GPU from LOCAL_RANK),
# expanded by the task's own shell, hence the single quotes.
# shellcheck disable=SC2016
srun --kill-on-bad-exit=1 "${SRUN_ARGS[@]}" bash -c '
    export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID
    per_node=${SLURM_NTASKS_PER_NODE:-$SLURM_NTASKS}
    export LOCAL_WORLD_SIZE=${per_node%%(*}
    exec "$@"' vgid-rank "${PYTHON[@]}" launch/train.py --config "$RECIPE" --ds_config "$DS_CONFIG" \
    "${OVERRIDES[@]}" "$@" &
SRUN_PID=$!
# A trapped signal interrupts `wait`; the handler then decides what happens to the job.
wait "$SRUN_PID"
