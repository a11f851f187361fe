"""The shared backbone: causality, KV cache == full forward, masks, adaLN, param count."""
import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paradigms.nn import EMPTY, Transformer, TransformerConfig, mask_from_ids
from paradigms.nn.transformer import REMAT_POLICIES, apply_layers, unstack_layers

CFG = TransformerConfig(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_len=24)


def _init(cfg, L=8, cond=None):
  model = Transformer(cfg)
  kw = {} if cond is None else {'cond': cond}
  ids = {'ids': jnp.zeros((2, L), jnp.int32)} if cfg.mask == 'block_causal' else {}
  variables = model.init(jax.random.key(0), jnp.zeros((2, L), jnp.int32), **kw, **ids)
  return model, nn.meta.unbox(variables)['params']


def test_param_count_matches_formula():
  for cfg in (CFG, dataclasses.replace(CFG, tie_embeddings=False, cond_dim=8)):
    model, params = _init(cfg, cond=jnp.zeros((2, 8)) if cfg.cond_dim else None)
    assert sum(x.size for x in jax.tree.leaves(params)) == cfg.num_params()


def test_params_carry_logical_axes():
  model = Transformer(CFG)
  boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 8), jnp.int32))['params']
  specs = nn.get_partition_spec(boxed)
  assert specs['layers']['attn']['wq'] == jax.sharding.PartitionSpec('layers', 'embed', 'heads', 'head_dim')
  assert specs['embed']['embedding'] == jax.sharding.PartitionSpec('vocab', 'embed')
  for leaf in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
    assert isinstance(leaf, nn.Partitioned), 'every parameter must carry logical axis names'


def test_causality_changing_token_j_never_changes_earlier_logits():
  model, params = _init(CFG, L=16)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.integers(0, CFG.vocab_size, (2, 16)), jnp.int32)
  base, _ = model.apply({'params': params}, x)
  for j in (0, 5, 15):
    x2 = x.at[:, j].set((x[:, j] + 7) % CFG.vocab_size)
    out, _ = model.apply({'params': params}, x2)
    np.testing.assert_array_equal(np.asarray(out[:, :j]), np.asarray(base[:, :j]))
    assert np.abs(np.asarray(out[:, j:] - base[:, j:])).max() > 1e-4  # and later ones do change


@pytest.mark.parametrize('dtype,tol', [('float32', 2e-5), ('bfloat16', 5e-2)])
def test_kv_cache_decode_equals_full_forward(dtype, tol):
  cfg = dataclasses.replace(CFG, dtype=dtype)
  model, params = _init(cfg, L=20)
  x = jax.random.randint(jax.random.key(3), (2, 20), 0, cfg.vocab_size)
  full, _ = model.apply({'params': params}, x)
  cache = model.init_cache(2, 24)
  apply = jax.jit(lambda tokens, cache: model.apply({'params': params}, tokens, cache=cache))
  logits, cache = apply(x[:, :7], cache)  # prefill
  steps = [logits]
  for t in range(7, 20):  # one token at a time
    logits, cache = apply(x[:, t:t + 1], cache)
    steps.append(logits)
  cached = jnp.concatenate(steps, axis=1)
  assert int(cache.index[0]) == 20
  np.testing.assert_allclose(np.asarray(cached), np.asarray(full), atol=tol, rtol=0)


def test_a_stacked_cache_update_writes_only_its_layer_in_place():
  """KVCache.update(..., layer=i) on the [n_layers]-stacked cache == the per-layer update of
  layer i, with every other layer bit-identical; and the decode step's compiled program
  updates the carried stack in place: no copy of the stacked cache and no transposed layer cache
  per step (`cached_attention` reads the [B, K, S, Dh] layout) on the samplers' path
  (`unstack_layers`)."""
  from paradigms.nn import KVCache
  one = KVCache.zeros(2, 6, 2, 4, jnp.float32)  # [B, K, S, Dh]
  stack = jax.tree.map(lambda a: jnp.broadcast_to(a, (3,) + a.shape), one)
  stack = stack.replace(index=jnp.asarray([2, 2, 2], jnp.int32))
  k, v = (jax.random.normal(jax.random.key(i), (2, 1, 2, 4)) for i in (0, 1))
  ids = jnp.full((2, 1), 2, jnp.int32)
  out = stack.update(k, v, ids, jnp.int32(1))
  want = stack.layer(1).update(k, v, ids)
  for name in ('k', 'v', 'ids', 'index'):
    got = getattr(out, name)
    np.testing.assert_array_equal(got[1], getattr(want, name))
    for i in (0, 2):
      np.testing.assert_array_equal(got[i], getattr(stack, name)[i])
  model, params = _init(CFG)
  cache = model.init_cache(2, 24)
  step = jax.jit(lambda p, x, c: apply_layers(model, p, x, cache=c), donate_argnums=2)
  hlo = step.lower(unstack_layers(params), jnp.zeros((2, 1), jnp.int32), cache).compile().as_text()
  stacked = f'f32[{CFG.n_layers},2,{CFG.kv_heads},24,{CFG.head_size}]'
  copies = [l for l in hlo.splitlines() if ' copy(' in l and (stacked in l.split('copy(')[0])]
  assert not copies, copies
  size = lambda l: np.prod([int(n) for n in re.search(r'\[([\d,]+)\]', l).group(1).split(',')])
  moved = [l for l in hlo.splitlines()  # nor is a layer's cache (B K S Dh values) transposed
           if ' transpose(' in l and size(l) == 2 * CFG.kv_heads * 24 * CFG.head_size]
  assert not moved, moved


