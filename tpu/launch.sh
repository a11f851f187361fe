#!/usr/bin/env bash
# Launch a training run on every worker of a TPU VM slice (one process per host).
#
#   tpu/launch.sh NAME ZONE configs/ar_code.py:1b /mnt/shared/runs/ar_1b [--config.x=y ...]
#
# WORKDIR must be a directory every host sees (NFS / Filestore / a gcsfuse mount): metrics and
# config.json are written with plain file I/O, so a bare gs:// path is not supported yet.
#
# Each host runs `python -m train --multihost`, which calls jax.distributed.initialize() (the
# TPU runtime supplies the coordinator), reads its own shard of the data (pipelines/text.py) and
# lets process 0 write logs. Rerunning the same command resumes from the newest checkpoint
# (after a preemption too: SIGTERM saves one at the next step boundary). The checkout is the
# one tpu/create.sh copied to ~/jax-paradigms. Multi-node GPUs: see tpu/README.md.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
name=$1 zone=$2 config=$3 workdir=$4
shift 4
repo=${REPO_DIR:-jax-paradigms}
gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "
  set -e
  cd $repo
  python3 -m venv .venv && . .venv/bin/activate
  pip install -q -e '.[tpu]'
  python -m train --multihost --config $config --workdir $workdir --config.train.progress=False $*
"
