"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023) as one jitted `lax.while_loop`.

Each round a drafter proposes gamma tokens d_1..d_gamma with proposal distributions q_i, and the
target scores [x_{t-1}, d_1, .., d_gamma] in one cached forward pass, giving p_1..p_{gamma+1}.
Going left to right, d_i is accepted with probability min(1, p_i(d_i) / q_i(d_i)); at the first
rejection i the token is drawn from the residual

    p'_i(x) = max(0, p_i(x) - q_i(x)) / sum_y max(0, p_i(y) - q_i(y))      (Leviathan eq. 1)

and when all gamma are accepted one more token comes from p_{gamma+1}. Every emitted token is
then distributed exactly as the target's p given the tokens before it (Leviathan Thm. 1), so
the output is a sample of plain AR decoding. Temperature, top-k and top-p are applied to p and
q alike (`sample.categorical.full_probs`), so it is the filtered target that is sampled
exactly. Greedy decoding is the limit: q and p are one-hot at their argmax, a draft is kept
iff it is the target's argmax, and the correction is the target's argmax.

A batch advances by m = min over unfinished rows of each row's accepted count n_b; row b emits
its first m drafts and then, at position m, its own correction when n_b = m or its accepted
draft d_{m+1} when n_b > m. Both are draws from p at that position, so truncating at m keeps
the output exact while every row's KV cache stays at one shared length (one scalar index).
Rejected entries are rolled back with `KVCache.truncate`.

Drafters (`ARDrafter`, `BlockDrafter`; any object with `need`, `prefill`, `draft` works):
- an AR model with the same tokenizer: gamma cached single-token calls per round;
- a BD3 block-diffusion model (our masked-diffusion paradigm trained with loss.block_size):
  the gamma draft positions are one noisy block after the target's prefix, denoised in
  `steps` <= gamma parallel calls. Positions are revealed left to right (step s reveals the
  s-th slice of the block), so each d_i is drawn given the prefix and d_{<i} only, which is
  what makes q_i a valid proposal for exact acceptance: a confidence-ordered reveal would draw
  some d_i after (and given) later drafts, and the acceptance test at i would no longer be
  exact. The drafter's prefix is kept in its own KV cache with BD3's block-causal ids.