@pytest.mark.parametrize('mask', ['causal', 'block_causal'])
def test_unstacked_layers_equal_the_layer_scan(mask):
  """The samplers' path (per-layer weights, `unstack_layers`, an unrolled loop of the same
  Block) gives the scan's logits and cache, to float rounding (XLA orders some reductions
  differently): full forward, prefill and decode steps."""
  cfg = dataclasses.replace(CFG, mask=mask, qkv_bias=True)
  model, params = _init(cfg, L=12)
  x = jax.random.randint(jax.random.key(3), (2, 12), 0, cfg.vocab_size)
  ids = {'ids': jnp.broadcast_to(jnp.arange(12) // 3, (2, 12))} if mask != 'causal' else {}
  flat = unstack_layers(params)
  assert 'layers' in params and len(flat['layers']) == cfg.n_layers
  want, _ = model.apply({'params': params}, x, **ids)
  got, _ = apply_layers(model, flat, x, **ids)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  caches = [model.init_cache(2, 16), model.init_cache(2, 16)]
  for lo, hi in ((0, 6), (6, 9), (9, 12)):
    part = {k: v[:, lo:hi] for k, v in ids.items()}
    a, caches[0] = model.apply({'params': params}, x[:, lo:hi], cache=caches[0], **part)
    b, caches[1] = apply_layers(model, flat, x[:, lo:hi], cache=caches[1], **part)
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=0), *caches)


@pytest.mark.parametrize('chunks', [2, 4])
def test_causal_chunked_attention_equals_the_masked_square(chunks):
  """The CPU's training attention (query blocks that skip the masked upper blocks) equals
  jax.nn.dot_product_attention(is_causal=True) with GQA, and so do its gradients."""
  from paradigms.nn.attention import causal_chunked_attention
  q = jax.random.normal(jax.random.key(0), (2, 64, 4, 16))
  k, v = (jax.random.normal(jax.random.key(i), (2, 64, 2, 16)) for i in (1, 2))
  full = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                      implementation='xla')
  chunked = lambda q, k, v: causal_chunked_attention(q, k, v, chunks)
  np.testing.assert_allclose(chunked(q, k, v), full(q, k, v), atol=2e-6, rtol=0)
  weight = jnp.cos(jnp.arange(16.0))
  grads = [jax.grad(lambda *a: (fn(*a) * weight).sum(), argnums=(0, 1, 2))(q, k, v)
           for fn in (chunked, full)]
  for a, b in zip(*grads):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=0)


def test_block_causal_mask_rule_and_cache():
  cfg = dataclasses.replace(CFG, mask='block_causal')
  levels = jnp.asarray([[0, 1, 1, 2, 2, 2, 3, 3]] * 2, jnp.int32)
  m = np.asarray(mask_from_ids('block_causal', levels, levels))[0, 0]
  lv = np.asarray(levels[0])
  np.testing.assert_array_equal(m, lv[None, :] <= lv[:, None])
  model, params = _init(cfg)
  x = jax.random.randint(jax.random.key(1), (2, 8), 0, cfg.vocab_size)
  full, _ = model.apply({'params': params}, x, ids=levels)
  # a token in level 2 sees all of level 2, so changing a later token of the same level matters,
  # but changing a level-3 token never changes levels 0..2
  x2 = x.at[:, 7].set((x[:, 7] + 1) % cfg.vocab_size)
  out, _ = model.apply({'params': params}, x2, ids=levels)
  np.testing.assert_array_equal(np.asarray(out[:, :6]), np.asarray(full[:, :6]))
  # decoding level by level with the cache gives the full-forward logits
  cache, outs = model.init_cache(2, 8), []
  for a, b in ((0, 1), (1, 3), (3, 6), (6, 8)):
    lg, cache = model.apply({'params': params}, x[:, a:b], ids=levels[:, a:b], cache=cache,
                            positions=jnp.broadcast_to(jnp.arange(a, b), (2, b - a)))
    outs.append(lg)
  np.testing.assert_allclose(np.asarray(jnp.concatenate(outs, 1)), np.asarray(full), atol=2e-5)


