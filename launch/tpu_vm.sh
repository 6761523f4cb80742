#!/usr/bin/env bash
# Cloud TPU VM (single host or pod slice): create through a queued resource (spot or on-demand), set up every
# worker, run `python -m usjepa_jax.main` on all workers, stream logs, delete.
#
#   launch/tpu_vm.sh [--dry-run] all|create|wait|setup|run|logs|delete [-- extra usjepa_jax.main flags]
#
# Configure with environment variables (defaults in brackets):
#   PROJECT [gcloud default project]   ZONE [us-central2-b]        TPU_NAME [usjepa]   SPOT [1]
#   ACCELERATOR_TYPE [v4-16]: v4-N, v5litepod-N (v5e), v5p-N, v6e-N (Trillium); v2/v3 too
#   RUNTIME_VERSION [by generation, Cloud TPU's JAX images: v6e v2-alpha-tpuv6e, v5p v2-alpha-tpuv5,
#                    v5e v2-alpha-tpuv5-lite, v4 and older tpu-ubuntu2204-base]
#   PYTHON [python3.11]: the interpreter of the workers' venv (~/usjepa_venv); our pins need Python >= 3.11 and
#          these Ubuntu 22.04 images ship 3.10, so setup installs python3.11 from Ubuntu's archive if missing
#   BUCKET (required for setup/run): the workdir is gs://$BUCKET/$RUN_NAME, written straight to the bucket
#          through etils.epath/gcsfs (installed by setup: the [gcs] extra); every host sees it
#   MOUNT [0]: 1 = gcsfuse-mount the bucket at /gcs/$BUCKET instead (gcsfuse must be on the workers) with the
#          flags orbax's rename-based checkpoint finalisation needs: --implicit-dirs --rename-dir-limit=200000
#   CONFIG [configs/paper_vitb16.py]    RUN_NAME [usjepa_b16]
#   REPO_URL (required for setup: the git URL of this repository, or your fork)   BRANCH [main]
# Caveats: every command must run on *all* workers (--worker=all): each host is one JAX process and
# jax.distributed.initialize() finds its peers through the TPU metadata; the workdir must be shared by all hosts.
# SIGTERM (a maintenance event, a spot TPU's preemption notice) makes the run save a checkpoint and exit with 75
# (EX_TEMPFAIL, usjepa_jax/cli.py); `run` restarts it on that code while the VM lives, which resumes exactly. A
# preempted spot TPU is gone: `all` again (same RUN_NAME) resumes from the bucket.
set -euo pipefail

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
ACTION="${1:-all}"
shift || true
if [[ "${1:-}" == "--" ]]; then shift; fi
EXTRA_FLAGS=("$@")

PROJECT="${PROJECT:-$(gcloud config get-value project 2>/dev/null || echo my-project)}"
ZONE="${ZONE:-us-central2-b}"
TPU_NAME="${TPU_NAME:-usjepa}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-16}"
SPOT="${SPOT:-1}"
BUCKET="${BUCKET:-}"
MOUNT="${MOUNT:-0}"
PYTHON="${PYTHON:-python3.11}"
VENV="\$HOME/usjepa_venv"  # expanded on the workers
CONFIG="${CONFIG:-configs/paper_vitb16.py}"
RUN_NAME="${RUN_NAME:-usjepa_b16}"
REPO_URL="${REPO_URL:-}"
BRANCH="${BRANCH:-main}"
QUEUED_ID="${TPU_NAME}-qr"

runtime_for() {
  # Cloud TPU's software version for JAX, per TPU generation (the accelerator type's prefix).
  case "$1" in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v2-*|v3-*|v4-*) echo tpu-ubuntu2204-base ;;
    *) echo "unknown ACCELERATOR_TYPE '$1' (v4-N, v5litepod-N, v5p-N, v6e-N); or set RUNTIME_VERSION" >&2; exit 2 ;;
  esac
}
RUNTIME_VERSION="${RUNTIME_VERSION:-}"
if [[ "$MOUNT" == 1 ]]; then WORKDIR="/gcs/$BUCKET/$RUN_NAME"; else WORKDIR="gs://$BUCKET/$RUN_NAME"; fi

