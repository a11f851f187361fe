"""Joining a multi-process (multi-host) JAX run before anything touches a device.

    python -m train --multihost ...                      # TPU pods, SLURM, ...: auto-detected
    python -m train --coordinator_address 10.0.0.1:1234 --num_processes 4 --process_id $i ...

Every process runs the same program. After `initialize`, `jax.devices()` lists the devices of
all processes, the trainer's mesh spans them, each process feeds its own rows of the global
batch (pipelines/text.py shards by `jax.process_index()`), only process 0 writes metrics and
config.json, and orbax writes checkpoints collectively (the workdir must be a path every
process sees). On CPU the cross-process collectives go through gloo.
"""
from __future__ import annotations

import jax


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, auto: bool = False) -> None:
  """`jax.distributed.initialize`, explicitly (all three arguments) or auto-detected (`auto`:
  the clusters JAX knows, e.g. TPU VMs, SLURM, Open MPI, Kubernetes). Does nothing when
  neither is asked for."""
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ValueError('give all of --coordinator_address, --num_processes and --process_id '
                       f'(got {coordinator_address!r}, {num_processes!r}, {process_id!r}), or '
                       'only --multihost to detect them (TPU pods, SLURM)')
    if not 0 <= process_id < num_processes:
      raise ValueError(f'--process_id={process_id} must be in [0, --num_processes={num_processes})')
  elif not auto:
    return
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # only the CPU backend reads it
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
