#!/usr/bin/env bash
# Create a TPU VM slice and copy this checkout to every worker (then run tpu/launch.sh).
#
#   tpu/create.sh NAME ZONE ACCELERATOR_TYPE [RUNTIME_VERSION]
#   tpu/create.sh my-v5p us-east5-a v5p-8              # 4 chips, 1 host
#   tpu/create.sh my-v5e us-west4-a v5litepod-16       # 16 chips, 4 hosts
#   tpu/create.sh my-v6e us-east1-d v6e-8
#
# The runtime version defaults by generation (v5p: v2-alpha-tpuv5, v5e: v2-alpha-tpuv5-lite,
# v6e: v2-alpha-tpuv6e, v4: tpu-ubuntu2204-base); `gcloud compute tpus tpu-vm versions list
# --zone ZONE` lists the current ones. SPOT=1 asks for spot capacity (preemptible: the trainer
# checkpoints on SIGTERM and the same launch command resumes).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 NAME ZONE ACCELERATOR_TYPE [RUNTIME_VERSION]" >&2
  exit 2
fi
name=$1 zone=$2 type=$3
case "$type" in
  v5p-*) default=v2-alpha-tpuv5 ;;
  v5litepod-*) default=v2-alpha-tpuv5-lite ;;
  v6e-*) default=v2-alpha-tpuv6e ;;
  v4-*) default=tpu-ubuntu2204-base ;;
  *) default= ;;
esac
version=${4:-$default}
if [ -z "$version" ]; then
  echo "no default runtime version for $type; pass one (gcloud compute tpus tpu-vm versions list)" >&2
  exit 2
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
gcloud compute tpus tpu-vm create "$name" --zone "$zone" --accelerator-type "$type" \
  --version "$version" ${SPOT:+--spot}
# the working tree without venvs, runs and caches
tar -C "$repo" --exclude=.venv --exclude=.ci-venv --exclude=runs --exclude=logs \
  --exclude=__pycache__ --exclude=.git -czf /tmp/jax-paradigms.tgz .
gcloud compute tpus tpu-vm scp /tmp/jax-paradigms.tgz "$name":~/ --zone "$zone" --worker=all
gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command \
  "mkdir -p jax-paradigms && tar -C jax-paradigms -xzf jax-paradigms.tgz"
echo "created $name; next: tpu/launch.sh $name $zone CONFIG WORKDIR"
