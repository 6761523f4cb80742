#!/usr/bin/env bash
# GPU cluster with SLURM: one JAX process per GPU; jax.distributed.initialize() takes the coordinator (the first
# node of the allocation) and the process ids from SLURM's environment.
#
#   launch/slurm_gpu.sh [--dry-run] [-- extra usjepa_jax.main flags]     # submits itself with sbatch
#
# Variables: NODES [1]  GPUS_PER_NODE [8]  CONFIG [configs/paper_vitb16.py]  WORKDIR [$PWD/workdirs/usjepa_b16]
#            PARTITION (optional)  TIME [48:00:00]  ACCOUNT (optional)
# The workdir must be on a filesystem every node sees. SLURM sends SIGTERM 120 s before the time limit or a
# preemption (--signal); the run then saves a checkpoint and exits with 75 (EX_TEMPFAIL, usjepa_jax/cli.py), on
# which this script requeues the job (scontrol requeue; --requeue allows it): the same command resumes exactly.
# Any other exit code ends the job with that code (2: a user error, 3: the run diverged).
#SBATCH --job-name=usjepa
#SBATCH --signal=TERM@120
#SBATCH --requeue
#SBATCH --output=usjepa-%j.out
set -euo pipefail

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
if [[ "${1:-}" == "--" ]]; then shift; fi

NODES="${NODES:-1}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
CONFIG="${CONFIG:-configs/paper_vitb16.py}"
WORKDIR="${WORKDIR:-$PWD/workdirs/usjepa_b16}"
TIME="${TIME:-48:00:00}"

run() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  if [[ "$DRY_RUN" == 0 ]]; then "$@"; fi
}

if [[ -z "${SLURM_JOB_ID:-}" ]]; then
  # Outside a job: submit this script. One task (process) per GPU, one GPU per task.
  opts=(--nodes="$NODES" --ntasks-per-node="$GPUS_PER_NODE" --gpus-per-task=1 --cpus-per-task=8 --time="$TIME")
  if [[ -n "${PARTITION:-}" ]]; then opts+=(--partition="$PARTITION"); fi
  if [[ -n "${ACCOUNT:-}" ]]; then opts+=(--account="$ACCOUNT"); fi
  run sbatch "${opts[@]}" --export=ALL,CONFIG="$CONFIG",WORKDIR="$WORKDIR" "$0" -- "$@"
else
  # Inside the job: srun starts every process; each sees only its own GPU (CUDA_VISIBLE_DEVICES per task).
  rc=0
  run srun --kill-on-bad-exit=1 python -m usjepa_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@" || rc=$?
  if [[ "$rc" == 75 ]]; then
    echo "preempted with a checkpoint saved: requeueing job $SLURM_JOB_ID" >&2
    run scontrol requeue "$SLURM_JOB_ID"
  fi
  exit "$rc"
fi
