"""Serving options of the AR sampler (sample/autoregressive.py): left-padded rows, a kept prefix
cache, chunked prefill. Each is checked against recomputation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paradigms.autoregressive import LogitsFn
from paradigms.nn.transformer import Transformer, TransformerConfig
from sample import autoregressive as ar


@pytest.fixture(scope='module')
def lm():
  m = Transformer(TransformerConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4,
                                    n_kv_heads=2, max_len=96))
  params = m.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))['params']
  return m, params


def _full_logits(m, params, tokens):
  return m.apply({'params': params}, tokens)[0]  # [B, L, V]


@pytest.mark.parametrize('chunk', [1, 5, 8, 13])
def test_chunked_prefill_equals_one_chunk(lm, chunk):
  m, params = lm
  x = jax.random.randint(jax.random.key(1), (2, 13), 0, 40)
  fn = LogitsFn(m)
  last, cache = ar.prefill_tokens(fn, params, x, m.init_cache(2, 20), chunk=chunk)
  ref, ref_cache = ar.prefill_tokens(fn, params, x, m.init_cache(2, 20))
  np.testing.assert_allclose(last, _full_logits(m, params, x)[:, -1], atol=1e-5)
  np.testing.assert_allclose(last, ref, atol=1e-5)
  np.testing.assert_allclose(cache.k, ref_cache.k, atol=1e-5)
  assert int(cache.index[0]) == 13
  out = ar.generate(fn, params, x, jax.random.key(2), m.init_cache(2, 20), max_new_tokens=7,
                    greedy=True, prefill_chunk=chunk)
  base = ar.generate(fn, params, x, jax.random.key(2), m.init_cache(2, 20), max_new_tokens=7,
                     greedy=True)
  np.testing.assert_array_equal(out.tokens, base.tokens)
  assert int(out.nfe) == -(-13 // chunk) + 6


def test_prefix_cache_equals_recomputation(lm):
  """One prefix, computed once at batch 1 and kept, serves a batch of different suffixes and a
  second call: the logits equal a full forward over prefix + suffix."""
  m, params = lm
  fn = LogitsFn(m)
  prefix = jax.random.randint(jax.random.key(3), (1, 9), 0, 40)
  kept = ar.prefill(fn, params, prefix, m.init_cache(1, 24))
  for seed, B in ((4, 3), (5, 2)):  # two calls reuse the same kept cache
    suffix = jax.random.randint(jax.random.key(seed), (B, 4), 0, 40)
    last, _ = ar.prefill_tokens(fn, params, suffix, ar.broadcast_cache(kept, B))
    whole = jnp.concatenate([jnp.repeat(prefix, B, 0), suffix], axis=1)
    np.testing.assert_allclose(last, _full_logits(m, params, whole)[:, -1], atol=1e-5)
    out = ar.generate(fn, params, suffix, jax.random.key(6), ar.broadcast_cache(kept, B),
                      max_new_tokens=6, greedy=True)
    ref = ar.generate(fn, params, whole, jax.random.key(6), m.init_cache(B, 24), max_new_tokens=6,
                      greedy=True)
    np.testing.assert_array_equal(out.tokens, ref.tokens[:, 9:])
  assert int(kept.index[0]) == 9  # the kept cache is not consumed


@pytest.mark.parametrize('use_cache', [True, False])
def test_left_padding_decodes_each_row_as_alone(lm, use_cache):
  m, params = lm
  fn = LogitsFn(m)
  lens = [3, 8, 5]
  P, N = max(lens), 6
  rows = [np.asarray(jax.random.randint(jax.random.key(10 + i), (n,), 0, 40)) for i, n in
          enumerate(lens)]
  batch = np.stack([np.concatenate([np.full(P - n, 7), r]) for n, r in zip(lens, rows)])
  pad = jnp.asarray([P - n for n in lens], jnp.int32)
  padded = ar.generate(fn, params, jnp.asarray(batch), jax.random.key(0),
                       m.init_cache(3, P + N) if use_cache else None, max_new_tokens=N,
                       greedy=True, pad=pad, use_cache=use_cache)
  assert padded.tokens.shape == (3, P + N)
  for b, r in enumerate(rows):
    alone = ar.generate(fn, params, jnp.asarray(r[None]), jax.random.key(0),
                        m.init_cache(1, len(r) + N), max_new_tokens=N, greedy=True)
    np.testing.assert_array_equal(padded.tokens[b, P:], alone.tokens[0, len(r):])
  # the padded row's logits equal its unpadded forward's
  last, _ = ar.prefill_tokens(fn, params, jnp.asarray(batch), m.init_cache(3, P), pad=pad)
  np.testing.assert_allclose(last[0], _full_logits(m, params, jnp.asarray(rows[0][None]))[0, -1],
                             atol=1e-5)


def test_bad_prefill_chunk(lm):
  m, params = lm
  with pytest.raises(ValueError, match='prefill_chunk'):
    ar.generate(LogitsFn(m), params, jnp.zeros((1, 4), jnp.int32), jax.random.key(0),
                m.init_cache(1, 8), max_new_tokens=2, prefill_chunk=-1)
