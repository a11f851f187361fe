"""Scale-out: two processes equal one, checkpoints restore into another mesh, a damaged
checkpoint is skipped, and a SIGTERM'd run resumes to the unbroken run's parameters."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings

import jax
import numpy as np
import pytest

from conftest import ROOT, run_python, trained_params
from train.trainer import train

TINY = ['-m', 'train', '--config', 'configs/ar_code.py:tiny', '--config.train.eval_every=100']


def _max_diff(a, b) -> float:
  return max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_reach_the_parameters_of_one_with_the_same_global_batch(tmp_path):
  """jax.distributed over localhost (gloo): each process feeds half of every global batch of 8
  from its own data shard; one process with 2 devices feeds all 8 rows."""
  args = TINY + ['--config.mesh.shape=(2,1,1)', '--config.train.steps=10',
                 '--config.train.ckpt_every=5']
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1')
  port, two = _free_port(), str(tmp_path / 'two')
  procs = [subprocess.Popen([sys.executable, *args, '--workdir', two, '--coordinator_address',
                             f'127.0.0.1:{port}', '--num_processes', '2', '--process_id', str(i)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err
  ours = [[l for l in out.splitlines() if not l.startswith('[Gloo]')] for out, _ in outs]
  assert any("mesh {'data': 2" in l for l in ours[0]) and ours[1] == []  # process 0 alone logs
  shards = os.listdir(os.path.join(two, 'checkpoints', '10', 'data'))
  assert {'process_0-of-2.json', 'process_1-of-2.json'} <= set(shards)  # both data positions
  run_python(args + ['--workdir', str(tmp_path / 'one')], devices=2)
  one = trained_params(tmp_path / 'one')
  assert _max_diff(trained_params(two), one) < 1e-6  # reduction order only


RESTORE = r'''
import json, sys, jax, numpy as np, paradigms
from train.checkpoint import Checkpointer
from train.config import load
from pipelines.text import load_corpus, train_dataset
from train.state import make_mesh, setup
wd, shape = sys.argv[1], tuple(int(v) for v in sys.argv[2].split(','))
c = load(wd + '/config.json')
s = setup(c, paradigms.get(c.paradigm), make_mesh(shape))
it = iter(train_dataset(load_corpus(c.data).train, seq_len=c.data.seq_len, batch_size=8, seed=0))
ckpt = Checkpointer(wd, async_save=False)
state, step = ckpt.restore(s.abstract_state, it, step=10)
ckpt.close()
wq = state.params['layers']['attn']['wq']
print(json.dumps({'step': step, 'spec': [str(a) for a in wq.sharding.spec],
                  'mesh': dict(s.mesh.shape), 'shard': list(wq.addressable_shards[0].data.shape)}))
np.savez(wd + '/restored.npz', *[np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))])
'''


def test_a_checkpoint_saved_with_one_mesh_restores_into_another_and_continues(tmp_path):
  """fsdp=8 saves; data=2 x fsdp=4 restores the identical parameters laid out on its own mesh,
  trains on, and a single device finishes the run: close to the unbroken fsdp=8 run."""
  wd, straight = str(tmp_path / 'moved'), str(tmp_path / 'straight')
  base = TINY + ['--config.train.steps=30', '--config.train.ckpt_every=10']
  run_python(base + ['--workdir', straight, '--config.mesh.shape=(1,8,1)'], devices=8)
  run_python(base + ['--workdir', wd, '--config.mesh.shape=(1,8,1)', '--config.train.stop_at=10'],
             devices=8)
  out = json.loads(run_python(['-c', RESTORE, wd, '2,4,1'], devices=8).stdout.splitlines()[-1])
  assert out['step'] == 10 and out['mesh'] == {'data': 2, 'fsdp': 4, 'tensor': 1}
  assert out['spec'][1] == 'fsdp' and out['shard'][1] == 32 // 4  # d_model split 4 ways now
  saved = jax.tree.leaves(trained_params(wd))  # read back onto one device
  restored = np.load(os.path.join(wd, 'restored.npz'))
  for i, x in enumerate(saved):
    np.testing.assert_array_equal(restored[f'arr_{i}'], x)
  moved = run_python(base + ['--workdir', wd, '--config.mesh.shape=(2,4,1)',
                             '--config.train.stop_at=20'], devices=8)
  assert 'resumed from' in moved.stdout and "'data': 2, 'fsdp': 4" in moved.stdout
  run_python(base + ['--workdir', wd, '--config.mesh.shape=(1,1,1)'], devices=1)
  assert sorted(int(d) for d in os.listdir(os.path.join(wd, 'checkpoints')) if d.isdigit())[-1] == 30
  assert _max_diff(trained_params(wd), trained_params(straight)) < 1e-5


def test_a_damaged_checkpoint_is_skipped_for_the_last_complete_one(tiny_config, tmp_path):
  c = tiny_config
  c.train.steps, c.train.ckpt_every, c.train.eval_every = 12, 4, 100
  train(c, str(tmp_path / 'straight'))
  c.train.stop_at = 8
  train(c, str(tmp_path / 'cut'))
  ckpts = tmp_path / 'cut' / 'checkpoints'
  _damage(ckpts / '8')
  c.train.stop_at = 0
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    train(c, str(tmp_path / 'cut'))
  msg = ' '.join(str(w.message) for w in caught)
  assert 'step 8' in msg and 'resuming from step 4' in msg
  assert (ckpts / 'broken-8').is_dir()  # kept aside, not deleted
  jax.tree.map(np.testing.assert_array_equal, trained_params(tmp_path / 'straight'),
               trained_params(tmp_path / 'cut'))
  # when no checkpoint reads back, nothing is moved: the newest one's error is raised
  for d in ckpts.iterdir():
    if d.name.isdigit():
      _damage(d)
  before = sorted(os.listdir(ckpts))
  c.train.steps = 16
  with pytest.raises(Exception):
    train(c, str(tmp_path / 'cut'))
  assert sorted(os.listdir(ckpts)) == before


def _damage(step_dir) -> None:
  """A copy of a checkpoint that lost its array data."""
  for root, _, files in os.walk(step_dir / 'state'):
    for f in files:
      if 'ocdbt' in root or f.startswith('manifest'):
        os.remove(os.path.join(root, f))


def test_sigterm_saves_and_the_rerun_ends_at_the_unbroken_parameters(tmp_path):
  wd, steps = str(tmp_path / 'kill'), 400
  args = TINY + [f'--config.train.steps={steps}', '--config.train.log_every=1',
                 '--config.train.ckpt_every=1000']
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.Popen([sys.executable, *args, '--workdir', wd], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics, deadline = os.path.join(wd, 'metrics.jsonl'), time.time() + 180
  while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0) and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err
  assert 'stopped by signal' in out
  saved = sorted(int(d) for d in os.listdir(os.path.join(wd, 'checkpoints')) if d.isdigit())
  assert saved and 0 < saved[-1] < steps  # stopped mid-run, at a step boundary
  rows = [json.loads(l) for l in open(metrics)]
  assert rows[-1]['step'] == saved[-1] and not any(  # saved at once: no evaluation on the way out
      'eval_' in k for r in rows if r['step'] == saved[-1] and saved[-1] % 100 for k in r)
  again = run_python(args + ['--workdir', wd])
  assert f'resumed from {os.path.join(wd, "checkpoints")}/{saved[-1]}' in again.stdout
  run_python(args + ['--workdir', str(tmp_path / 'straight')])
  jax.tree.map(np.testing.assert_array_equal, trained_params(wd),
               trained_params(tmp_path / 'straight'))
