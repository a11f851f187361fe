"""Multi-head attention with grouped-query heads, RoPE, three mask forms and a KV cache.

Mask forms (``mask`` field of the module, static):
- ``'causal'``: query i sees key j iff id_j <= id_i, where ids are token positions.
- ``'block_causal'``: the same rule with caller-given ids (segment / level ids), so a query
  sees every key in its own and earlier blocks (VAR's level mask, block-causal decoding).
- ``'bidirectional'``: every valid key.
An optional explicit boolean ``attn_mask`` [B, 1|H, Lq, Lk] is AND-ed on top (e.g. BD3-LM).
A ``window`` W > 0 (causal form only; Mistral v0.1's sliding window) also requires
id_i - id_j < W: a query sees itself and the W - 1 keys before it.

Options of the imported families (each off by default): biases on q, k and v (Qwen2), RMSNorm
over head_dim on q and k before RoPE (Qwen3), and RoPE frequency scaling (`RopeScaling`).

The cache is a plain pytree (`KVCache`) passed in and returned, so decoding is functional and
the sampler seam is ``logits_fn(params, tokens, cache) -> (logits, cache)``. Empty cache slots carry the
id ``EMPTY`` and are masked whatever the form, so one rule covers prefill, decode and training.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn
from flax import struct

from paradigms.nn import quant
from paradigms.nn.layers import RMSNorm, RopeScaling, normal_init, rope, zeros_init
from paradigms.nn.quant import absmax_int8

EMPTY = jnp.iinfo(jnp.int32).max  # id of an unwritten cache slot
MASK_FORMS = ('causal', 'block_causal', 'bidirectional')


@struct.dataclass
class KVCache:
  """Preallocated per-layer key/value cache. With the scanned backbone every field gains a
  leading [n_layers] axis.

  int8 cache (`zeros(..., dtype=jnp.int8)`): k, v hold int8 codes and k_scale, v_scale one
  float32 absmax scale per token and head (paradigms/nn/quant.py): written quantised by
  `update`, read dequantised by `keys` / `values` (|k - q s| <= s / 2). Float caches keep
  the scales None."""
  k: jax.Array  # [B, K, S, Dh]: heads before slots, so (B, K) are the batch axes of the
  v: jax.Array  # [B, K, S, Dh]   attention matmuls (`cached_attention`)
  ids: jax.Array  # [B, S] int32 mask ids of the cached keys; EMPTY where unwritten
  index: jax.Array  # [] int32 number of slots written so far
  k_scale: jax.Array | None = None  # [B, K, S] float32 (int8 cache only)
  v_scale: jax.Array | None = None  # [B, K, S] float32 (int8 cache only)

  @classmethod
  def zeros(cls, batch: int, max_len: int, n_kv_heads: int, head_dim: int, dtype) -> 'KVCache':
    """An empty cache; dtype int8 makes it the int8 cache (class doc)."""
    kv = jnp.zeros((batch, n_kv_heads, max_len, head_dim), dtype)
    scale = (jnp.ones((batch, n_kv_heads, max_len), jnp.float32)
             if jnp.dtype(dtype) == jnp.int8 else None)
    return cls(k=kv, v=kv, ids=jnp.full((batch, max_len), EMPTY, jnp.int32),
               index=jnp.zeros((), jnp.int32), k_scale=scale, v_scale=scale)

  @property
  def quantized(self) -> bool:
    return self.k_scale is not None

  def update(self, k, v, ids, layer=None) -> 'KVCache':
    """Write k, v [B, L, K, Dh] and ids [B, L] at slot `index`; advance the index by L.

    With `layer` (an int32 scalar), the cache is the whole stack (a leading [n_layers] axis)
    and only layer `layer`'s slots are written, in place: the layer scan carries the stack, so
    a decode step writes B * L * K * Dh values per layer rather than copying every layer's
    cache out of the scan. An int8 cache stores absmax codes and scales over head_dim."""
    dt, ids, L = self.k.dtype, ids.astype(jnp.int32), k.shape[1]
    k, v = (jnp.swapaxes(a, 1, 2) for a in (k, v))  # [B, K, L, Dh]
    new = {}
    if self.quantized:
      (k, ks), (v, vs) = (absmax_int8(a, (-1,)) for a in (k, v))
      new = {'k_scale': ks[..., 0], 'v_scale': vs[..., 0]}  # [B, K, L]
    new.update(k=k.astype(dt), v=v.astype(dt), ids=ids)
    i = self.index if layer is None else self.index[layer]

    def write(name, x):  # x: one layer's new slots, written at slot i (axis 1 of ids, else 2)
      start = [0] * x.ndim
      start[1 if name == 'ids' else 2] = i
      if layer is not None:
        x, start = x[None], [layer] + start
      return jax.lax.dynamic_update_slice(getattr(self, name), x, start)

    index = i + L if layer is None else self.index.at[layer].add(L)
    return self.replace(index=index, **{n: write(n, x) for n, x in new.items()})

  def keys(self, dtype):
    """k in `dtype` ([.., B, K, S, Dh]), dequantised for an int8 cache."""
    return self._read(self.k, self.k_scale, dtype)

  def values(self, dtype):
    """v in `dtype` ([.., B, K, S, Dh]), dequantised for an int8 cache."""
    return self._read(self.v, self.v_scale, dtype)

  @staticmethod
  def _read(x, scale, dtype):
    if scale is None:
      return x.astype(dtype)
    return (x.astype(jnp.float32) * scale[..., None]).astype(dtype)

  def truncate(self, n) -> 'KVCache':
    """Roll back to the first `n` slots (int32 scalar): later slots are marked EMPTY and the
    next write lands at slot n. Works on one layer's cache or the stacked one (speculative
    decoding discards the rejected draft's entries this way; the k/v values stay and are
    overwritten by the next write)."""
    keep = jnp.arange(self.ids.shape[-1]) < n  # [S]
    return self.replace(ids=jnp.where(keep, self.ids, EMPTY),
                        index=jnp.full_like(self.index, n))

  def first(self, S: int) -> 'KVCache':
    """The first S slots (a static slice of every slot axis, scales included; the index is
    kept). Works on one layer's cache or the stacked one."""
    cut = lambda a, tail: None if a is None else a[(..., slice(0, S)) + (slice(None),) * tail]
    return self.replace(k=cut(self.k, 1), v=cut(self.v, 1), ids=cut(self.ids, 0),
                        k_scale=cut(self.k_scale, 0), v_scale=cut(self.v_scale, 0))

  def layer(self, i) -> 'KVCache':
    """Layer `i`'s view [B, S, ...] of a stacked cache (for reading)."""
    take = lambda a: None if a is None else jax.lax.dynamic_index_in_dim(a, i, 0, keepdims=False)
    return KVCache(k=take(self.k), v=take(self.v), ids=take(self.ids), index=take(self.index),
                   k_scale=take(self.k_scale), v_scale=take(self.v_scale))


