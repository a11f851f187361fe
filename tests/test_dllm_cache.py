"""Fast-dLLM's approximate KV cache (sample/dllm_cache.py): refresh=1 and one-layer networks give
exactly the uncached semi-AR tokens; a refresh's logits are the full forward's; a cached call's
logits equal an independent full forward over [stale sequence, fed tokens] under a hand-built
mask; NFE / refresh / fed counts; clear errors."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paradigms import masked_diffusion as md
from paradigms.nn import TransformerConfig
from paradigms.nn.transformer import Transformer
from sample.dllm_cache import cached_semi_autoregressive, visible_slots
from sample.masked_diffusion import semi_autoregressive

V, MASK = 32, 31
B, P, N, BK = 3, 8, 16, 4
T = P + N


def _model(n_layers=2):
  model = Transformer(TransformerConfig(vocab_size=V, d_model=32, n_layers=n_layers, n_heads=2,
                                        max_len=64, mask='bidirectional'))
  params = model.init(jax.random.key(0), jnp.zeros((B, T), jnp.int32))['params']
  # sharper than the 0.02-std init, so proposals and confidences are far from ties
  params = jax.tree.map(lambda a: a * 8 if a.ndim == 2 else a, params)
  return model, params, md.LogitsFn(model, MASK)


def _prompt():
  return jax.random.randint(jax.random.key(1), (B, P), 0, MASK)


def _slots(mode):
  return T + (BK if mode == 'dual' else N)


def _pair(n_layers, mode, refresh, strategy, temperature):
  model, params, fn = _model(n_layers)
  prompt = _prompt()
  rule = dict(strategy=strategy, steps_per_block=2 if strategy == 'topk' else None, tau=0.5,
              temperature=temperature)
  x = jnp.concatenate([prompt, jnp.full((B, N), MASK)], axis=1)
  ref = semi_autoregressive(fn, params, x, jax.random.key(3), mask_id=MASK, block_len=BK, **rule)
  out = cached_semi_autoregressive(fn, params, prompt, jax.random.key(3),
                                   model.init_cache(B, _slots(mode)), mask_id=MASK, gen_len=N,
                                   block_len=BK, cache_mode=mode, refresh=refresh, **rule)
  return np.asarray(ref.tokens), ref.nfe, out


@pytest.mark.parametrize('mode', ['dual', 'prefix'])
@pytest.mark.parametrize('strategy', ['topk', 'threshold'])
@pytest.mark.parametrize('temperature', [0.0, 1.0])
def test_refresh_every_call_equals_uncached(mode, strategy, temperature):
  ref, ref_nfe, out = _pair(2, mode, 1, strategy, temperature)
  np.testing.assert_array_equal(np.asarray(out.tokens), ref)
  assert int(out.nfe) == int(ref_nfe) == int(out.refreshes)
  assert int(out.fed) == int(out.nfe) * T


@pytest.mark.parametrize('mode', ['dual', 'prefix'])
def test_one_layer_cache_is_exact(mode):
  """Layer-0 keys depend only on their own token and position, and inside a block only the
  block's tokens change, so with one layer the cache refreshed once per block is exact."""
  ref, ref_nfe, out = _pair(1, mode, 0, 'topk', 1.0)
  np.testing.assert_array_equal(np.asarray(out.tokens), ref)
  assert int(out.nfe) == int(ref_nfe) and int(out.refreshes) == N // BK


def _state(model, params, fn):
  """x_old (refreshed) and x_new (two block tokens committed since) with block start a."""
  x_old = jnp.concatenate([_prompt(), jnp.full((B, N), MASK)], axis=1)
  a = P + BK  # block 1
  x_new = x_old.at[:, a].set(5).at[:, a + 2].set(7)
  logits_old, kv = fn(params, x_old, model.init_cache(B, T + N).truncate(0))
  return x_old, x_new, a, logits_old, kv


def test_refresh_logits_equal_full_forward():
  model, params, fn = _model()
  x_old, _, a, logits_old, kv = _state(model, params, fn)
  np.testing.assert_allclose(logits_old, fn(params, x_old, None)[0], atol=1e-5, rtol=1e-5)
  # a cached call on the refreshed sequence itself reproduces the full forward (both modes)
  for w, W in ((a, BK), (P, N)):
    mask = jnp.broadcast_to(visible_slots(T, W, w, a), (B, 1, W, T + W))
    kvw = kv.replace(k=kv.k[..., :T + W, :], v=kv.v[..., :T + W, :], ids=kv.ids[..., :T + W])
    got = fn(params, x_old[:, w:w + W], kvw, positions=w + jnp.zeros((B, W), jnp.int32)
             + jnp.arange(W), attn_mask=mask)[0]
    # float32 sums in another order (cached attention over T + W slots); logits are O(2)
    np.testing.assert_allclose(got[:, a - w:], logits_old[:, a:w + W], atol=5e-5, rtol=1e-5)


