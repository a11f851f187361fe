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
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

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


@functools.partial(jax.jit, static_argnames=('logits_fn', 'max_new_tokens', 'temperature', 'top_k',
                                             'top_p', 'greedy', 'eos_id', 'use_cache'))
def generate(logits_fn: Callable, params, prompt, rng, cache=None, *, max_new_tokens: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
             eos_id: int | None = None, use_cache: bool = True) -> GenerateOutput:
  """Sample `max_new_tokens` continuations of `prompt` [B, P] (all prompts of equal length).

  `cache` is an empty cache with room for P + N positions (e.g. `Transformer.init_cache`),
  required when use_cache=True. Deterministic given `rng`; compiled once per shape/setting
  (`logits_fn` must be hashable by value, e.g. a frozen dataclass holding the module).
  """
  B, P = prompt.shape
  N = max_new_tokens
  if N < 1:
    raise ValueError(f'max_new_tokens must be >= 1, got {N}')
  prompt = prompt.astype(jnp.int32)
  if hasattr(logits_fn, 'prepare'):
    params, cache = logits_fn.prepare(params, cache)
  buf = jnp.concatenate([prompt, jnp.zeros((B, N), jnp.int32)], axis=1)  # [B, P + N]
  if use_cache:
    if cache is None:
      raise ValueError('use_cache=True needs an empty `cache` with room for P + max_new_tokens')
    logits, cache = logits_fn(params, prompt, cache)  # prefill: [B, P, V]
  else:
    logits, _ = logits_fn(params, buf, None)
    cache = None
  state = DecodeState(tokens=buf, cache=cache, next_logits=logits[:, P - 1].astype(jnp.float32),
                      t=jnp.asarray(P, jnp.int32), done=jnp.zeros((B,), bool), rng=rng,
                      nfe=jnp.asarray(1, jnp.int32))

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
      logits, cache = logits_fn(params, x, s.cache)  # [B, 1, V]
      logits = logits[:, 0]
    else:  # recompute everything; the causal mask hides the unwritten tail
      full, cache = logits_fn(params, s.tokens, None)
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