CAUSAL_CHUNKS = 4  # query chunks of `causal_chunked_attention`


def causal_chunked_attention(q, k, v, chunks: int = CAUSAL_CHUNKS):
  """Causal softmax(q k^T / sqrt(Dh)) v that skips the masked upper blocks: the queries are cut
  into `chunks` equal blocks and block c attends only to keys [0, (c + 1) L / chunks), so the
  scores, softmax and their gradients cover (chunks + 1) / (2 chunks) of the [L, L] square
  (5/8 with 4 chunks) instead of all of it. The automatic choice for causal training on a CPU
  backend (`Attention`; 10% of a small-preset step, docs/speed.md); equal to the full masked
  softmax up to the order of float32 sums (masked terms are exp(-inf) = 0 in both).

  q: [B, L, H, Dh]; k, v: [B, L, K, Dh] (GQA: query head h reads KV head h // (H / K)); L a
  multiple of `chunks`. Returns [B, L, H, Dh] in q's dtype."""
  B, L, H, Dh = q.shape
  K = k.shape[2]
  n = L // chunks
  out = []
  for c in range(chunks):
    S = (c + 1) * n
    qc = q[:, c * n:S].reshape(B, n, K, H // K, Dh)
    s = jnp.einsum('blkgd,bskd->bkgls', qc, k[:, :S],
                   preferred_element_type=jnp.float32) * Dh ** -0.5  # [B, K, G, n, S]
    seen = (c * n + jnp.arange(n))[:, None] >= jnp.arange(S)[None]  # [n, S]
    p = jax.nn.softmax(jnp.where(seen, s, -jnp.inf), axis=-1).astype(v.dtype)
    out.append(jnp.einsum('bkgls,bskd->blkgd', p, v[:, :S]).reshape(B, n, H, Dh))
  return jnp.concatenate(out, axis=1)


def cached_attention(q, k, v, mask):
  """softmax(q k^T / sqrt(Dh), masked) v against a cache in its own layouts.

  q: [B, L, H, Dh] (query head h reads KV head h // (H / K), as in GQA); k, v: [B, K, S, Dh];
  mask: bool [B, 1 | H, L, S]. Scores and softmax in float32. Returns [B, L, H, Dh].
  Written out rather than through `jax.nn.dot_product_attention`, whose [B, S, K, Dh] operand
  layout made XLA transpose each layer's whole cache at every decode step (3.0x a cache-free
  forward per step on the small preset's CPU decode, 2.4x after; benchmarks/decode_overhead.py)."""
  B, L, H, Dh = q.shape
  K = k.shape[1]
  G = H // K
  s = jnp.einsum('blkgd,bksd->bkgls', q.reshape(B, L, K, G, Dh), k,
                 preferred_element_type=jnp.float32) * Dh ** -0.5  # [B, K, G, L, S]
  mask = mask.reshape(B, K, G, L, -1) if mask.shape[1] == H else mask[:, :, None]
  s = jnp.where(mask, s, jnp.finfo(jnp.float32).min)
  p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
  return jnp.einsum('bkgls,bksd->blkgd', p, v).reshape(B, L, H, Dh)


def mask_from_ids(form: str, q_ids, k_ids, window: int = 0):
  """Boolean mask [B, 1, Lq, Lk] from query ids [B, Lq] and key ids [B, Lk] (see module doc)."""
  valid = (k_ids != EMPTY)[:, None, :]  # [B, 1, Lk]
  if form == 'bidirectional':
    allowed = jnp.broadcast_to(valid, (q_ids.shape[0], q_ids.shape[1], k_ids.shape[1]))
  else:
    allowed = valid & (k_ids[:, None, :] <= q_ids[:, :, None])  # [B, Lq, Lk]
  if window:
    if form != 'causal':
      raise ValueError(f'a sliding window needs the causal mask form, got {form!r}')
    allowed = allowed & (q_ids[:, :, None] - k_ids[:, None, :] < window)
  return allowed[:, None]


class Attention(nn.Module):
  """Grouped-query attention (Ainslie et al. 2023) through `jax.nn.dot_product_attention`.

  x: [B, L, D]; positions, ids: [B, L] int32. Returns ([B, L, D], cache or None). With
  `layer` (int32 scalar) the cache is the whole layer stack, updated in place at that layer.
  """
  n_heads: int
  n_kv_heads: int
  head_dim: int
  mask: str = 'causal'
  rope_base: float = 10_000.0
  out_std: float = 0.02
  implementation: str | None = 'xla'  # 'xla' | 'cudnn' | None (let JAX choose)
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  qkv_bias: bool = False  # Qwen2: q, k, v projections carry a bias
  qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k, before RoPE
  norm_eps: float = 1e-6  # of the q/k norms
  window: int = 0  # > 0: sliding-window attention (module doc)
  rope_scaling: RopeScaling = RopeScaling()

  @nn.compact
  def __call__(self, x, positions, ids, cache: KVCache | None = None, attn_mask=None,
               layer=None):
    if self.mask not in MASK_FORMS:
      raise ValueError(f'attention mask {self.mask!r} is not one of {MASK_FORMS}')
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f'n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}')
    d = x.shape[-1]
    H, K, Dh = self.n_heads, self.n_kv_heads, self.head_dim
    std = d ** -0.5
    wq = self.param('wq', normal_init(std, ('embed', 'heads', 'head_dim')), (d, H, Dh), self.param_dtype)
    wk = self.param('wk', normal_init(std, ('embed', 'kv_heads', 'head_dim')), (d, K, Dh), self.param_dtype)
    wv = self.param('wv', normal_init(std, ('embed', 'kv_heads', 'head_dim')), (d, K, Dh), self.param_dtype)
    wo = self.param('wo', normal_init(self.out_std, ('heads', 'head_dim', 'embed')), (H, Dh, d),
                    self.param_dtype)
    c = lambda w: w.astype(self.dtype)
    dense = lambda spec, x, w: quant.einsum(spec, x, w, self.dtype)  # float or Int8Kernel
    q = dense('bld,dhk->blhk', x, wq)  # [B, L, H, Dh]
    k = dense('bld,dhk->blhk', x, wk)  # [B, L, K, Dh]
    v = dense('bld,dhk->blhk', x, wv)  # [B, L, K, Dh]
    if self.qkv_bias:
      q = q + c(self.param('q_bias', zeros_init(('heads', 'head_dim')), (H, Dh), self.param_dtype))
      k = k + c(self.param('k_bias', zeros_init(('kv_heads', 'head_dim')), (K, Dh), self.param_dtype))
      v = v + c(self.param('v_bias', zeros_init(('kv_heads', 'head_dim')), (K, Dh), self.param_dtype))
    if self.qk_norm:
      norm = lambda name: RMSNorm(self.norm_eps, self.dtype, self.param_dtype, 'head_dim', name=name)
      q, k = norm('q_norm')(q), norm('k_norm')(k)
    if self.rope_base > 0:  # 0: positions enter elsewhere (e.g. DiT's absolute embedding)
      q = rope(q, positions, self.rope_base, self.rope_scaling)
      k = rope(k, positions, self.rope_base, self.rope_scaling)
    q = nn.with_logical_constraint(q, ('batch', 'length', 'act_heads', None))
    k = nn.with_logical_constraint(k, ('batch', 'length', 'act_kv_heads', None))
    v = nn.with_logical_constraint(v, ('batch', 'length', 'act_kv_heads', None))

    if cache is not None:
      cache = cache.update(k, v, ids, layer)
      view = cache if layer is None else cache.layer(layer)
      mask = mask_from_ids(self.mask, ids, view.ids, self.window)
      if attn_mask is not None:
        mask = mask & attn_mask
      y = cached_attention(q, view.keys(self.dtype), view.values(self.dtype), mask)
    else:
      is_causal = False
      if self.mask == 'causal' and attn_mask is None and not self.window:
        mask, is_causal = None, True  # index order == position order; lets cuDNN use flash attention
      elif self.mask == 'bidirectional':
        mask = None
      else:
        mask = mask_from_ids(self.mask, ids, ids, self.window)
      if attn_mask is not None:
        mask = attn_mask if mask is None else mask & attn_mask
      L = q.shape[1]
      if (is_causal and self.implementation == 'xla' and jax.default_backend() == 'cpu'
          and L % CAUSAL_CHUNKS == 0 and L >= 16 * CAUSAL_CHUNKS):
        y = causal_chunked_attention(q, k, v)  # the CPU's automatic choice (its doc)
      else:
        y = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                         implementation=self.implementation)  # [B, L, H, Dh]
    out = dense('blhk,hkd->bld', y, wo)
    return out, cache
