"""LoRA and QLoRA: low-rank branches merged exactly, a frozen base, adapter-only checkpoints,
every paradigm through the one trainer."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from paradigms.nn import lora
from train.config import from_file


def _cfg(name, **changes):
  c = from_file(os.path.join(ROOT, 'configs', name))
  for key, value in changes.items():
    section, _, field = key.partition('.')
    c[section][field] = value
  return c


def test_merged_kernels_equal_the_low_rank_branches():
  """x W' = x W + (alpha / r) (x A) B for each kernel kind of the shared blocks (wq: one input
  axis, wo: input axes (H, Dh), w_out: [F, D]), with B non-zero."""
  from paradigms import autoregressive as ar
  from train.config import model_config
  c = _cfg('ar_code.py:tiny')
  model = ar.build(model_config(c))
  params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))['params']
  params = nn.meta.unbox(params)
  adapters = lora.init_adapters(params, 3, jax.random.key(1))
  assert sorted(adapters) == ['layers.attn.wk', 'layers.attn.wo', 'layers.attn.wq',
                              'layers.attn.wv', 'layers.mlp.w_gate', 'layers.mlp.w_out',
                              'layers.mlp.w_up']
  same = lora.merge(params, adapters, alpha=6.0, rank=3)
  jax.tree.map(np.testing.assert_array_equal, params, same)  # B = 0: training starts at the base
  adapters = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(2), x.shape),
                          adapters)
  merged = lora.merge(params, adapters, alpha=6.0, rank=3)
  s = 6.0 / 3
  for key, spec in (('wq', 'ld,dhk->lhk'), ('wo', 'lhk,hkd->ld'), ('w_out', 'lf,fd->ld')):
    sub = 'attn' if key.startswith('w') and key[1] in 'qo' else 'mlp'
    W, Wm = params['layers'][sub][key][0], merged['layers'][sub][key][0]  # layer 0
    a, b = (adapters[f'layers.{sub}.{key}'][n][0] for n in 'ab')
    x = jax.random.normal(jax.random.key(3), (5,) + W.shape[:W.ndim - (1 if key != 'wq' else 2)])
    xa = x.reshape(5, -1) @ a  # [5, r]
    branch = (xa @ b).reshape(jnp.einsum(spec, x, W).shape)
    np.testing.assert_allclose(jnp.einsum(spec, x, Wm), jnp.einsum(spec, x, W) + s * branch,
                               atol=1e-5)


@pytest.mark.parametrize('kind, bits', [('int8', 8), ('nf4', 4)])
def test_quantised_bases_are_close_and_small(kind, bits):
  w = jax.random.normal(jax.random.key(0), (2, 64, 4, 16)) * 0.05  # a stacked wq
  stored = lora.quantize(w, kind, 'layers/attn/wq')
  back = lora.dequantize(stored, w.shape)
  nbytes = sum(x.nbytes for x in jax.tree.leaves(stored))
  bf16 = w.size * 2
  assert nbytes < bf16 * (bits / 16) * 1.15  # the scales cost a few percent
  err = np.abs(np.asarray(back - w))
  if kind == 'int8':  # absmax per output channel: at most half a step
    scale = np.abs(np.asarray(w)).reshape(2, 64, 64).max(axis=1, keepdims=True) / 127
    assert (err.reshape(2, 64, 64) <= scale / 2 + 1e-7).all()
  else:  # NF4: within half the widest gap between levels, times the block's absmax
    absmax = np.abs(np.asarray(w)).reshape(-1, 64).max(axis=1, keepdims=True)
    gap = np.diff(lora.NF4).max() / 2
    assert (err.reshape(-1, 64) <= gap * absmax + 1e-7).all()


@pytest.mark.parametrize('name', ['ar_code.py:tiny', 'mdlm_code.py:tiny', 'dit_glyphs.py:tiny',
                                  'var_glyphs.py:tiny'])
def test_the_one_trainer_trains_adapters_of_every_paradigm_with_the_base_frozen(name):
  from paradigms import get
  from train.state import make_mesh, setup
  c = _cfg(name, **{'lora.rank': 2})
  s = setup(c, get(c.paradigm), make_mesh((1, 1, 1)))
  state = s.init(jax.random.key(0))
  # a trained base: at init DiT's and VAR's adaLN-Zero gates and output layer are 0, which shuts
  # every block, so no adapter inside one could learn; training opens them
  leaves, tree = jax.tree.flatten(state.base)
  keys = jax.random.split(jax.random.key(5), len(leaves))
  state = state.replace(base=jax.tree.unflatten(tree, [
      x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]))
  base = jax.device_get(state.base)
  adapters = jax.device_get(state.params)
  n_kernels = len(lora.targeted(base))
  assert n_kernels >= 7 and len(adapters) == n_kernels
  assert all(set(v) == {'a', 'b'} for v in adapters.values())
  # no optimiser state for the base: every moment has an adapter's shape
  adapter_shapes = {x.shape for x in jax.tree.leaves(adapters)}
  assert {x.shape for x in jax.tree.leaves(state.opt_state) if x.ndim} <= adapter_shapes
  spec = get(c.paradigm).example_batch(c.data.batch_size, c.data, s.model.cfg)
  rng = np.random.RandomState(0)
  batch = jax.tree.map(lambda a: jnp.asarray(
      rng.randint(0, 8, a.shape) if a.dtype == jnp.int32 else rng.rand(*a.shape), a.dtype), spec)
  for _ in range(3):  # lr is 0 at step 0; adaLN-Zero gates (DiT, VAR) open at step 1
    state, metrics = s.train_step(state, batch, jax.random.key(1))
  assert np.isfinite(float(metrics['loss']))
  jax.tree.map(np.testing.assert_array_equal, base, jax.device_get(state.base))
  moved = [k for k, v in jax.device_get(state.params).items() if np.abs(v['b']).max() > 0]
  assert len(moved) == n_kernels


def test_a_lora_run_checkpoints_adapters_only_and_exports_its_merged_model(tmp_path):
  from train.checkpoint import load_run
  from train.hf import load_hf
  from train.trainer import train
  full = _cfg('ar_code.py:tiny', **{'train.steps': 4, 'train.eval_every': 4,
                                    'train.ckpt_every': 4, 'data.cache_dir': str(tmp_path)})
  train(full, str(tmp_path / 'full'))
  c = _cfg('ar_code.py:tiny', **{'train.steps': 6, 'train.eval_every': 6, 'train.ckpt_every': 3,
                                 'train.init_from': str(tmp_path / 'full'), 'lora.rank': 4,
                                 'lora.base_dtype': 'nf4', 'lora.dropout': 0.1,
                                 'data.cache_dir': str(tmp_path)})
  train(c, str(tmp_path / 'lora'))
  import ast
  import json
  with open(tmp_path / 'lora' / 'checkpoints' / '6' / 'state' / '_METADATA') as f:
    saved = [ast.literal_eval(k) for k in json.load(f)['tree_metadata']]
  assert not [k for k in saved if k[0] == 'base' and len(k) > 1]  # no base array is saved
  assert {k[1] for k in saved if k[0] == 'params'} == set(lora.init_adapters(
      load_run(str(tmp_path / 'full'))[2], 4, jax.random.key(0)))
  _, model, merged = load_run(str(tmp_path / 'lora'))
  _, _, base = load_run(str(tmp_path / 'full'))
  np.testing.assert_array_equal(merged['embed']['embedding'], base['embed']['embedding'])
  assert np.abs(merged['layers']['attn']['wq'] - base['layers']['attn']['wq']).max() > 0
  from train.hf import export_run
  out = export_run(str(tmp_path / 'lora'), str(tmp_path / 'out'))
  tokens = jnp.asarray(np.arange(40).reshape(2, 20) % 250)
  again_model, again, _ = load_hf(out)
  np.testing.assert_allclose(model.apply({'params': merged}, tokens)[0],
                             again_model.apply({'params': again}, tokens)[0], atol=1e-5)
  # resuming rebuilds the frozen base (checkpoint 3 -> 6 again): same adapters as unbroken
  import shutil
  shutil.copytree(tmp_path / 'lora', tmp_path / 'resumed')
  shutil.rmtree(tmp_path / 'resumed' / 'checkpoints' / '6')
  train(c, str(tmp_path / 'resumed'))
  a = load_run(str(tmp_path / 'lora'))[2]
  b = load_run(str(tmp_path / 'resumed'))[2]
  jax.tree.map(np.testing.assert_array_equal, a, b)
