"""Int8 inference (paradigms/nn/quant.py): weight-only kernels and the int8 KV cache.

Tolerances. The quantiser rounds each element to the nearest multiple of its group's scale
s = max|w| / 127, so |w - q s| <= s / 2: checked exactly per element and, through the triangle
inequality, per dense layer, |(x W)_j - (x q)_j s_j| <= sum_i |x_i| s_j / 2. A whole network
composes nonlinear layers, so no closed bound is stated there: it is checked to equal the float
network on the dequantised weights (the hooks compute x q s exactly), and its logits to stay
within a stated fraction of the float logits' spread (measured ~4x below it on these models).
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paradigms import masked_diffusion
from paradigms.autoregressive import LogitsFn
from paradigms.nn import lora, quant
from paradigms.nn.attention import KVCache
from paradigms.nn.transformer import Transformer, TransformerConfig, unstack_layers
from sample.autoregressive import generate

CFG = TransformerConfig(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                        max_len=64, vocab_multiple=8)
LOGIT_TOL = 0.25  # max |logits_int8 - logits_f32| / std(logits_f32)


def _init(cfg=CFG, L=24):
  model = Transformer(cfg)
  x = jax.random.randint(jax.random.key(1), (2, L), 0, cfg.vocab_size)
  return model, nn.meta.unbox(model.init(jax.random.key(0), x))['params'], x


def _dequantized(params):
  return jax.tree.map(quant.dequantize, params, is_leaf=quant.is_quantized)


@pytest.mark.parametrize('shape,axes', [((48, 20), (0,)), ((3, 16, 4, 8), (1,)),
                                        ((4, 8, 16), (0, 1)), ((7, 32), (-1,))])
def test_absmax_round_trip_is_within_half_a_scale(shape, axes):
  w = jax.random.normal(jax.random.key(0), shape) * jnp.linspace(0.01, 3.0, shape[-1])
  w = w.at[(0,) * len(shape)].set(0.0)
  q, s = quant.absmax_int8(w, axes)
  assert q.dtype == jnp.int8 and s.dtype == jnp.float32 and q.shape == w.shape
  assert all(s.shape[a] == 1 for a in axes) and np.abs(np.asarray(q)).max() == 127
  err = np.abs(np.asarray(w) - np.asarray(q, np.float32) * np.asarray(s))
  assert (err <= np.asarray(s) / 2 * (1 + 1e-6) + 1e-9).all()
  zero = quant.absmax_int8(jnp.zeros((4, 3)), (0,))  # an all-zero channel: codes 0, no NaN
  assert not np.asarray(zero[0]).any() and np.isfinite(np.asarray(zero[1])).all()


def test_lora_qlora_base_shares_the_quantiser():
  w = jax.random.normal(jax.random.key(2), (2, 16, 4, 8))  # a stacked wq
  stored = lora.quantize(w, 'int8', 'layers/attn/wq')
  q, s = quant.absmax_int8(w.reshape(2, 16, 32), (-2,))
  np.testing.assert_array_equal(np.asarray(stored['q']), np.asarray(q))
  ours = quant.dequantize(quant.Int8Kernel(q, s)).reshape(w.shape)
  np.testing.assert_array_equal(np.asarray(lora.dequantize(stored, w.shape)), np.asarray(ours))


@pytest.mark.parametrize('spec,w_shape,axes', [
    ('bld,dhk->blhk', (32, 4, 8), (0,)),  # wq/wk/wv
    ('blhk,hkd->bld', (4, 8, 32), (0, 1)),  # wo
    ('bld,df->blf', (32, 96), (0,)),  # w_gate / w_up
    ('bld,vd->blv', (61, 32), (1,)),  # tied head: the table's rows are the output channels
])
def test_quantized_dense_is_exact_on_the_codes_and_within_the_rounding_bound(spec, w_shape, axes):
  w = jax.random.normal(jax.random.key(3), w_shape) * 0.1
  x_shape = (2, 5) + tuple(w_shape[a] for a in axes)
  x = jax.random.normal(jax.random.key(4), x_shape)
  k = quant.Int8Kernel(*quant.absmax_int8(w, axes))
  y_q = quant.einsum(spec, x, k, jnp.float32)
  y_hat = jnp.einsum(spec, x, quant.dequantize(k))  # x (q s): the factoring is exact
  np.testing.assert_allclose(np.asarray(y_q), np.asarray(y_hat), atol=1e-5, rtol=1e-5)
  y_f = jnp.einsum(spec, x, w)
  contract = tuple(range(2, x.ndim))
  s_out = k.scale.reshape([d for a, d in enumerate(k.scale.shape) if a not in axes])
  bound = jnp.sum(jnp.abs(x), axis=contract).reshape(x.shape[:2] + (1,) * s_out.ndim) * s_out / 2
  assert (np.abs(np.asarray(y_q - y_f)) <= np.asarray(bound) * (1 + 1e-4) + 1e-5).all()
  # the float path is jnp.einsum itself, bit for bit
  np.testing.assert_array_equal(np.asarray(quant.einsum(spec, x, w, jnp.float32)),
                                np.asarray(jnp.einsum(spec, x, w.astype(jnp.float32))))


@pytest.mark.parametrize('tie', [True, False])
def test_quantize_params_stores_every_kernel_as_int8(tie):
  model, params, _ = _init(dataclasses.replace(CFG, tie_embeddings=tie))
  qp = quant.quantize_params(params)
  flat = {quant._path(kp): v for kp, v in jax.tree_util.tree_flatten_with_path(
      qp, is_leaf=quant.is_quantized)[0]}
  kernels = [p for p in flat if quant.contracted_axes(p) is not None]
  assert len(kernels) == 8 + (0 if tie else 1)  # 7 projections, the table (+ the head)
  for p in kernels:
    assert quant.is_quantized(flat[p]) and flat[p].q.dtype == jnp.int8
  assert not quant.is_quantized(flat['final_norm/scale'])
  assert quant.nbytes(qp) < 0.3 * quant.nbytes(params)
  assert quant.quantize_params(params, '') is params
  with pytest.raises(ValueError, match='quantize'):
    quant.quantize_params(params, 'int4')
  # unstacked (the samplers' form) quantises to the same codes as stacked, then unstacked
  a = jax.tree.leaves(unstack_layers(qp))
  b = jax.tree.leaves(quant.quantize_params(unstack_layers(params)))
  assert all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(a, b))


@pytest.mark.parametrize('tie,dtype', [(True, 'float32'), (False, 'float32'), (True, 'bfloat16')])
def test_int8_logits_are_within_tolerance_of_float32(tie, dtype):
  cfg = dataclasses.replace(CFG, tie_embeddings=tie, dtype=dtype)
  model, params, x = _init(cfg)
  qp = quant.quantize_params(params)
  f, _ = model.apply({'params': params}, x)
  q, _ = model.apply({'params': qp}, x)
  d, _ = model.apply({'params': _dequantized(qp)}, x)
  V = cfg.vocab_size
  f, q, d = (np.asarray(a[..., :V], np.float32) for a in (f, q, d))
  if dtype == 'float32':  # the network on x q s == the network on W_hat (in bfloat16, W_hat
    assert np.abs(q - d).max() <= 1e-5  # itself rounds by 2^-9 relative, so only float32)
  assert np.abs(q - f).max() <= LOGIT_TOL * f.std()
  assert np.abs(q - f).max() > 0  # it did quantise


def test_int8_kv_cache_round_trips_within_its_scale():
  B, K, S, Dh, n_layers = 2, 3, 10, 8, 4
  k = jax.random.normal(jax.random.key(5), (B, 4, K, Dh)) * jnp.arange(1, Dh + 1)
  v = jax.random.normal(jax.random.key(6), (B, 4, K, Dh)) * 5
  ids = jnp.broadcast_to(jnp.arange(4), (B, 4))
  one = KVCache.zeros(B, S, K, Dh, jnp.int8)
  assert one.quantized and not KVCache.zeros(B, S, K, Dh, jnp.float32).quantized
  stacked = jax.tree.map(lambda a: jnp.broadcast_to(a, (n_layers,) + a.shape), one)
  stacked = stacked.update(k[:, :1], v[:, :1], ids[:, :1], jnp.int32(2))  # 1 slot, then 3
  stacked = stacked.update(k[:, 1:], v[:, 1:], ids[:, 1:], jnp.int32(2))
  for cache in (one.update(k, v, ids), stacked.layer(2)):
    for got, want, scale in ((cache.keys(jnp.float32), k, cache.k_scale),
                             (cache.values(jnp.float32), v, cache.v_scale)):
      want = np.swapaxes(np.asarray(want), 1, 2)  # [B, K, 4, Dh]
      s = np.asarray(scale)[:, :, :4, None]
      assert (np.abs(np.asarray(got)[:, :, :4] - want) <= s / 2 * (1 + 1e-6)).all()
      assert not np.asarray(got)[:, :, 4:].any()  # unwritten slots stay zero
    assert int(cache.index) == 4
  for other in (0, 1, 3):  # the stacked write touched only its layer
    assert not np.asarray(stacked.layer(other).k).any()
  assert int(stacked.truncate(2).index[0]) == 2
  head = stacked.first(3)  # a static slice of every slot axis, the scales included
  assert head.k.shape == (n_layers, B, K, 3, Dh) and head.k_scale.shape == (n_layers, B, K, 3)
  assert head.ids.shape == (n_layers, B, 3) and int(head.index[2]) == 4
  np.testing.assert_array_equal(np.asarray(head.layer(2).keys(jnp.float32)),
                                np.asarray(stacked.layer(2).keys(jnp.float32))[:, :, :3])


def test_int8_cache_decode_tracks_the_float_cache_and_greedy_agrees():
  model, params, x = _init(L=24)
  full, _ = model.apply({'params': params}, x)

  apply = jax.jit(lambda tokens, cache: model.apply({'params': params}, tokens, cache=cache))

  def teacher_forced(kv_int8):
    cache = model.init_cache(2, 32, kv_int8=kv_int8)
    logits, cache = apply(x[:, :7], cache)  # prefill
    steps = [logits]
    for t in range(7, 24):
      logits, cache = apply(x[:, t:t + 1], cache)
      steps.append(logits)
    return np.asarray(jnp.concatenate(steps, axis=1))[..., :CFG.vocab_size]

  f, q = teacher_forced(False), teacher_forced(True)
  np.testing.assert_allclose(f, np.asarray(full)[..., :CFG.vocab_size], atol=2e-5)
  assert 0 < np.abs(q - f).max() <= LOGIT_TOL * f.std()
  # greedy decoding: a step whose float top-2 margin exceeds twice the largest logit change
  # there is certified (the argmax cannot move). Most steps of this model are; all tokens agree.
  fn, prompt, N = LogitsFn(model), x[:, :5], 24
  outs = {kv: generate(fn, params, prompt, jax.random.key(0),
                       model.init_cache(2, 5 + N, kv_int8=kv), max_new_tokens=N,
                       greedy=True).tokens for kv in (False, True)}
  path = outs[False]
  f, q = (np.asarray(logits)[:, 4:-1, :CFG.vocab_size] for logits in (
      model.apply({'params': params}, path, cache=model.init_cache(2, 5 + N, kv_int8=kv))[0]
      for kv in (False, True)))
  top2 = np.sort(f, axis=-1)[..., -2:]
  certified = top2[..., 1] - top2[..., 0] > 2 * np.abs(q - f).max(axis=-1)
  assert certified.mean() >= 0.8
  np.testing.assert_array_equal(np.argmax(q, -1)[certified], np.asarray(path)[:, 5:][certified])
  np.testing.assert_array_equal(np.asarray(outs[True]), np.asarray(path))


def test_int8_weights_and_cache_run_the_ar_sampler():
  model, params, x = _init()
  qp = quant.quantize_params(params)
  out = generate(LogitsFn(model), qp, x[:, :5], jax.random.key(0),
                 model.init_cache(2, 20, kv_int8=True), max_new_tokens=15, temperature=1.0)
  assert out.tokens.shape == (2, 20) and int(out.nfe) == 15
  ref = generate(LogitsFn(model), params, x[:, :5], jax.random.key(0), model.init_cache(2, 20),
                 max_new_tokens=15, greedy=True).tokens
  got = generate(LogitsFn(model), qp, x[:, :5], jax.random.key(0), model.init_cache(2, 20),
                 max_new_tokens=15, greedy=True).tokens
  assert (np.asarray(got) == np.asarray(ref)).mean() > 0.9


def test_quantized_params_run_the_masked_diffusion_logits_fn():
  cfg = dataclasses.replace(CFG, mask='bidirectional')
  model = masked_diffusion.build(cfg)
  x = jax.random.randint(jax.random.key(1), (2, 16), 0, cfg.vocab_size)
  params = nn.meta.unbox(model.init(jax.random.key(0), x))['params']
  fn = masked_diffusion.LogitsFn(model, mask_id=cfg.vocab_size - 1)
  f, _ = fn(params, x, None)
  q, _ = fn(quant.quantize_params(params), x, None)
  f, q = np.asarray(f)[..., :cfg.vocab_size - 1], np.asarray(q)[..., :cfg.vocab_size - 1]
  assert np.abs(q - f).max() <= LOGIT_TOL * f.std()
  # block-causal decoding against an int8 cache of finished blocks (BD3-LM's path)
  ids = jnp.broadcast_to(jnp.arange(16) // 4, (2, 16))
  cache = model.init_cache(2, 16, kv_int8=True)
  _, cache = fn(quant.quantize_params(params), x[:, :8], cache, ids=ids[:, :8])
  logits, _ = fn(quant.quantize_params(params), x[:, 8:12], cache, ids=ids[:, 8:12])
  assert np.isfinite(np.asarray(logits)).all() and int(cache.index[0]) == 8
