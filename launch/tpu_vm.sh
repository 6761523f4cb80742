#!/usr/bin/env bash
# Cloud TPU VM (single host or pod slice): create through a queued resource (spot or on-demand), set up every
# worker, run `python -m usjepa_jax.main` on all workers, stream logs, delete.
#
#   launch/tpu_vm.sh [--dry-run] all|create|wait|setup|run|logs|delete [-- extra usjepa_jax.main flags]
#
# Configure with environment variables (defaults in brackets):
#   PROJECT [gcloud default project]   ZONE [us-central2-b]        TPU_NAME [usjepa]
#   ACCELERATOR_TYPE [v4-16]            RUNTIME_VERSION [tpu-ubuntu2204-base]   SPOT [1]
#   BUCKET (required for setup/run: gcsfuse-mounted at /gcs/$BUCKET on every worker; holds the workdir)
#   CONFIG [configs/paper_vitb16.py]    RUN_NAME [usjepa_b16]
#   REPO_URL (required for setup: the git URL of this repository, or your fork)   BRANCH [main]
# Caveats: every command must run on *all* workers (--worker=all): each host is one JAX process and
# jax.distributed.initialize() finds its peers through the TPU metadata; the workdir must be shared by all hosts.
# Spot TPUs send SIGTERM before preemption: the run saves a checkpoint and exits; `run` again resumes it.
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
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
SPOT="${SPOT:-1}"
BUCKET="${BUCKET:-}"
CONFIG="${CONFIG:-configs/paper_vitb16.py}"
RUN_NAME="${RUN_NAME:-usjepa_b16}"
REPO_URL="${REPO_URL:-}"
BRANCH="${BRANCH:-main}"
QUEUED_ID="${TPU_NAME}-qr"

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
  run gcloud compute tpus queued-resources create "$QUEUED_ID" --node-id="$TPU_NAME" --project="$PROJECT" \
    --zone="$ZONE" --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION" "${spot_flag[@]}"
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
  on_all_workers "set -e; (cd usjepa_jax 2>/dev/null && git pull) || git clone -b $BRANCH $REPO_URL usjepa_jax; \
cd usjepa_jax && pip install -q -r requirements.txt 'jax[tpu]==0.10.2'; \
sudo mkdir -p /gcs/$BUCKET && (mountpoint -q /gcs/$BUCKET || sudo gcsfuse --implicit-dirs -o allow_other $BUCKET /gcs/$BUCKET)"
}

start() {
  need_bucket
  local flags=""
  if ((${#EXTRA_FLAGS[@]})); then flags=$(printf ' %q' "${EXTRA_FLAGS[@]}"); fi
  on_all_workers "cd usjepa_jax && nohup python -m usjepa_jax.main --config=$CONFIG \
--workdir=/gcs/$BUCKET/$RUN_NAME$flags > ~/usjepa_train.log 2>&1 &"
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
