"""Approximate KV caching for semi-autoregressive masked diffusion decoding: Fast-dLLM's prefix
cache and dual cache (Wu et al. 2025, "Fast-dLLM: training-free acceleration of diffusion LLM by
enabling KV cache and parallel decoding", Sec. 3.1 and Fig. 2).

Decoding is `sample.masked_diffusion.semi_autoregressive`'s: the answer of N tokens after a
prompt of P is cut into blocks of b tokens, decoded left to right, and inside block j, positions
[a, a + b) with a = P + j b, a commit rule of `sample.parallel_decoding` (top-k, threshold,
factor, EB) commits proposals x_hat ~ p_theta(. | x) step by step. The network is bidirectional,
so the keys and values of layer l at position p, K_l(x)_p and V_l(x)_p, depend on every token
and change whenever one is committed: no exact cache exists. Fast-dLLM observes that inside a
block they change little for positions outside it, and reuses them:

- refresh: one full forward over x^(t0) [B, T] (T = P + N); its logits serve that step, and its
  keys and values of every position are kept, K~_p = K_l(x^(t0))_p, V~_p = V_l(x^(t0))_p;
- prefix cache (cache_mode='prefix'): the other steps t of the block feed x^(t)[a, T), the block
  and everything after it; they attend to K~_p, V~_p for p < a and to their own fresh keys;
- dual cache (cache_mode='dual'): the other steps feed only the block x^(t)[a, a + b); they
  attend to K~_p, V~_p for every p outside the block (prefix and masked suffix) and to their own.

For a fed query q of layer l this is attention over the mixed key set
    h_q = sum_p softmax_p(q . k_p / sqrt(d_h)) v_p,   (k_p, v_p) = fresh if p is fed, else cached,
and the block's logits follow. `refresh=0` refreshes at the first call of each block (Fast-dLLM);
`refresh=r >= 1` at every r-th network call of a block. With r = 1 every call is a full forward
and the tokens are those of `semi_autoregressive` for the same rng; with a one-layer network the
cached keys are exact (layer-0 keys depend only on their own token and position, and positions
outside the fed set do not change inside a block), so every mode gives those tokens too. dKV-Cache
(Ma et al. 2025) instead delays caching a token until a step after it was decoded; not done here.

Static shapes. One preallocated cache of T + W slots: a refresh writes slots [0, T) with
`logits_fn(params, x, cache.truncate(0))`; a cached call writes its W fed tokens at slots
[T, T + W) (the returned cache is discarded, the refreshed one kept) under an `attn_mask` that
hides the cached slots of fed positions p >= a. Dual cache feeds W = b tokens. The prefix cache's
fed length T - a shrinks block by block; to keep shapes static the blocks are split into at most
`PREFIX_STAGES` contiguous stages, and a stage starting at block j0 feeds the static window
[w, T), w = P + j0 b: its positions [w, a) are finished blocks, fed but hidden as keys (the cached
ones are used, as in Fast-dLLM), so stages change the cost, not the result.

Randomness and NFE: as `semi_autoregressive` (block j uses fold_in(rng, j), its step i
fold_in(., i)), and every proposal is drawn over the full [B, T] layout, so a cached step draws
with the same uniforms an uncached one would; every network call counts 1 NFE, full or cached.
`refreshes` counts the full forwards and `fed` the positions fed per row (uncached: nfe T).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from sample import parallel_decoding as pd
from sample.masked_diffusion import _check, _propose

CACHE_MODES = ('prefix', 'dual')
PREFIX_STAGES = 4  # static query windows of the prefix cache (module doc)


@struct.dataclass
class CachedDiffusionOutput:
  tokens: jax.Array  # [B, P + N] int32: the prompt, then the answer
  nfe: jax.Array  # [] int32 network calls, full or cached
  refreshes: jax.Array  # [] int32 full forwards among them
  fed: jax.Array  # [] int32 positions fed through the network per row, over all calls


@struct.dataclass
class _Carry:
  """What the commit loop threads through its network calls (`pd.decode_loop(carry=)`)."""
  kv: Any  # KVCache [n_layers, B, K, T + W, Dh]: slots [0, T) hold the last refresh's K/V
  calls: jax.Array  # [] int32 network calls in the current block
  refreshes: jax.Array  # [] int32
  fed: jax.Array  # [] int32


def _stages(cache_mode: str, P: int, n_blocks: int, b: int):
  """[(first block, end block, window start w or None = the block's own, fed length W)]."""
  if cache_mode == 'dual':
    return [(0, n_blocks, None, b)]
  T = P + n_blocks * b
  bounds = [n_blocks * g // min(PREFIX_STAGES, n_blocks) for g in
            range(min(PREFIX_STAGES, n_blocks) + 1)]
  return [(j0, j1, P + j0 * b, T - P - j0 * b) for j0, j1 in zip(bounds, bounds[1:])]


def _slots(cache, S: int):
  """The first S slots of a stacked KVCache (a static slice; the index is kept)."""
  return cache.first(S)  # every slot axis, the int8 cache's scales included


def visible_slots(T: int, W: int, w, a):
  """Which of the T + W cache slots a cached call may attend to: bool [T + W].

  Slot s < T holds the refreshed key of position s; slot T + i the fresh key of fed position
  w + i. A position p >= a inside the fed window [w, w + W) uses its fresh key, every other
  position its cached one (the module doc's mixed key set)."""
  s = jnp.arange(T + W)
  fresh = s >= T
  p = jnp.where(fresh, w + s - T, s)  # position held by slot s
  return jnp.where(fresh, p >= a, ~((p >= a) & (p < w + W)))


_STATIC = ('logits_fn', 'mask_id', 'gen_len', 'block_len', 'strategy', 'steps_per_block', 'tau',
           'factor', 'gamma', 'confidence', 'cache_mode', 'refresh', 'temperature', 'top_k',
           'top_p')


@functools.partial(jax.jit, static_argnames=_STATIC)
def cached_semi_autoregressive(logits_fn: Callable, params, prompt, rng, cache=None, *,
                               mask_id: int, gen_len: int, block_len: int, strategy: str = 'topk',
                               steps_per_block: int | None = None, tau: float = 0.9,
                               factor: float = 1.0, gamma: float = 0.1, confidence: str = 'max',
                               cache_mode: str = 'dual',
                               refresh: int = 0, temperature: float = 1.0, top_k: int = 0,
                               top_p: float = 1.0) -> CachedDiffusionOutput:
  """Semi-AR decoding of gen_len = N tokens after `prompt` [B, P] with Fast-dLLM's approximate
  KV cache (module doc). Blocks, commit rules (`strategy` with steps_per_block / tau / factor /
  gamma, ranked by `confidence`) and rng use are those of `sample.masked_diffusion.semi_autoregressive` on
  x = concat(prompt, N masks); prompt tokens are given and never changed (a mask_id inside the
  prompt stays masked: use `semi_autoregressive` for infilling).

  logits_fn(params, tokens, cache, positions=, attn_mask=) -> (logits, cache), e.g.
  `paradigms.masked_diffusion.LogitsFn`. cache: an empty KV cache with room for T + b slots
  (dual) or T + N (prefix), T = P + N: `model.init_cache(B, T + b)` / `(B, T + N)`.
  cache_mode: 'dual' or 'prefix'. refresh: 0 = a full forward at the first call of each block
  only (Fast-dLLM); r >= 1 = at every r-th call of a block (1: exact, every call is full).
  Returns CachedDiffusionOutput (tokens [B, P + N], nfe, refreshes, fed).
  """
  _check(temperature, top_k, top_p, gen_len=gen_len, block_len=block_len,
         steps_per_block=steps_per_block)
  rule = pd.make_rule(strategy, steps=steps_per_block, tau=tau, factor=factor, gamma=gamma,
                      confidence=confidence)
  if cache_mode not in CACHE_MODES:
    raise ValueError(f'cache_mode must be one of {CACHE_MODES}, got {cache_mode!r}')
  if refresh < 0:
    raise ValueError(f'refresh must be >= 0 (0 = once per block, r = every r-th call), got {refresh}')
  if gen_len % block_len:
    raise ValueError(f'block_len={block_len} must divide gen_len={gen_len} (whole blocks, as in '
                     'Fast-dLLM); pick a divisor or pad gen_len')
  B, P = prompt.shape
  T, n_blocks = P + gen_len, gen_len // block_len
  stages = _stages(cache_mode, P, n_blocks, block_len)
  need = T + max(W for *_, W in stages)
  if cache is None:
    raise ValueError(f"cache_mode={cache_mode!r} needs an empty `cache` with room for {need} "
                     f'positions: model.init_cache({B}, {need})')
  if cache.ids.shape[-1] < need or cache.ids.shape[-2] != B:
    raise ValueError(f'the cache holds {cache.ids.shape[-2]} rows x {cache.ids.shape[-1]} slots; '
                     f"cache_mode={cache_mode!r} needs {B} x {need}: model.init_cache({B}, {need})")
  prompt = prompt.astype(jnp.int32)
  x = jnp.concatenate([prompt, jnp.full((B, gen_len), mask_id, jnp.int32)], axis=1)  # [B, T]
  pos = jnp.arange(T, dtype=jnp.int32)
  positions = jnp.broadcast_to(pos, (B, T))
  zero = jnp.zeros((), jnp.int32)
  nfe, carry = zero, None

  for j0, j1, w_static, W in stages:
    carry = _Carry(kv=_slots(cache, T + W), calls=zero,
                   refreshes=zero if carry is None else carry.refreshes,
                   fed=zero if carry is None else carry.fed)

    def block(j, state, w_static=w_static, W=W):
      x, nfe, carry = state
      a = P + j * block_len
      w = a if w_static is None else w_static
      region = jnp.broadcast_to((pos >= a) & (pos < a + block_len), (B, T))  # [B, T]
      attn_mask = jnp.broadcast_to(visible_slots(T, W, w, a), (B, 1, W, T + W))
      fed_positions = w + jnp.broadcast_to(jnp.arange(W, dtype=jnp.int32), (B, W))

      def full(x, kv):
        return logits_fn(params, x, kv.truncate(0), positions=positions)  # [B, T, V], refreshed

      def cached(x, kv):
        view = jax.lax.dynamic_slice_in_dim(x, w, W, axis=1)  # [B, W]
        logits = logits_fn(params, view, kv, positions=fed_positions, attn_mask=attn_mask)[0]
        V = logits.shape[-1]
        return jax.lax.dynamic_update_slice(jnp.zeros((B, T, V), logits.dtype), logits,
                                            (0, w, 0)), kv  # the written cache is discarded

      def propose(rng, x, c: _Carry):
        now = (c.calls % refresh == 0) if refresh else (c.calls == 0)
        logits, kv = jax.lax.cond(now, full, cached, x, c.kv)
        x_hat, s = _propose(lambda *_: (logits, None), None, x, rng, 0, T, temperature, top_k,
                            top_p, rule.score)  # [B, T] each, drawn over the full layout
        c = c.replace(kv=kv, calls=c.calls + 1, refreshes=c.refreshes + now,
                      fed=c.fed + jnp.where(now, T, W))
        return x_hat, s, c

      x, n, _, carry = pd.decode_loop(propose, x, jax.random.fold_in(rng, j), region, rule,
                                      rule.max_steps(block_len), mask_id, carry=carry)
      return x, nfe + n, carry.replace(calls=zero)

    x, nfe, carry = jax.lax.fori_loop(j0, j1, block, (x, nfe, carry))
  return CachedDiffusionOutput(tokens=x, nfe=nfe, refreshes=carry.refreshes, fed=carry.fed)
