"""Cluster launch: SLURM node lists and environments resolved in pure Python (train/distributed.py),
the one `jax.distributed.initialize` call `python -m train` makes from them, and two localhost
processes joined through JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID reaching
the losses of one process on the same config (CPU, gloo)."""
import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import ROOT
from train import distributed, multihost
from train.distributed import ProcessEnv, expand_nodelist, resolve

JOB = 123456  # default port: 61440 + 123456 % 4096 = 61440 + 576
PORT = 61440 + JOB % 4096


# --- node lists -----------------------------------------------------------------------------------

@pytest.mark.parametrize('nodelist, hosts', [
    ('node01', ['node01']),
    ('node[01-03,07],gpu-a7', ['node01', 'node02', 'node03', 'node07', 'gpu-a7']),
    ('gpu-a7,node[1-2]', ['gpu-a7', 'node1', 'node2']),
    ('n[8-10]', ['n8', 'n9', 'n10']),                       # no padding: widths grow
    ('n[008-010,5]', ['n008', 'n009', 'n010', 'n5']),      # each lower bound's width
    ('a[1-2]-b[1-2]', ['a1-b1', 'a1-b2', 'a2-b1', 'a2-b2']),  # groups: product, first slowest
    ('[1-2]x', ['1x', '2x']),
    (' h1 , h2 ', ['h1', 'h2']),
    ('dgx-h100-[0001-0002],login', ['dgx-h100-0001', 'dgx-h100-0002', 'login']),
])
def test_compressed_node_lists_expand_in_order(nodelist, hosts):
  assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize('nodelist, words', [
    ('node[01-03', 'unbalanced "["'),
    ('node01]', 'unbalanced "]"'),
    ('node[[1-2]]', 'nested'),
    ('node[3-1]', 'backwards'),
    ('node[a-c]', 'bad range'),
    ('node[1-]', 'bad range'),
    ('node[]', 'bad range'),
    ('a,,b', 'empty host'),
    ('', 'empty SLURM node list'),
])
def test_a_malformed_node_list_is_one_value_error(nodelist, words):
  with pytest.raises(ValueError, match='SLURM node list') as err:
    expand_nodelist(nodelist)
  assert words in str(err.value)


# --- faked SLURM environments ---------------------------------------------------------------------

def _srun(nodes='node[01-02]', tasks=2, procid=0, localid=0, per_node='1(x2)', **extra):
  """The variables srun sets in one task of a step (plus the job's)."""
  env = {'SLURM_JOB_ID': str(JOB), 'SLURM_JOB_NODELIST': nodes, 'SLURM_NODELIST': nodes,
         'SLURM_NTASKS': str(tasks), 'SLURM_STEP_NODELIST': nodes,
         'SLURM_STEP_NUM_TASKS': str(tasks),
         'SLURM_STEP_TASKS_PER_NODE': per_node, 'SLURM_PROCID': str(procid),
         'SLURM_LOCALID': str(localid)}
  env.update({k: str(v) for k, v in extra.items()})
  return env


def test_no_variables_or_a_batch_shell_or_one_task_is_a_single_process():
  assert resolve({}) is None
  assert resolve({'HOME': '/root', 'PATH': '/bin'}) is None
  batch_shell = {'SLURM_JOB_ID': '7', 'SLURM_JOB_NODELIST': 'node[01-02]', 'SLURM_NTASKS': '2',
                 'SLURM_PROCID': '0', 'SLURM_LOCALID': '0'}  # sbatch's shell: no srun step
  assert resolve(batch_shell) is None
  assert resolve(_srun(nodes='node01', tasks=1, per_node='1')) is None
  assert resolve({'JAX_COORDINATOR_ADDRESS': 'h:1', 'JAX_NUM_PROCESSES': '1',
                  'JAX_PROCESS_ID': '0'}) is None


def test_one_process_per_node_sees_every_gpu_of_its_node():
  for pid in range(4):
    env = resolve(_srun(nodes='node[01-03,07]', tasks=4, procid=pid, per_node='1(x4)',
                        SLURM_NODEID=pid, CUDA_VISIBLE_DEVICES='0,1,2,3,4,5,6,7'))
    assert env == ProcessEnv(f'node01:{PORT}', 4, pid, None, 'slurm')


def test_the_port_comes_from_jax_coordinator_port_then_master_port_then_the_job_id():
  assert resolve(_srun(MASTER_PORT=29500)).coordinator_address == 'node01:29500'
  assert resolve(_srun(MASTER_PORT=29500, JAX_COORDINATOR_PORT=1234)).coordinator_address == \
      'node01:1234'
  no_job = _srun()
  del no_job['SLURM_JOB_ID']
  assert resolve(no_job).coordinator_address == f'node01:{distributed.DEFAULT_PORT}'


