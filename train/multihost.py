"""Joining a multi-process (multi-host) JAX run before anything touches a device.

    srun python -m train ...                             # SLURM: tpu/slurm.sbatch
    JAX_COORDINATOR_ADDRESS=10.0.0.1:1234 JAX_NUM_PROCESSES=4 JAX_PROCESS_ID=$i python -m train ...
    python -m train --coordinator_address 10.0.0.1:1234 --num_processes 4 --process_id $i ...
    python -m train --multihost ...                      # TPU pods, ...: JAX auto-detects

Every process runs the same program. After `initialize`, `jax.devices()` lists the devices of
all processes, the trainer's mesh spans them, each process feeds its own rows of the global
batch (pipelines/text.py shards by `jax.process_index()`), only process 0 writes metrics and
config.json, and orbax writes checkpoints collectively (the workdir must be a path every
process sees). On CPU the cross-process collectives go through gloo.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import jax

from train import distributed


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, auto: bool = False,
               environ: Mapping[str, str] | None = None) -> distributed.ProcessEnv | None:
  """`jax.distributed.initialize` once, from the first of these that applies:

  1. the flags: all three of `coordinator_address`, `num_processes`, `process_id`;
  2. the environment (`environ`, default `os.environ`): `train.distributed.resolve`, i.e. the
     `JAX_COORDINATOR_ADDRESS` / `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID` variables or an `srun`
     step of 2+ tasks;
  3. `auto` (`--multihost`): JAX's own detection (TPU VMs, Open MPI, Kubernetes, ...).

  Otherwise (one process) nothing happens. In 1 and 2 JAX's cluster detection is switched off,
  so the values given are the values used (JAX's SLURM detection would otherwise restrict each
  process to GPU `SLURM_LOCALID`). Returns the `ProcessEnv` joined with in 1 and 2, else None.
  """
  environ = os.environ if environ is None else environ
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ValueError('give all of --coordinator_address, --num_processes and --process_id '
                       f'(got {coordinator_address!r}, {num_processes!r}, {process_id!r}), or '
                       'none of them to read srun\'s or the JAX_* variables (train/distributed.py)')
    if not 0 <= process_id < num_processes:
      raise ValueError(f'--process_id={process_id} must be in [0, --num_processes={num_processes})')
    env = distributed.ProcessEnv(coordinator_address, num_processes, process_id,
                                 distributed.local_device_ids(environ), 'flags')
  else:
    env = distributed.resolve(environ)
    if env is None and not auto:
      return None
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # only the CPU backend reads it
  if env is None:  # --multihost with no variables we read: JAX's own cluster detection
    jax.distributed.initialize()
    return None
  jax.distributed.initialize(coordinator_address=env.coordinator_address,
                             num_processes=env.num_processes, process_id=env.process_id,
                             local_device_ids=(list(env.local_device_ids)
                                               if env.local_device_ids else None),
                             cluster_detection_method='deactivate')
  return env