Returns SpecOutput: tokens [B, P + N] (EOS-padded after each row's first EOS), lengths [B],
target and drafter NFE, rounds, accepted tokens (the batch's m summed over rounds) and the
rows' own accepted counts (sum of n_b, for the per-row acceptance rate alpha).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from sample.categorical import full_probs, sample_probs


def _draw(rng, probs, greedy: bool):
  """One token per row of probs [..., V]: the inverse CDF, or the argmax when greedy."""
  return jnp.argmax(probs, axis=-1).astype(jnp.int32) if greedy else sample_probs(rng, probs)


def _take(probs, x):
  return jnp.take_along_axis(probs, x[..., None], axis=-1)[..., 0]


def accept_and_correct(rng, p, q, d, greedy: bool):
  """The verification rule. p [B, gamma+1, V], q [B, gamma, V] (filtered probabilities),
  d [B, gamma] drafts. Returns (n [B] accepted count per row, y [B, gamma+1] the correction
  token each row would emit at each position: the residual draw at i < gamma, a draw from
  p_{gamma+1} at gamma)."""
  B, G = d.shape
  r_acc, r_fix = jax.random.split(rng)
  if greedy:
    ok = d == jnp.argmax(p[:, :G], axis=-1)
  else:
    u = jax.random.uniform(r_acc, (B, G))
    ok = u * _take(q, d) < _take(p[:, :G], d)  # u < p(d) / q(d), q(d) > 0 as d ~ q
  n = jnp.sum(jnp.cumprod(ok.astype(jnp.int32), axis=1), axis=1)  # leading accepts
  resid = jnp.maximum(p[:, :G] - q, 0.0)  # [B, G, V]
  mass = resid.sum(-1, keepdims=True)
  resid = jnp.where(mass > 0, resid, p[:, :G])  # p == q: any rejection has probability 0
  y = _draw(r_fix, jnp.concatenate([resid, p[:, G:]], axis=1), greedy)  # [B, G + 1]
  return n, y


@struct.dataclass
class SpecState:
  tokens: jax.Array  # [B, P + N + gamma + 1] output buffer
  t: jax.Array  # [] tokens written (every row)
  cache: Any  # target KV cache holding positions [0, t - 1)
  draft_cache: Any  # drafter's cache (its own invariant)
  done: jax.Array  # [B] bool
  rng: jax.Array
  nfe: jax.Array  # [] target calls
  draft_nfe: jax.Array  # [] drafter calls
  rounds: jax.Array  # [] verification rounds
  accepted: jax.Array  # [] sum over rounds of the batch's m
  row_accepted: jax.Array  # [] sum over rounds and unfinished rows of n_b
  row_rounds: jax.Array  # [] sum over rounds of the number of unfinished rows


@struct.dataclass
class SpecOutput:
  tokens: jax.Array  # [B, P + N] int32
  lengths: jax.Array  # [B] int32
  nfe: jax.Array  # [] target calls (prefill included)
  draft_nfe: jax.Array  # [] drafter calls
  rounds: jax.Array
  accepted: jax.Array
  row_accepted: jax.Array
  row_rounds: jax.Array

  @property
  def acceptance_rate(self):
    """alpha: the fraction of drafts accepted by their own row (before the batch's min)."""
    return self.row_accepted / jnp.maximum(self.row_rounds, 1) / self.gamma

  gamma: int = struct.field(pytree_node=False, default=1)


@dataclasses.dataclass(frozen=True)
class ARDrafter:
  """A small AR model with the target's tokenizer. Its cache holds [0, t - 2) before a round;
  the round feeds [x_{t-2}, x_{t-1}] (one of them may already be cached: rewritten, equal), then
  gamma - 1 single drafts, so a fully accepted round needs no extra call."""
  logits_fn: Callable  # paradigms.autoregressive.LogitsFn of the draft model

  def need(self, gamma: int) -> int:
    return 2

  def prepare(self, params, cache):
    if hasattr(self.logits_fn, 'prepare'):
      return self.logits_fn.prepare(params, cache)
    return params, cache

  def prefill(self, params, tokens, cache, gamma: int):
    """Cache the first t0 - 2 of tokens [B, t0]. Returns (cache, calls)."""
    if tokens.shape[1] > 2:
      return self.logits_fn(params, tokens[:, :-2], cache)[1], 1
    return cache, 0

  def draft(self, params, buf, t, cache, rng, gamma: int, filt, greedy: bool):
    """Returns (d [B, gamma], q [B, gamma, V], cache, calls)."""
    cache = cache.truncate(t - 2)
    x2 = jax.lax.dynamic_slice_in_dim(buf, t - 2, 2, axis=1)
    logits, cache = self.logits_fn(params, x2, cache)
    q0 = filt(logits[:, -1].astype(jnp.float32))
    d0 = _draw(jax.random.fold_in(rng, 0), q0, greedy)

    def step(carry, i):
      cache, d = carry
      logits, cache = self.logits_fn(params, d[:, None], cache)
      q = filt(logits[:, 0].astype(jnp.float32))
      d = _draw(jax.random.fold_in(rng, i), q, greedy)
      return (cache, d), (d, q)

    (cache, _), (ds, qs) = jax.lax.scan(step, (cache, d0), jnp.arange(1, gamma))
    d = jnp.concatenate([d0[:, None], jnp.swapaxes(ds, 0, 1)], axis=1)
    q = jnp.concatenate([q0[:, None], jnp.swapaxes(qs, 0, 1)], axis=1)
    return d, q, cache, gamma


@dataclasses.dataclass(frozen=True)
class BlockDrafter:
  """A BD3 model (paradigms.masked_diffusion.LogitsFn, trained with loss.block_size = Bk) that
  drafts the gamma next tokens as one noisy block in `steps` parallel calls (module doc).

  Its cache holds clean tokens with block ids position // Bk. A round truncates it to t - gamma
  - 1 and sends, in one call, the last gamma + 1 clean tokens (every token accepted since the
  last round is among them) followed by gamma masks whose id, (t - 1) // Bk + 1, is above every
  clean id: the clean tokens never see the noisy ones, the noisy block sees the whole prefix
  and itself (BD3's mask). Later steps send the noisy block alone against the cache."""
  logits_fn: Callable  # paradigms.masked_diffusion.LogitsFn of the BD3 model
  mask_id: int
  block_size: int  # the drafter's trained block size Bk
  steps: int = 1

  def need(self, gamma: int) -> int:
    return gamma + 1

  def prepare(self, params, cache):
    return params, cache

  def prefill(self, params, tokens, cache, gamma: int):
    """Cache the first t0 - gamma - 1 of tokens [B, t0] (block ids). Returns (cache, calls)."""
    B, c0 = tokens.shape[0], tokens.shape[1] - gamma - 1
    if c0 <= 0:
      return cache, 0
    pos = jnp.broadcast_to(jnp.arange(c0, dtype=jnp.int32), (B, c0))
    return self.logits_fn(params, tokens[:, :c0], cache, positions=pos, ids=self._ids(pos))[1], 1

  def _ids(self, pos):
    return pos // self.block_size

  def draft(self, params, buf, t, cache, rng, gamma: int, filt, greedy: bool):
    B = buf.shape[0]
    S = min(self.steps, gamma)
    c0 = t - gamma - 1
    cache = cache.truncate(c0)
    clean = jax.lax.dynamic_slice_in_dim(buf, c0, gamma + 1, axis=1)  # [B, gamma + 1]
    cpos = c0 + jnp.arange(gamma + 1, dtype=jnp.int32)
    npos = t + jnp.arange(gamma, dtype=jnp.int32)
    noisy_id = (t - 1) // self.block_size + 1
    pos = jnp.broadcast_to(jnp.concatenate([cpos, npos]), (B, 2 * gamma + 1))
    ids = jnp.concatenate([jnp.broadcast_to(self._ids(cpos), (B, gamma + 1)),
                           jnp.full((B, gamma), noisy_id, jnp.int32)], axis=1)
    reveal = (jnp.arange(gamma) * S) // gamma  # step at which each draft position is drawn
    xb = jnp.full((B, gamma), self.mask_id, jnp.int32)
    logits, cache = self.logits_fn(params, jnp.concatenate([clean, xb], axis=1), cache,
                                   positions=pos, ids=ids)
    cache = cache.truncate(t)  # keep the clean prefix [0, t), drop the noisy block
    q = filt(logits[:, gamma + 1:].astype(jnp.float32))  # [B, gamma, V]
    d = _draw(jax.random.fold_in(rng, 0), q, greedy)
    xb = jnp.where(reveal == 0, d, xb)

    def step(carry, s):
      xb, q = carry
      lg, _ = self.logits_fn(params, xb, cache, positions=pos[:, gamma + 1:],
                             ids=ids[:, gamma + 1:])
      qs = filt(lg.astype(jnp.float32))
      ds = _draw(jax.random.fold_in(rng, s), qs, greedy)
      now = reveal == s
      return (jnp.where(now, ds, xb), jnp.where(now[None, :, None], qs, q)), None

    (xb, q), _ = jax.lax.scan(step, (xb, q), jnp.arange(1, S))
    return xb, q, cache, S


@functools.partial(jax.jit, static_argnames=('logits_fn', 'drafter', 'gamma', 'max_new_tokens',
                                             'temperature', 'top_k', 'top_p', 'greedy', 'eos_id'))
def speculative_generate(logits_fn: Callable, params, drafter, draft_params, prompt, rng, cache,
                         draft_cache, *, gamma: int, max_new_tokens: int,
                         temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                         greedy: bool = False, eos_id: int | None = None) -> SpecOutput:
  """Speculative sampling of `max_new_tokens` after prompt [B, P] (module doc).

  logits_fn/params: the target (AR seam, `paradigms.autoregressive.LogitsFn`); drafter/
  draft_params: an `ARDrafter` or `BlockDrafter` and its weights. cache and draft_cache: empty
  caches with room for P + max_new_tokens + gamma + 1 positions each."""
  B, P = prompt.shape
  N, G = max_new_tokens, gamma
  if G < 1:
    raise ValueError(f'gamma must be >= 1 (draft tokens per round), got {G}')
  if N < 1:
    raise ValueError(f'max_new_tokens must be >= 1, got {N}')
  T = P + N + G + 1
  for name, c in (('cache', cache), ('draft_cache', draft_cache)):
    if c is None or c.ids.shape[-1] < T:
      raise ValueError(f'{name} must be an empty cache with room for P + max_new_tokens + gamma '
                       f'+ 1 = {T} positions')
  filt = functools.partial(full_probs, temperature=temperature, top_k=top_k, top_p=top_p,
                           greedy=greedy)
  if hasattr(logits_fn, 'prepare'):
    params, cache = logits_fn.prepare(params, cache)
  draft_params, draft_cache = drafter.prepare(draft_params, draft_cache)
  prompt = prompt.astype(jnp.int32)
  buf = jnp.concatenate([prompt, jnp.zeros((B, N + G + 1), jnp.int32)], axis=1)  # [B, T]
  eos = -1 if eos_id is None else eos_id

  def plain(buf, t, done, rng, logits):
    """One target-sampled token at t from logits [B, V] (prefill and warm-up)."""
    x = _draw(rng, filt(logits.astype(jnp.float32)), greedy)
    x = jnp.where(done, eos, x) if eos_id is not None else x
    done = done | (x == eos)
    return jax.lax.dynamic_update_slice(buf, x[:, None], (0, t)), done

  # prefill the target and draw x_P; then warm up until the drafter has its context
  rng, r_warm = jax.random.split(rng)
  logits, cache = logits_fn(params, prompt, cache)
  done = jnp.zeros((B,), bool)
  buf, done = plain(buf, P, done, jax.random.fold_in(r_warm, 0), logits[:, -1])
  t0, nfe = P + 1, 1
  for w in range(max(0, drafter.need(G) - t0)):
    x = jax.lax.dynamic_slice_in_dim(buf, t0 - 1, 1, axis=1)
    logits, cache = logits_fn(params, x, cache)
    buf, done = plain(buf, t0, done, jax.random.fold_in(r_warm, 1 + w), logits[:, 0])
    t0, nfe = t0 + 1, nfe + 1
  draft_cache, d_nfe = drafter.prefill(draft_params, buf[:, :t0], draft_cache, G)
  V = logits.shape[-1]

  def draft_filt(lg):  # the drafter's logits on the target's vocabulary (its MASK etc. dropped)
    extra = V - lg.shape[-1]
    if extra < 0:
      lg = lg[..., :V]
    elif extra > 0:
      lg = jnp.concatenate([lg, jnp.full(lg.shape[:-1] + (extra,), -1e9, lg.dtype)], axis=-1)
    return filt(lg)

  z = jnp.zeros((), jnp.int32)
  state = SpecState(tokens=buf, t=jnp.asarray(t0, jnp.int32), cache=cache,
                    draft_cache=draft_cache, done=done, rng=rng, nfe=jnp.asarray(nfe, jnp.int32),
                    draft_nfe=jnp.asarray(d_nfe, jnp.int32), rounds=z, accepted=z,
                    row_accepted=z, row_rounds=z)

  def cond(s: SpecState):
    return (s.t < P + N) & ~jnp.all(s.done)

  def body(s: SpecState) -> SpecState:
    rng, r_draft, r_verify = jax.random.split(s.rng, 3)
    d, q, dcache, calls = drafter.draft(draft_params, s.tokens, s.t, s.draft_cache, r_draft, G,
                                        draft_filt, greedy)
    x_last = jax.lax.dynamic_slice_in_dim(s.tokens, s.t - 1, 1, axis=1)
    logits, cache = logits_fn(params, jnp.concatenate([x_last, d], axis=1), s.cache)
    p = filt(logits.astype(jnp.float32))  # [B, G + 1, V]
    n, y = accept_and_correct(r_verify, p, q, d, greedy)
    live = ~s.done
    m = jnp.min(jnp.where(live, n, G))
    k = jnp.arange(G + 1)
    d_pad = jnp.concatenate([d, jnp.zeros((B, 1), jnp.int32)], axis=1)
    y_m = jnp.take_along_axis(y, jnp.broadcast_to(m, (B, 1)), axis=1)  # [B, 1]
    z_m = jnp.where((n > m)[:, None], jnp.take_along_axis(d_pad, jnp.broadcast_to(m, (B, 1)),
                                                          axis=1), y_m)
    seq = jnp.where(k[None] == m, z_m, d_pad)  # [B, G + 1], valid up to m
    if eos_id is not None:
      is_eos = (seq == eos_id) & (k[None] <= m)
      after = (jnp.cumsum(is_eos, axis=1) - is_eos) > 0
      seq = jnp.where(s.done[:, None] | after, eos_id, seq)
      done = s.done | jnp.any(is_eos, axis=1)
    else:
      done = s.done
    t = s.t + m + 1
    return s.replace(tokens=jax.lax.dynamic_update_slice(s.tokens, seq, (0, s.t)), t=t,
                     cache=cache.truncate(t - 1), draft_cache=dcache, done=done, rng=rng,
                     nfe=s.nfe + 1, draft_nfe=s.draft_nfe + calls, rounds=s.rounds + 1,
                     accepted=s.accepted + m,
                     row_accepted=s.row_accepted + jnp.sum(jnp.where(live, n, 0)),
                     row_rounds=s.row_rounds + jnp.sum(live))

  s = jax.lax.while_loop(cond, body, state)
  L = P + N
  tokens = s.tokens[:, :L]
  if eos_id is None:
    lengths = jnp.full((B,), L, jnp.int32)
  else:
    gen = tokens[:, P:]
    is_eos = gen == eos_id
    first = jnp.where(is_eos.any(axis=1), jnp.argmax(is_eos, axis=1) + 1, N)
    lengths = P + first.astype(jnp.int32)
    tokens = jnp.where(jnp.arange(L) < lengths[:, None], tokens, eos_id)
  return SpecOutput(tokens=tokens, lengths=lengths, nfe=s.nfe, draft_nfe=s.draft_nfe,
                    rounds=s.rounds, accepted=s.accepted, row_accepted=s.row_accepted,
                    row_rounds=s.row_rounds, gamma=G)