def test_the_step_node_list_is_preferred_and_the_job_list_is_the_fallback():
  env = _srun(nodes='node[01-04]')
  env['SLURM_STEP_NODELIST'] = 'node[03-04]'  # a step on part of the allocation
  assert resolve(env).coordinator_address == f'node03:{PORT}'
  del env['SLURM_STEP_NODELIST']
  assert resolve(env).coordinator_address == f'node01:{PORT}'
  env = _srun()
  env.pop('SLURM_STEP_NUM_TASKS')  # then SLURM_NTASKS counts the processes
  env['SLURM_NTASKS'] = '2'
  assert resolve(env).num_processes == 2


def test_one_process_per_gpu_takes_gpu_localid_unless_slurm_bound_one_gpu_to_it():
  kw = dict(nodes='gpu[1-2]', tasks=16, procid=11, localid=3, per_node='8(x2)', SLURM_NODEID=1)
  shared = resolve(_srun(**kw, CUDA_VISIBLE_DEVICES='0,1,2,3,4,5,6,7'))
  assert shared == ProcessEnv(f'gpu1:{PORT}', 16, 11, (3,), 'slurm')
  assert resolve(_srun(**kw)).local_device_ids == (3,)  # no CUDA_VISIBLE_DEVICES: the same
  bound = resolve(_srun(**kw, CUDA_VISIBLE_DEVICES='3'))  # --gpus-per-task=1: GPU 3 is device 0
  assert bound.local_device_ids is None
  # uneven nodes ('2,1'): the host's own count, found by name
  uneven = _srun(nodes='a[1-2]', tasks=3, procid=2, localid=0, per_node='2,1', SLURMD_NODENAME='a2')
  assert resolve(uneven).local_device_ids is None
  uneven.update(SLURM_PROCID='1', SLURM_LOCALID='1', SLURMD_NODENAME='a1')
  assert resolve(uneven).local_device_ids == (1,)
  assert resolve(_srun(**kw, JAX_LOCAL_DEVICE_IDS='0,1')).local_device_ids == (0, 1)


def test_the_jax_variables_override_slurm_or_stand_alone():
  alone = {'JAX_COORDINATOR_ADDRESS': '127.0.0.1:5555', 'JAX_NUM_PROCESSES': '2',
           'JAX_PROCESS_ID': '1'}
  assert resolve(alone) == ProcessEnv('127.0.0.1:5555', 2, 1, None, 'env')
  assert resolve({**alone, 'JAX_COORDINATOR_ADDRESS': 'head', 'MASTER_PORT': '7000'}) \
      .coordinator_address == 'head:7000'
  assert resolve({**alone, 'JAX_COORDINATOR_ADDRESS': '[::1]:9'}).coordinator_address == '[::1]:9'
  assert resolve({**alone, 'JAX_LOCAL_DEVICE_IDS': '2'}).local_device_ids == (2,)
  # in an srun step, each JAX_* variable present replaces its SLURM value
  ib = resolve(_srun(procid=1, JAX_COORDINATOR_ADDRESS='10.1.0.1'))
  assert ib == ProcessEnv(f'10.1.0.1:{PORT}', 2, 1, None, 'slurm+env')
  assert resolve(_srun(procid=1, JAX_PROCESS_ID=0)).process_id == 0
  assert resolve({**_srun(), **alone}).source == 'env'


