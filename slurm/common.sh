#!/bin/bash
# The body every job script in this folder shares: one Slurm task per GPU, each running launch/train.py as one
# DeepSpeed ZeRO-3 rank, checkpoint-and-requeue on the time-limit signal. The job scripts (vgid_7b.sh,
# vgid_13b.sh, qwen_3b.sh) carry only their #SBATCH lines and default recipe, then hand over to this file:
#
#   exec bash "$REPO/slurm/common.sh" "$@"
#
# Environment (exported before sbatch; sbatch passes the environment on to the job):
#   VGID_RECIPE        recipe name or YAML path                     (set by the job script)
#   VGID_OVERRIDES     key=value overrides, space separated; the job's arguments are appended
#   VGID_DS_CONFIG     DeepSpeed JSON                               (default zero3: packaged; or a path)
#   VGID_PYTHON        the Python that has vgid_dist installed      (default python3), or a command that
#                      runs it in a container: "apptainer exec --nv vgid.sif python" (docker/README.md)
#   VGID_REPO          the repository root                          (default the directory sbatch ran in)
#   VGID_SRUN_ARGS     extra srun arguments, e.g. a container: --container-image=... (see docker/README.md)
#   VGID_CKPT_GRACE_S  seconds the trainer gets to checkpoint after the warning signal, before the job is
#                      requeued                                     (default 240; keep it below --signal's)
#   MASTER_PORT        rendezvous port                              (default derived from the job id)
#   MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME   where the run is tracked (default ./mlflow.db, "vgid")
set -euo pipefail

: "${VGID_RECIPE:?set by the job script (slurm/vgid_7b.sh, ...) or exported before sbatch}"
RECIPE=$VGID_RECIPE
DS_CONFIG=${VGID_DS_CONFIG:-zero3}
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

# Slurm sends USR1 to the batch shell (this process: the job script exec'd it) --signal's seconds before the
# time limit (and on a preemption notice where the cluster is set up so): pass it on to the ranks, which write
# a checkpoint, give them GRACE_S, then requeue. The requeued job runs the job script again with the same
# output_dir, which resumes there and continues the same MLflow run.
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