run() {
  # Print the command; execute it unless --dry-run.
  printf '+'; printf ' %q' "$@"; printf '\n'
  if [[ "$DRY_RUN" == 0 ]]; then "$@"; fi
}

need_bucket() {
  if [[ -z "$BUCKET" ]]; then echo "BUCKET is required for '$ACTION' (the shared workdir lives there)" >&2; exit 2; fi
}

on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --worker=all --command="$1"
}

create() {
  local spot_flag=()
  if [[ "$SPOT" == 1 ]]; then spot_flag=(--spot); fi
  local runtime="$RUNTIME_VERSION"
  if [[ -z "$runtime" ]]; then runtime=$(runtime_for "$ACCELERATOR_TYPE"); fi
  run gcloud compute tpus queued-resources create "$QUEUED_ID" --node-id="$TPU_NAME" --project="$PROJECT" \
    --zone="$ZONE" --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$runtime" "${spot_flag[@]}"
}

wait_active() {
  local cmd=(gcloud compute tpus queued-resources describe "$QUEUED_ID" --project="$PROJECT" --zone="$ZONE"
             --format='value(state.state)')
  if [[ "$DRY_RUN" == 1 ]]; then run "${cmd[@]}"; return; fi
  until [[ "$("${cmd[@]}")" == "ACTIVE" ]]; do echo "waiting for $QUEUED_ID to become ACTIVE..."; sleep 30; done
}

setup() {
  need_bucket
  if [[ -z "$REPO_URL" ]]; then echo "REPO_URL is required for 'setup' (git URL of this repository)" >&2; exit 2; fi
  local mount=""
  if [[ "$MOUNT" == 1 ]]; then
    mount="; command -v gcsfuse >/dev/null || { echo 'MOUNT=1 needs gcsfuse on the workers' >&2; exit 2; }; \
sudo mkdir -p /gcs/$BUCKET && (mountpoint -q /gcs/$BUCKET || sudo gcsfuse --implicit-dirs --rename-dir-limit=200000 \
-o allow_other $BUCKET /gcs/$BUCKET)"
  fi
  on_all_workers "set -e; (cd usjepa_jax 2>/dev/null && git pull) || git clone -b $BRANCH $REPO_URL usjepa_jax; \
command -v $PYTHON >/dev/null || (sudo apt-get update -q && sudo apt-get install -y -q $PYTHON ${PYTHON}-venv); \
[ -x $VENV/bin/python ] || $PYTHON -m venv $VENV; \
cd usjepa_jax && $VENV/bin/pip install -q -U pip && $VENV/bin/pip install -q -e '.[tpu,gcs,dicom,nifti,video,hdf5]' -c requirements.txt$mount"
}

start() {
  need_bucket
  local flags=""
  if ((${#EXTRA_FLAGS[@]})); then flags=$(printf ' %q' "${EXTRA_FLAGS[@]}"); fi
  # requeue on 75 (preempted, checkpoint saved); any other code ends the loop (0 done, 2 user error, 3 diverged)
  on_all_workers "cd usjepa_jax && nohup bash -c 'rc=75; while [ \$rc = 75 ]; do $VENV/bin/python -m usjepa_jax.main \
--config=$CONFIG --workdir=$WORKDIR$flags; rc=\$?; done; exit \$rc' > ~/usjepa_train.log 2>&1 &"
}

logs() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --worker=0 \
    --command="tail -n 100 -f ~/usjepa_train.log"
}

delete() {
  run gcloud compute tpus queued-resources delete "$QUEUED_ID" --project="$PROJECT" --zone="$ZONE" --force --quiet
}

case "$ACTION" in
  create) create ;;
  wait) wait_active ;;
  setup) setup ;;
  run) start ;;
  logs) logs ;;
  delete) delete ;;
  all) create; wait_active; setup; start; logs ;;
  *) echo "unknown action '$ACTION' (all|create|wait|setup|run|logs|delete)" >&2; exit 2 ;;
esac
