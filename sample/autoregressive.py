"""Autoregressive decoding: prefill, then a `lax.while_loop` over a preallocated KV cache.

    x_{t+1} ~ Cat(softmax(f_theta(x_{<=t}) / T)) restricted to top-k / nucleus top-p
(ancestral sampling of the chain rule p(x) = prod_t p(x_{t+1} | x_{<=t})). The whole loop is one
jitted program with static shapes: the output buffer is [B, P + N] from the start, and a
sequence that emits EOS is frozen (its later tokens are EOS) while the others go on; the loop
exits early once every sequence is done.

Seam: `logits_fn(params, tokens [B, T], cache) -> (logits [B, T, V], cache)`; a logits_fn may
also offer `prepare(params, cache) -> (params', cache')`, run once before the loop (the token
Transformer's splits its layer stack, so no step copies a layer's weights). With
`use_cache=False` the sampler recomputes the full forward pass over the whole buffer at every
step (cache=None) — the same loop, used by benchmarks to measure what the cache buys.

Serving options (each off by default, each exact):
- `pad` [B]: rows of different prompt lengths, left-padded to one P. Row b's first pad[b]
  slots carry the mask id EMPTY (no query ever sees them) and its positions start at 0 at its
  first real token, so each row decodes exactly as it would alone.
- a `cache` that already holds a prefix (`prefill`): generation continues after it, the
  prompt being the rest. A prefix shared by a batch, or reused across calls, is computed once
  (`prefill` at batch 1, then `broadcast_cache`).
- `prefill_chunk` C > 0: the prompt enters the cache C tokens at a time (a `lax.scan` over
  whole chunks, then the remainder), so prefill activations are bounded by C tokens whatever
  the prompt length; the logits equal a one-chunk prefill's.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from paradigms.nn.attention import EMPTY
from sample.categorical import sample_categorical


@struct.dataclass
class DecodeState:
  tokens: jax.Array  # [B, P + N] int32 output buffer (prompt, then generated tokens)
  cache: Any  # KV cache pytree (None with use_cache=False)
  next_logits: jax.Array  # [B, V] float32 logits for the token at position `t`
  t: jax.Array  # [] int32 index of the next position to write
  done: jax.Array  # [B] bool: sequence has emitted EOS
  rng: jax.Array  # PRNG key
  nfe: jax.Array  # [] int32 network evaluations so far


@struct.dataclass
class GenerateOutput:
  tokens: jax.Array  # [B, P + N] int32
  lengths: jax.Array  # [B] int32 number of valid tokens (prompt + generated, EOS included)
  nfe: jax.Array  # [] int32 calls of logits_fn


def slot_positions(slots, pad, start=0):
  """Positions and mask ids of buffer slots [T] for rows left-padded by pad [B] after `start`
  cached tokens: position = start + slot - pad (>= 0), id = EMPTY on the pad slots. Returns
  (positions, ids) [B, T] int32, or (None, None) without pad (the model's defaults)."""
  if pad is None:
    return None, None
  pos = start + slots[None, :] - pad[:, None].astype(jnp.int32)  # [B, T]
  return jnp.maximum(pos, 0), jnp.where(pos < start, EMPTY, pos)


def _uncached(logits_fn, params, tokens, pad):
  """The cache-free forward over tokens [B, T]; with pad, the pad keys are masked explicitly."""
  if pad is None:
    return logits_fn(params, tokens, None)
  pos, ids = slot_positions(jnp.arange(tokens.shape[1]), pad)
  return logits_fn(params, tokens, None, positions=pos, ids=ids,
                   attn_mask=(ids != EMPTY)[:, None, None, :])


def cache_start(cache) -> jax.Array:
  """Tokens a (stacked or single-layer) KV cache already holds: [] int32 (0 for a cache
  without an index, e.g. a test's stand-in)."""
  index = getattr(cache, 'index', None)
  return jnp.ravel(index)[0] if index is not None else jnp.zeros((), jnp.int32)


def _call(logits_fn, params, x, cache, pos, ids):
  """logits_fn on the three-argument seam, with positions/ids only when there are some."""
  if pos is None:
    return logits_fn(params, x, cache)
  return logits_fn(params, x, cache, positions=pos, ids=ids)


def prefill_tokens(logits_fn: Callable, params, tokens, cache, *, pad=None, chunk: int = 0):
  """Write tokens [B, P] into `cache` after what it holds; return (logits [B, V] float32 at the
  last slot, cache). chunk C > 0 runs a `lax.scan` over the P // C whole chunks, then the
  remainder, so no call sees more than C tokens (same logits as chunk=0, up to float32 sums)."""
  B, P = tokens.shape
  start = cache_start(cache)
  C = chunk if 0 < chunk < P else P

  def call(cache, x, at):  # x [B, c] at slots [at, at + c)
    pos, ids = slot_positions(at + jnp.arange(x.shape[1]), pad, start)
    logits, cache = _call(logits_fn, params, x, cache, pos, ids)
    return cache, logits[:, -1].astype(jnp.float32)

  n = P // C
  def body(cache, i):
    x = jax.lax.dynamic_slice_in_dim(tokens, i * C, C, axis=1)
    return call(cache, x, i * C)
  cache, last = jax.lax.scan(body, cache, jnp.arange(n)) if n > 1 else call(cache, tokens[:, :C], 0)
  last = last[-1] if n > 1 else last
  if n * C < P:
    cache, last = call(cache, tokens[:, n * C:], n * C)
  return last, cache


@functools.partial(jax.jit, static_argnames=('logits_fn', 'chunk'))
def prefill(logits_fn: Callable, params, prefix, cache, *, chunk: int = 0):
  """A prefix cache: `cache` with prefix [B, P0] written (the caller keeps it and passes it,
  or `broadcast_cache` of it, to `generate` as many times as it likes; generation continues
  after the prefix, so the prompt given to `generate` is the rest, at least one token)."""
  if hasattr(logits_fn, 'prepare'):
    params, cache = logits_fn.prepare(params, cache)
  return prefill_tokens(logits_fn, params, prefix.astype(jnp.int32), cache, chunk=chunk)[1]


def broadcast_cache(cache, batch: int):
  """A batch-1 cache repeated to `batch` rows (the shared prefix of a batch: computed once).
  The batch axis of every field follows the index's axes (none, or [n_layers] when stacked)."""
  axis = cache.index.ndim
  index = cache.index
  return jax.tree.map(lambda a: jnp.repeat(a, batch, axis=axis), cache.replace(index=None)
                      ).replace(index=index)


@functools.partial(jax.jit, static_argnames=('logits_fn', 'max_new_tokens', 'temperature', 'top_k',
                                             'top_p', 'greedy', 'eos_id', 'use_cache',
                                             'prefill_chunk'))
def generate(logits_fn: Callable, params, prompt, rng, cache=None, *, max_new_tokens: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
             eos_id: int | None = None, use_cache: bool = True, pad=None,
             prefill_chunk: int = 0) -> GenerateOutput:
  """Sample `max_new_tokens` continuations of `prompt` [B, P] (rows of equal length, or
  left-padded with `pad` [B] int32 pad slots per row: module doc).

  `cache` has room for P + N more positions (e.g. `Transformer.init_cache`), required when
  use_cache=True; it may already hold a prefix (`prefill`). `prefill_chunk` bounds the prefill
  (module doc). Deterministic given `rng`; compiled once per shape/setting (`logits_fn` must
  be hashable by value, e.g. a frozen dataclass holding the module).
  """
  B, P = prompt.shape
  N = max_new_tokens
  if N < 1:
    raise ValueError(f'max_new_tokens must be >= 1, got {N}')
  if prefill_chunk < 0:
    raise ValueError(f'prefill_chunk must be >= 0 (0 = the whole prompt at once), got {prefill_chunk}')
  prompt = prompt.astype(jnp.int32)
  if hasattr(logits_fn, 'prepare'):
    params, cache = logits_fn.prepare(params, cache)
  buf = jnp.concatenate([prompt, jnp.zeros((B, N), jnp.int32)], axis=1)  # [B, P + N]
  start = cache_start(cache if use_cache else None)
  if use_cache:
    if cache is None:
      raise ValueError('use_cache=True needs an empty `cache` with room for P + max_new_tokens')
    last, cache = prefill_tokens(logits_fn, params, prompt, cache, pad=pad, chunk=prefill_chunk)
  else:
    logits, _ = _uncached(logits_fn, params, buf, pad)
    last, cache = logits[:, P - 1].astype(jnp.float32), None
  state = DecodeState(tokens=buf, cache=cache, next_logits=last,
                      t=jnp.asarray(P, jnp.int32), done=jnp.zeros((B,), bool), rng=rng,
                      nfe=jnp.asarray(-(-P // (prefill_chunk or P)) if use_cache else 1, jnp.int32))

  def emit(s: DecodeState) -> DecodeState:
    """Sample the token at position t from next_logits and write it."""
    rng = s.rng
    if greedy:  # no draw: the key is not split (a threefry hash per step costs ~10 us on a CPU)
      x = jnp.argmax(s.next_logits, axis=-1).astype(jnp.int32)  # [B]
    else:
      rng, step_rng = jax.random.split(s.rng)
      x = sample_categorical(step_rng, s.next_logits, temperature, top_k, top_p)  # [B]
    done = s.done
    if eos_id is not None:
      x = jnp.where(done, eos_id, x)
      done = done | (x == eos_id)
    tokens = jax.lax.dynamic_update_slice(s.tokens, x[:, None], (0, s.t))
    return s.replace(tokens=tokens, done=done, rng=rng, t=s.t + 1)

  def cond(s: DecodeState):  # the last token needs no forward pass after it
    return (s.t < P + N - 1) & ~jnp.all(s.done)

  def body(s: DecodeState):
    s = emit(s)
    if use_cache:
      x = jax.lax.dynamic_slice_in_dim(s.tokens, s.t - 1, 1, axis=1)  # [B, 1]
      pos, ids = slot_positions(s.t - 1 + jnp.arange(1), pad, start)
      logits, cache = _call(logits_fn, params, x, s.cache, pos, ids)  # [B, 1, V]
      logits = logits[:, 0]
    else:  # recompute everything; the causal mask hides the unwritten tail
      full, cache = _uncached(logits_fn, params, s.tokens, pad)
      logits = jax.lax.dynamic_index_in_dim(full, s.t - 1, axis=1, keepdims=False)
    return s.replace(cache=cache, next_logits=logits.astype(jnp.float32), nfe=s.nfe + 1)

  s = emit(jax.lax.while_loop(cond, body, state))
  if eos_id is None:
    lengths = jnp.full((B,), s.t, jnp.int32)
  else:  # position of the first EOS after the prompt (inclusive), else everything written
    gen = s.tokens[:, P:]
    is_eos = (gen == eos_id) & (jnp.arange(N) < s.t - P)
    first = jnp.where(is_eos.any(axis=1), jnp.argmax(is_eos, axis=1) + 1, s.t - P)
    lengths = P + first.astype(jnp.int32)
  tokens = jnp.where(jnp.arange(P + N) < lengths[:, None], s.tokens,
                     eos_id if eos_id is not None else 0)
  return GenerateOutput(tokens=tokens, lengths=lengths, nfe=s.nfe)
