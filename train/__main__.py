"""CLI: python -m train --config configs/ar_code.py:small --workdir runs/ar_code [--config.x=y ...]

Rerunning the same command resumes from the newest checkpoint in --workdir.
Several processes join one run (jax.distributed, before anything touches a device) when launched
by srun (tpu/slurm.sbatch), with JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set
(train/distributed.py), with the three flags below, or with --multihost (TPU pods).
A mistake in the command (a misspelt --config key, an unwritable --workdir, data that does not
fit the config) prints one line naming what to change and exits 2.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'config file and preset, e.g. '
                                          'configs/ar_code.py:small', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'run directory (checkpoints, metrics, config)')
_MULTIHOST = flags.DEFINE_bool('multihost', False, 'join a multi-process run whose coordinator '
                                'JAX detects (TPU pods, Open MPI, k8s); srun steps and the '
                                'JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID '
                                'variables are read without it')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0, for '
                                   'multi-process runs JAX cannot detect (with the next two)')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'processes in the run')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, "this process's index, 0-based")
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  from train import multihost  # joins the run (if any) before the trainer touches a device
  joined = multihost.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                auto=_MULTIHOST.value)
  if joined is not None and joined.process_id == 0:
    print(f'joined {joined.num_processes} processes through {joined.coordinator_address} '
          f'({joined.source})', flush=True)
  from train.trainer import train
  train(_CONFIG.value, _WORKDIR.value)


def cli(argv=None) -> None:
  """`python -m train ...`: --config.* overrides checked against the config file first (a typo
  names its full dotted key and the closest real ones), then absl parses and runs `main`."""
  from train.cli import check_overrides, config_arg, run_main

  def checked(argv):
    spec = config_arg(argv)
    if spec:
      from train.config import from_file
      check_overrides(from_file(spec), argv)
    app.run(main, argv=argv)
  run_main(checked, sys.argv if argv is None else argv)


if __name__ == '__main__':
  cli()