@pytest.mark.parametrize('mode', ['dual', 'prefix'])
def test_cached_logits_equal_frozen_reference(mode):
  """Independent reference, no cache: one forward over concat(x_old [T], fed tokens of x_new)
  whose x_old half attends only to itself (so its keys are the refreshed cache's at every
  layer) and whose fed half sees x_old's keys outside the fresh set and its own fresh keys at
  positions >= a. Its fed-half logits must be the cached call's."""
  model, params, fn = _model()
  x_old, x_new, a, _, kv = _state(model, params, fn)
  w, W = (a, BK) if mode == 'dual' else (P, N)  # prefix: the stage window [P, T) of block 1
  hidden = (a, a + BK) if mode == 'dual' else (a, T)  # stale slots replaced by fresh keys
  kvw = kv.replace(k=kv.k[..., :T + W, :], v=kv.v[..., :T + W, :], ids=kv.ids[..., :T + W])
  fed_pos = w + jnp.broadcast_to(jnp.arange(W), (B, W))
  mask = jnp.broadcast_to(visible_slots(T, W, w, a), (B, 1, W, T + W))
  got = fn(params, x_new[:, w:w + W], kvw, positions=fed_pos, attn_mask=mask)[0]

  p_key = np.concatenate([np.arange(T), w + np.arange(W)])
  fresh = np.arange(T + W) >= T
  old_q = ~fresh[:, None] & ~fresh[None, :]
  new_q = fresh[:, None] & np.where(fresh, p_key >= a,
                                    (p_key < hidden[0]) | (p_key >= hidden[1]))[None, :]
  ref_mask = jnp.asarray(old_q | new_q)[None, None]
  seq = jnp.concatenate([x_old, x_new[:, w:w + W]], axis=1)
  ref = fn(params, seq, None, positions=jnp.broadcast_to(jnp.asarray(p_key), (B, T + W)),
           attn_mask=ref_mask)[0][:, T:]
  blk = slice(a - w, a - w + BK)
  np.testing.assert_allclose(got[:, blk], ref[:, blk], atol=5e-5, rtol=1e-5)
  # and the cache is stale: the exact logits of x_new differ (so the check can fail)
  exact = fn(params, x_new, None)[0][:, a:a + BK]
  assert float(jnp.max(jnp.abs(got[:, blk] - exact))) > 1e-3


@pytest.mark.parametrize('refresh', [0, 2, 3])
def test_counts(refresh):
  """topk with S = 4 steps per block of 4 masks: 4 calls per block, ceil(4 / r) full ones."""
  model, params, fn = _model()
  S, n_blocks = 4, N // BK
  out = cached_semi_autoregressive(fn, params, _prompt(), jax.random.key(0),
                                   model.init_cache(B, T + BK), mask_id=MASK, gen_len=N,
                                   block_len=BK, steps_per_block=S, refresh=refresh)
  full = n_blocks * (math.ceil(S / refresh) if refresh else 1)
  assert int(out.nfe) == n_blocks * S and int(out.refreshes) == full
  assert int(out.fed) == full * T + (n_blocks * S - full) * BK
  assert not (np.asarray(out.tokens) == MASK).any()
  np.testing.assert_array_equal(np.asarray(out.tokens[:, :P]), np.asarray(_prompt()))


def test_bad_inputs():
  model, params, fn = _model()
  kw = dict(mask_id=MASK, gen_len=N, block_len=BK, steps_per_block=2)
  run = lambda cache, **o: cached_semi_autoregressive(fn, params, _prompt(), jax.random.key(0),
                                                      cache, **{**kw, **o})
  with pytest.raises(ValueError, match='must divide gen_len'):
    run(model.init_cache(B, 64), block_len=5)
  with pytest.raises(ValueError, match='refresh must be >= 0'):
    run(model.init_cache(B, 64), refresh=-1)
  with pytest.raises(ValueError, match=rf'init_cache\({B}, {T + BK}\)'):
    run(None)
  with pytest.raises(ValueError, match=rf'needs {B} x {T + N}'):
    run(model.init_cache(B, T + BK), cache_mode='prefix')
  with pytest.raises(ValueError, match='cache_mode must be one of'):
    run(model.init_cache(B, 64), cache_mode='suffix')
  with pytest.raises(ValueError, match='steps'):
    run(model.init_cache(B, 64), steps_per_block=None)