def test_bidirectional_sees_the_future_and_empty_slots_are_masked():
  cfg = dataclasses.replace(CFG, mask='bidirectional')
  model, params = _init(cfg)
  x = jax.random.randint(jax.random.key(2), (2, 8), 0, cfg.vocab_size)
  a, _ = model.apply({'params': params}, x)
  b, _ = model.apply({'params': params}, x.at[:, 7].set((x[:, 7] + 1) % cfg.vocab_size))
  assert np.abs(np.asarray(a[:, 0] - b[:, 0])).max() > 1e-5
  ids = jnp.asarray([[0, 1, EMPTY]])
  np.testing.assert_array_equal(np.asarray(mask_from_ids('bidirectional', ids[:, :2], ids))[0, 0],
                                [[True, True, False]] * 2)


def test_adaln_zero_init_is_identity_in_cond():
  cfg = dataclasses.replace(CFG, cond_dim=8)
  model, params = _init(cfg, cond=jnp.zeros((2, 8)))
  x = jax.random.randint(jax.random.key(4), (2, 8), 0, cfg.vocab_size)
  a, _ = model.apply({'params': params}, x, cond=jnp.zeros((2, 8)))
  b, _ = model.apply({'params': params}, x, cond=jax.random.normal(jax.random.key(5), (2, 8)))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # once the modulation weights move, cond changes the output
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: v + 0.1 if 'adaln' in jax.tree_util.keystr(p) else v, params)
  a, _ = model.apply({'params': params}, x, cond=jnp.zeros((2, 8)))
  b, _ = model.apply({'params': params}, x, cond=jnp.ones((2, 8)))
  assert np.abs(np.asarray(a - b)).max() > 1e-4


@pytest.mark.parametrize('unroll', [1, 0])
def test_remat_policies_give_the_same_gradients(unroll):
  """Every remat policy: the same gradients; bit for bit through the layer scan, to float32
  reassociation (1e-6 of the largest gradient) when the scan is unrolled (0: automatic, which
  unrolls on a CPU), where XLA fuses across layers differently per policy."""
  x = jax.random.randint(jax.random.key(6), (2, 9), 0, CFG.vocab_size)
  grads = []
  for policy in REMAT_POLICIES:
    cfg = dataclasses.replace(CFG, remat_policy=policy, scan_unroll=unroll)
    model, params = _init(cfg)
    grads.append(jax.jit(jax.grad(lambda p: model.apply({'params': p}, x)[0].sum()))(params))
  scale = max(float(jnp.abs(a).max()) for a in jax.tree.leaves(grads[0]))
  for g in grads[1:]:
    if unroll == 1:
      jax.tree.map(np.testing.assert_array_equal, grads[0], g)
    else:
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * scale),
                   grads[0], g)


def test_bad_config_fails_with_a_message():
  with pytest.raises(ValueError, match='n_kv_heads'):
    TransformerConfig(n_heads=4, n_kv_heads=3)
  with pytest.raises(ValueError, match='remat_policy'):
    TransformerConfig(remat_policy='sometimes')


@pytest.mark.skipif(jax.default_backend() != 'gpu',
                    reason='cuDNN flash attention needs an NVIDIA GPU (run with JAX_PLATFORMS=cuda)')
@pytest.mark.parametrize('mask', ['causal', 'bidirectional'])
def test_cudnn_attention_matches_xla(mask):
  """The same params and bf16 input through implementation='cudnn' and 'xla': outputs and input
  gradients agree to bf16 rounding (2e-2 of their scale)."""
  from paradigms.nn.attention import Attention
  B, L, H, Dh = 2, 256, 4, 64
  x = jax.random.normal(jax.random.key(0), (B, L, H * Dh), jnp.bfloat16)
  pos = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
  mods = {impl: Attention(H, H, Dh, mask, implementation=impl, dtype=jnp.bfloat16)
          for impl in ('xla', 'cudnn')}
  params = mods['xla'].init(jax.random.key(1), x, pos, pos)['params']
  out, grad = {}, {}
  for impl, m in mods.items():
    f = lambda x, m=m: m.apply({'params': params}, x, pos, pos)[0].astype(jnp.float32)
    out[impl] = f(x)
    grad[impl] = jax.grad(lambda x, f=f: jnp.sum(f(x) ** 2))(x).astype(jnp.float32)
  for got in (out, grad):
    scale = float(jnp.abs(got['xla']).max())
    assert float(jnp.abs(got['cudnn'] - got['xla']).max()) <= 2e-2 * scale