@pytest.mark.parametrize('env, words', [
    ({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234'},
     ['JAX_NUM_PROCESSES and JAX_PROCESS_ID', 'set all three']),
    ({'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '0'}, ['without JAX_COORDINATOR_ADDRESS']),
    ({'JAX_COORDINATOR_ADDRESS': 'h:1', 'JAX_NUM_PROCESSES': 'two', 'JAX_PROCESS_ID': '0'},
     ["JAX_NUM_PROCESSES='two' is not an integer >= 1"]),
    ({'JAX_COORDINATOR_ADDRESS': 'h:1', 'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '2'},
     ['JAX_PROCESS_ID=2 is not below JAX_NUM_PROCESSES=2']),
    ({'JAX_COORDINATOR_ADDRESS': 'h:1', 'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '-1'},
     ['JAX_PROCESS_ID']),
    ({'JAX_COORDINATOR_ADDRESS': 'a:b:c', 'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '0'},
     ['is not host:port']),
    ({'JAX_COORDINATOR_ADDRESS': 'h:70000', 'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '0'},
     ['1-65535']),
    ({'JAX_COORDINATOR_ADDRESS': 'h', 'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '0',
      'MASTER_PORT': 'x'}, ["MASTER_PORT='x'"]),
    ({'JAX_COORDINATOR_ADDRESS': 'h:1', 'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '0',
      'JAX_LOCAL_DEVICE_IDS': '0;1'}, ['JAX_LOCAL_DEVICE_IDS']),
    ({k: v for k, v in _srun().items() if k != 'SLURM_PROCID'}, ['SLURM_PROCID is not set']),
    ({k: v for k, v in _srun().items() if 'NODELIST' not in k} | {'SLURM_STEP_NUM_TASKS': '2'},
     ['SLURM_STEP_NODELIST', 'JAX_COORDINATOR_ADDRESS']),
    (_srun(procid=2), ['SLURM_PROCID=2 is not below SLURM_STEP_NUM_TASKS=2']),
    (_srun(nodes='node[01-'), ['unbalanced']),
])
def test_a_bad_or_missing_variable_is_one_value_error_naming_what_to_set(env, words):
  with pytest.raises(ValueError) as err:
    resolve(env)
  msg = str(err.value)
  assert '\n' not in msg
  for w in words:
    assert w in msg, (w, msg)


# --- the one jax.distributed.initialize call ------------------------------------------------------

@pytest.fixture
def calls(monkeypatch):
  """Records multihost's calls to jax.distributed.initialize instead of joining anything."""
  seen = []
  monkeypatch.setattr(multihost.jax.distributed, 'initialize', lambda **kw: seen.append(kw))
  monkeypatch.setattr(multihost.jax.config, 'update', lambda *a: None)
  return seen


def test_initialize_joins_once_with_the_resolved_values_and_not_at_all_without_them(calls):
  assert multihost.initialize(environ={}) is None and calls == []
  per_gpu = _srun(nodes='gpu[1-2]', tasks=16, procid=11, localid=3, per_node='8(x2)',
                  SLURM_NODEID=1)
  env = multihost.initialize(environ=per_gpu)
  assert env.process_id == 11 and calls == [dict(
      coordinator_address=f'gpu1:{PORT}', num_processes=16, process_id=11, local_device_ids=[3],
      cluster_detection_method='deactivate')]  # JAX's own detection cannot change them
  calls.clear()
  multihost.initialize('10.0.0.1:1234', 16, 5, environ=per_gpu)  # the flags win; devices: srun's
  assert calls == [dict(coordinator_address='10.0.0.1:1234', num_processes=16, process_id=5,
                        local_device_ids=[3], cluster_detection_method='deactivate')]
  calls.clear()
  multihost.initialize(environ=_srun())  # one process per node: every GPU of the node
  assert calls[0]['local_device_ids'] is None and calls[0]['num_processes'] == 2
  calls.clear()
  multihost.initialize(auto=True, environ={})  # --multihost alone: JAX's detection (TPU VMs)
  assert calls == [{}]


def _clean_env(**extra):
  """os.environ without any launcher variable, plus `extra`, on one CPU device."""
  drop = ('SLURM_', 'JAX_COORDINATOR', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID', 'JAX_LOCAL_DEVICE',
          'MASTER_PORT')
  env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
  env.update(JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1', **extra)
  return env


def test_a_half_set_environment_stops_python_m_train_with_one_line(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'train', '--config', 'configs/ar_code.py:tiny',
                         '--workdir', str(tmp_path / 'run')], cwd=ROOT, capture_output=True,
                        text=True, timeout=120, env=_clean_env(JAX_NUM_PROCESSES='2'))
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines() == [
      'error: JAX_NUM_PROCESSES set without JAX_COORDINATOR_ADDRESS and JAX_PROCESS_ID: set all '
      'three of JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID (or launch with srun, '
      'tpu/slurm.sbatch)']
  assert not (tmp_path / 'run').exists()  # stopped before the trainer started


# --- two processes on localhost equal one ---------------------------------------------------------

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _rows(workdir):
  return [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]


def test_two_processes_joined_by_the_environment_log_the_losses_of_one(tmp_path):
  """The sbatch recipe's path on localhost: no flags, only JAX_COORDINATOR_ADDRESS /
  JAX_NUM_PROCESSES / JAX_PROCESS_ID; each process has one CPU device, so the default mesh
  (-1, 1, 1) is data=2 across the processes and each feeds 4 of the 8 rows of every global batch.
  One process with one device runs the same command."""
  args = [sys.executable, '-m', 'train', '--config', 'configs/ar_code.py:tiny',
          '--config.train.steps=6', '--config.train.log_every=2', '--config.train.eval_every=6',
          '--config.train.ckpt_every=6']
  two, one, port = str(tmp_path / 'two'), str(tmp_path / 'one'), _free_port()
  procs = [subprocess.Popen(args + ['--workdir', two], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=_clean_env(JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
                                           JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(i)))
           for i in range(2)]
  try:
    outs = [p.communicate(timeout=240) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, out[-2000:] + err[-4000:]
  ours = [[l for l in out.splitlines() if not l.startswith('[Gloo]')] for out, _ in outs]
  assert ours[0][0] == f'joined 2 processes through 127.0.0.1:{port} (env)'
  assert any("mesh {'data': 2, 'fsdp': 1, 'tensor': 1}" in l for l in ours[0])
  assert ours[1] == []  # process 0 alone prints and writes metrics
  shards = set(os.listdir(os.path.join(two, 'checkpoints', '6', 'data')))
  assert {'process_0-of-2.json', 'process_1-of-2.json'} <= shards  # each fed its own rows

  single = subprocess.run(args + ['--workdir', one], cwd=ROOT, capture_output=True, text=True,
                          timeout=240, env=_clean_env())
  assert single.returncode == 0, single.stderr[-4000:]
  assert "mesh {'data': 1, 'fsdp': 1, 'tensor': 1}" in single.stdout
  assert 'joined' not in single.stdout  # no variables: no jax.distributed at all
  a, b = _rows(two), _rows(one)
  assert [r['step'] for r in a] == [r['step'] for r in b] == [2, 4, 6, 6]
  assert 'eval_bpb' in a[-1] and 'loss' in a[-2]
  for ra, rb in zip(a, b):
    keys = {k for k in ra if not k.endswith('_per_s')}
    assert keys == {k for k in rb if not k.endswith('_per_s')}
    for k in keys:  # the same global batches: equal up to the reduction order
      assert ra[k] == pytest.approx(rb[k], rel=2e-5, abs=1e-6), (ra['step'], k, ra[k], rb[k])


# --- the sbatch recipe, under a stand-in srun -----------------------------------------------------

FAKE_SRUN = r'''#!/bin/bash
# srun stand-in: logs its arguments; runs `python -m train.distributed` as one task per node of
# SLURM_JOB_NODELIST with the variables a real step sets (the training command is only logged)
printf '%s\n' "$@" --- >> "$SRUN_LOG"
while [[ $1 == -* ]]; do shift; done
[[ "$*" == *train.distributed* ]] || exit 0
i=0
hosts=$(python -c "from train.distributed import expand_nodelist as e
print(*e('$SLURM_JOB_NODELIST'))")
for host in $hosts; do
  SLURM_STEP_NODELIST=$SLURM_JOB_NODELIST SLURM_STEP_NUM_TASKS=$SLURM_JOB_NUM_NODES \
  SLURM_STEP_TASKS_PER_NODE="1(x$SLURM_JOB_NUM_NODES)" SLURM_PROCID=$i SLURM_LOCALID=0 \
  SLURM_NODEID=$i SLURMD_NODENAME=$host "$@" || exit $?
  i=$((i + 1))
done
'''


def test_the_sbatch_recipe_resolves_every_task_and_starts_one_trainer_per_node(tmp_path):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'srun').write_text(FAKE_SRUN)
  (bin_dir / 'srun').chmod(0o755)
  log = tmp_path / 'srun.log'
  env = _clean_env(PATH=f'{bin_dir}:{os.path.dirname(sys.executable)}:{os.environ["PATH"]}',
                   VENV=str(tmp_path / 'none'), SRUN_LOG=str(log), SLURM_SUBMIT_DIR=ROOT,
                   SLURM_JOB_ID=str(JOB), SLURM_JOB_NODELIST='gpu-a[07-08]',
                   SLURM_JOB_NUM_NODES='2', SLURM_NTASKS_PER_NODE='1', SLURM_CPUS_ON_NODE='96')
  env.pop('JAX_PLATFORMS')
  script = os.path.join(ROOT, 'tpu', 'slurm.sbatch')
  proc = subprocess.run(['bash', script, 'configs/ar_code.py:base', '/shared/runs/ar_base',
                         '--config.data.batch_size=256'], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  tasks = [json.loads(l) for l in proc.stdout.splitlines()]
  assert tasks == [{'host': f'gpu-a0{7 + i}', 'coordinator_address': f'gpu-a07:{PORT}',
                    'num_processes': 2, 'process_id': i, 'local_device_ids': None,
                    'source': 'slurm'} for i in range(2)]
  calls = [c.strip('\n').split('\n') for c in log.read_text().split('---\n') if c.strip()]
  assert calls[0] == ['--ntasks-per-node=1', 'python', '-m', 'train.distributed']
  assert calls[1] == ['--kill-on-bad-exit=1', '--ntasks-per-node=1', '--cpus-per-task=96',
                      '--cpu-bind=none', 'python', '-m', 'train', '--config',
                      'configs/ar_code.py:base', '--workdir', '/shared/runs/ar_base',
                      '--config.mesh.shape=(2,8,1)', '--config.train.progress=False',
                      '--config.data.batch_size=256']
  usage = subprocess.run(['bash', script], env=env, capture_output=True, text=True, timeout=60)
  assert usage.returncode == 2 and 'usage: sbatch' in usage.stderr
