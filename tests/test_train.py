"""The trainer: resume == unbroken, grad accumulation, NaN stop, config errors, CLI end to end."""
import json
import os

import jax
import numpy as np
import pytest

from conftest import run_python, trained_params
from train.trainer import NonFiniteLoss, train


def test_resumed_run_is_bit_identical_to_unbroken(tiny_config, tmp_path):
  c = tiny_config
  c.train.steps, c.train.ckpt_every, c.train.eval_every = 12, 100, 100
  train(c, str(tmp_path / 'straight'))
  c.train.stop_at = 6  # "kill" half-way (a checkpoint is written at the stop)
  train(c, str(tmp_path / 'resumed'))
  assert not os.path.exists(tmp_path / 'resumed' / 'checkpoints' / '12')
  c.train.stop_at = 0
  train(c, str(tmp_path / 'resumed'))  # resumes at step 6: params, optimizer and data position
  a, b = trained_params(tmp_path / 'straight'), trained_params(tmp_path / 'resumed')
  jax.tree.map(np.testing.assert_array_equal, a, b)
  rows = [json.loads(l) for l in open(tmp_path / 'resumed' / 'metrics.jsonl')]
  assert all('step' in r for r in rows) and any('loss' in r for r in rows)


def test_grad_accumulation_matches_one_big_batch(tiny_config, tmp_path):
  c = tiny_config
  c.train.steps, c.train.eval_every, c.train.ckpt_every = 3, 100, 100
  train(c, str(tmp_path / 'a1'))
  c.train.grad_accum = 4
  train(c, str(tmp_path / 'a4'))
  a, b = trained_params(tmp_path / 'a1'), trained_params(tmp_path / 'a4')
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5), a, b)


def test_training_reduces_the_held_out_loss(tiny_config, tmp_path):
  c = tiny_config
  c.train.steps, c.train.eval_every = 30, 30
  c.train.stop_at = 1
  first = train(c, str(tmp_path / 'r'))
  c.train.stop_at = 0
  last = train(c, str(tmp_path / 'r'))
  assert last['eval_bpb'] < first['eval_bpb'] - 1.0, (first, last)


def test_nonfinite_loss_stops_naming_the_step(tiny_config, tmp_path):
  c = tiny_config
  c.train.lr, c.train.warmup_steps, c.train.clip_norm = 1e30, 1, 1e30
  c.train.steps, c.train.log_every, c.train.ckpt_every = 20, 1, 1
  with pytest.raises(NonFiniteLoss, match=r'at step \d+\. Last good checkpoint: step \d+'):
    train(c, str(tmp_path / 'nan'))


def test_bad_config_values_fail_with_the_key(tiny_config, tmp_path):
  c = tiny_config
  c.train.grad_accum = 3
  with pytest.raises(ValueError, match='train.grad_accum'):
    train(c, str(tmp_path / 'x'))
  c.train.grad_accum = 1
  c.mesh.shape = (3, 1, 1)
  with pytest.raises(ValueError, match='mesh.shape'):
    train(c, str(tmp_path / 'y'))
  with pytest.raises(AttributeError, match='stpes'):
    c.train.stpes = 3


def test_cli_trains_and_samples_end_to_end(tmp_path):
  wd = str(tmp_path / 'cli')
  run_python(['-m', 'train', '--config', 'configs/ar_code.py:tiny', '--workdir', wd,
              '--config.train.steps=20'])
  rows = [json.loads(l) for l in open(os.path.join(wd, 'metrics.jsonl'))]
  assert rows[-1]['step'] == 20 and 'eval_bpb' in rows[-1]
  assert json.load(open(os.path.join(wd, 'config.json')))['train']['steps'] == 20
  out = run_python(['-m', 'sample', '--workdir', wd, '--prompt', 'def ', '--num', '3',
                    '--max-new-tokens', '16']).stdout
  samples = out.split('===== sample ')[1:]
  assert len(samples) == 3 and all(s.split('\n', 1)[1].startswith('def ') for s in samples)


def test_cli_unknown_key_names_it(tmp_path):
  proc = run_python(['-m', 'train', '--config', 'configs/ar_code.py:tiny', '--workdir',
                     str(tmp_path / 'u'), '--config.train.stpes=3'], check=False)
  assert proc.returncode != 0 and 'stpes' in proc.stderr


@pytest.mark.parametrize('config,sample_args', [
    ('configs/mdlm_code.py:tiny', ['--strategy', 'topk', '--steps', '8']),
    ('configs/bd3lm_code.py:tiny,4', ['--steps', '2']),
])
def test_cli_diffusion_trains_and_samples(tmp_path, config, sample_args):
  wd = str(tmp_path / 'd')
  run_python(['-m', 'train', '--config', config, '--workdir', wd, '--config.train.steps=10'])
  rows = [json.loads(l) for l in open(os.path.join(wd, 'metrics.jsonl'))]
  assert 'eval_bpb_se' in rows[-1] and rows[-1]['eval_bpb'] > 0
  proc = run_python(['-m', 'sample', '--workdir', wd, '--prompt', 'def ', '--num', '2',
                     '--max-new-tokens', '16', *sample_args])
  samples = proc.stdout.split('===== sample ')[1:]
  assert len(samples) == 2 and all('def ' in s for s in samples)
  assert 'network evaluations' in proc.stderr


def test_graft_copies_a_trained_subtree_exactly_and_names_mismatches():
  """train.init_from / init_into: the subtree is replaced leaf for leaf (values, the new leaf's
  dtype), everything else is untouched, and a name or shape mismatch is an error naming it."""
  import jax.numpy as jnp
  from train.checkpoint import graft
  params = {'var': {'w': jnp.zeros((2, 3)), 'b': jnp.zeros((3,))}, 'head': {'w': jnp.ones((4,))}}
  source = {'w': np.arange(6.0).reshape(2, 3), 'b': np.full((3,), 7.0)}
  out = graft(params, source, 'var')
  np.testing.assert_array_equal(out['var']['w'], source['w'])
  np.testing.assert_array_equal(out['var']['b'], source['b'])
  assert out['var']['w'].dtype == jnp.float32
  np.testing.assert_array_equal(out['head']['w'], params['head']['w'])
  np.testing.assert_array_equal(params['var']['w'], 0)  # the input tree is not changed
  whole = graft(params, jax.tree.map(np.asarray, out), '')
  jax.tree.map(np.testing.assert_array_equal, whole, out)
  with pytest.raises(ValueError, match=r"no module 'varx'.*\['head', 'var'\]"):
    graft(params, source, 'varx')
  with pytest.raises(ValueError, match=r"var\['b'\] has shape \(4,\) in the trained run and "
                                       r'\(3,\) in the new model'):
    graft(params, {'w': source['w'], 'b': np.zeros(4)}, 'var')
  with pytest.raises(ValueError, match=r"var\['b'\] is in the new model only"):
    graft(params, {'w': source['w']}, 'var')
  part = graft(params, {'w': source['w']}, 'var', partial=True)  # 'b' keeps its value
  np.testing.assert_array_equal(part['var']['w'], source['w'])
  np.testing.assert_array_equal(part['var']['b'], params['var']['b'])
  with pytest.raises(ValueError, match=r"var\['x'\] is in the trained model only"):
    graft(params, {**source, 'x': np.zeros(1)}, 'var', partial=True)  # still an error
