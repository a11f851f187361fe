"""CLI: python -m train --config configs/ar_code.py:small --workdir runs/ar_code [--config.x=y ...]

Rerunning the same command resumes from the newest checkpoint in --workdir.
"""
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'config file and preset, e.g. '
                                          'configs/ar_code.py:small', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'run directory (checkpoints, metrics, config)')
_MULTIHOST = flags.DEFINE_bool('multihost', False, 'join a multi-process run whose coordinator '
                                'JAX detects (TPU pods, SLURM, Open MPI, k8s)')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0, for '
                                   'multi-process runs JAX cannot detect (with the next two)')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'processes in the run')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, "this process's index, 0-based")
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  from train import multihost
  multihost.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                       auto=_MULTIHOST.value)
  from train.trainer import train
  train(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
