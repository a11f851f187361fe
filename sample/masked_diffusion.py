"""Samplers for masked (absorbing-state) diffusion LMs: MDLM/MD4, ReMDM, LLaDA, Fast-dLLM, BD3-LM.

Every sampler starts from `x` [B, L], which holds the given tokens and `mask_id` at the
positions to generate, so prompting, infilling (a fixed prefix and suffix) or any other pattern
is just the initial `x`. Given tokens are never changed (SUBS carry-over, MDLM Sec. 3.2), and
ReMDM never remasks them. Each sampler is one jitted free function whose whole loop runs as
`lax` loops with static shapes; it is deterministic given `rng` and counts network calls (NFE).

Seam: `logits_fn(params, tokens [B, T], cache, positions=None, ids=None) -> (logits [B, T, V],
cache)` with the mask token's logit already at -1e6 (SUBS), so p_theta = softmax(logits /
temperature) never proposes the mask. MDLM-style samplers pass cache=None. `logits_fn` is a
static argument (hashable by value, e.g. `paradigms.masked_diffusion.LogitsFn`).

Sampling goes through `sample.categorical` (inverse CDF, never float32 Gumbel-max, which lowers
the effective temperature; Zheng et al. 2024). temperature=0 means greedy (argmax) proposals.

| sampler | algorithm | NFE |
|---|---|---|
| `ancestral` | MDLM / MD4 reverse process t -> s, `cache_p` = MDLM's ddpm_cache | <= steps |
| `remdm` | ReMDM-cap (Wang et al. 2025): ancestral + remasking of decoded tokens | steps |
| `confidence_topk` | MaskGIT / LLaDA low-confidence remasking, k_i per step | <= steps |
| `confidence_threshold` | Fast-dLLM parallel decoding: every confidence >= tau | steps run |
| `parallel_decode` | any commit rule of `sample.parallel_decoding` (top-k, threshold, Fast-dLLM factor, EB-sampler) over the whole region | steps run |
| `semi_autoregressive` | LLaDA semi-AR blocks, any of those rules inside each block | sum of blocks |
| `block_diffusion` | BD3-LM block-by-block with a KV cache of finished blocks | 1 + N (S + 1) |
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from paradigms import masked_diffusion as md
from sample import parallel_decoding as pd
from sample.categorical import sample_categorical


@struct.dataclass
class MaskState:
  """Loop state shared by the samplers."""
  x: jax.Array  # [B, L] int32 current sequence, mask_id where still masked
  nfe: jax.Array  # [] int32 calls of logits_fn so far
  logits: jax.Array | None = None  # [B, L, V] float32 last p_theta logits (ancestral, cache_p)
  stale: jax.Array | None = None  # [] bool: x changed since `logits` was computed
  cache: Any = None  # KV cache pytree of the finished blocks (block_diffusion)


@struct.dataclass
class DiffusionOutput:
  tokens: jax.Array  # [B, L] int32, no mask left
  nfe: jax.Array  # [] int32 calls of logits_fn
  history: jax.Array | None = None  # [S, B] int32 masks left in each row after each step


# --- Shared pieces -----------------------------------------------------------------------------

def _check(temperature: float, top_k: int, top_p: float, **positive):
  if temperature < 0:
    raise ValueError(f'temperature must be >= 0 (0 = greedy), got {temperature}')
  if top_k < 0 or not 0 < top_p <= 1:
    raise ValueError(f'top_k must be >= 0 and top_p in (0, 1], got top_k={top_k}, top_p={top_p}')
  for name, value in positive.items():
    if value is not None and value < 1:
      raise ValueError(f'{name} must be >= 1, got {value}')


def _draw(rng, logits, temperature, top_k, top_p):
  """x0 ~ p_theta per position (inverse CDF): [B, L, V] -> [B, L]; temperature 0 = argmax."""
  return sample_categorical(rng, logits, temperature or 1.0, top_k, top_p, greedy=temperature == 0)


def _masks_left(x, mask_id):
  return jnp.sum(x == mask_id, axis=1).astype(jnp.int32)  # [B]


def _reverse_step(rng, x, logits, p_unmask, sigma, final, given, *, mask_id, temperature, top_k,
                  top_p, final_argmax):
  """One reverse step t -> s of the absorbing process (MDLM posterior with SUBS; ReMDM q_sigma).

  A masked position becomes x0 ~ p_theta with probability p_unmask (every one when `final`);
  a decoded, not given, position is remasked with probability sigma (ReMDM; 0 for MDLM).
  x: [B, L] int32; logits: [B, L, V]; given: [B, L] bool. Returns x_s [B, L].
  """
  draw_rng, u_rng = jax.random.split(rng)
  x0 = _draw(draw_rng, logits, temperature, top_k, top_p)  # [B, L]
  if final_argmax:
    x0 = jnp.where(final, jnp.argmax(logits, axis=-1).astype(jnp.int32), x0)
  u = jax.random.uniform(u_rng, x.shape)  # [B, L], one draw: the two events are disjoint
  masked = x == mask_id
  x_s = jnp.where(masked & ((u < p_unmask) | final), x0, x)
  return jnp.where(~masked & ~given & (u < sigma), mask_id, x_s)


def _times(k, steps: int, schedule: str):
  """Step k = 0..steps-1 goes t_i -> s = t_i - 1/steps with t_i = i / steps, i = steps - k."""
  alpha = md.schedule(schedule)
  i = steps - k
  a_t, _ = alpha(i / steps)
  a_s, _ = alpha((i - 1) / steps)
  return a_t, a_s, i == 1


def _propose(logits_fn, params, x, rng, off, W: int, temperature, top_k, top_p,
             score: str = 'max'):
  """x_hat ~ p_theta and its score at every position the network sees.

  The network sees the window x[:, off:off + W] (W = L: everything). The score is
  `pd.score(logits, x_hat, score)`, from the untempered softmax: 'max' (default) the
  confidence max_v p(v); 'sampled' the probability of the proposal, p(x_hat) (LLaDA /
  Fast-dLLM code at temperature > 0); 'entropy' -H (EB-sampler). Outside the window: -inf.
  Returns ([B, L] int32, [B, L]).
  """
  B, L = x.shape
  view = jax.lax.dynamic_slice_in_dim(x, off, W, axis=1)  # [B, W]
  logits = logits_fn(params, view, None)[0].astype(jnp.float32)  # [B, W, V]
  x_hat = _draw(rng, logits, temperature, top_k, top_p)  # [B, W]
  c = pd.score(logits, x_hat, score)  # [B, W]
  if W < L:
    x_hat = jax.lax.dynamic_update_slice(jnp.zeros((B, L), jnp.int32), x_hat, (0, off))
    c = jax.lax.dynamic_update_slice(jnp.full((B, L), -jnp.inf, c.dtype), c, (0, off))
  return x_hat, c


def _topk_loop(propose, x, rng, region, steps: int, mask_id: int):
  """LLaDA low-confidence remasking over the masked positions inside `region` [B, L] bool:
  `pd.decode_loop` with `pd.TopK(steps)`. With M masked positions in a row, step i commits the
  k_i = M // steps + (i < M % steps) most confident proposals (LLaDA's
  get_num_transfer_tokens); the loop stops once the region is full (no NFE for empty steps).
  Returns (x [B, L], nfe [], history [steps, B])."""
  return pd.decode_loop(propose, x, rng, region, pd.TopK(steps), steps, mask_id)


def _threshold_loop(propose, x, rng, region, max_steps: int, tau: float, mask_id: int):
  """Fast-dLLM parallel decoding over the masked positions inside `region` [B, L] bool:
  `pd.decode_loop` with `pd.Threshold(tau)`. Each step commits every proposal with confidence
  >= tau, and always the most confident one, so it ends after at most max(M) steps; at step
  `max_steps` whatever is left is committed. Returns (x [B, L], nfe [], history [max_steps, B])."""
  return pd.decode_loop(propose, x, rng, region, pd.Threshold(tau), max_steps, mask_id)


# --- Samplers ----------------------------------------------------------------------------------

_COMMON = ('logits_fn', 'mask_id', 'temperature', 'top_k', 'top_p')


@functools.partial(jax.jit, static_argnames=_COMMON + ('steps', 'schedule', 'cache_p',
                                                       'final_argmax'))
def ancestral(logits_fn: Callable, params, x, rng, *, mask_id: int, steps: int,
              temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
              schedule: str = 'loglinear', cache_p: bool = True,
              final_argmax: bool = True) -> DiffusionOutput:
  """Ancestral sampling of the reverse process (MDLM, Sahoo et al. 2024: the SUBS reverse
  posterior, `_ddpm_update`; MD4, Shi et al. 2024, discrete-time ancestral sampler).

  With t_i = i / steps, step i goes t -> s = t - 1/steps: a masked position becomes v with
  probability (alpha_s - alpha_t)/(1 - alpha_t) p_theta(v) and stays masked with probability
  (1 - alpha_s)/(1 - alpha_t); unmasked positions are copied. We draw a candidate x0 ~ p_theta
  per masked position and unmask it with probability (alpha_s - alpha_t)/(1 - alpha_t).
  The last step (s = 0) fills every remaining mask: by argmax (final_argmax=True, the default,
  MDLM's final noise removal) or by the sampled candidate (final_argmax=False: the exact
  reverse process, whose samples follow p_theta; use it to measure sample entropy).

  cache_p=True reuses p_theta when no token changed in the previous step (MDLM's ddpm_cache):
  the network is skipped with `lax.cond` and no NFE is counted. This is exact only because the
  network does not read t; do not use it with a time-conditioned model.

  x: [B, L] int32, given tokens and mask_id. Returns DiffusionOutput (history: masks left).
  """
  _check(temperature, top_k, top_p, steps=steps)
  x = x.astype(jnp.int32)
  given = x != mask_id
  net = lambda x: logits_fn(params, x, None)[0].astype(jnp.float32)  # [B, L, V]
  kw = dict(mask_id=mask_id, temperature=temperature, top_k=top_k, top_p=top_p,
            final_argmax=final_argmax)

  def step(s: MaskState, k):
    a_t, a_s, final = _times(k, steps, schedule)
    if cache_p:
      logits = jax.lax.cond(s.stale, lambda: net(s.x), lambda: s.logits)
      nfe = s.nfe + s.stale.astype(jnp.int32)
    else:
      logits, nfe = net(s.x), s.nfe + 1
    p_unmask = (a_s - a_t) / (1.0 - a_t)
    x = _reverse_step(jax.random.fold_in(rng, k), s.x, logits, p_unmask, 0.0, final, given, **kw)
    if cache_p:
      s = s.replace(logits=logits, stale=jnp.any(x != s.x))
    return s.replace(x=x, nfe=nfe), _masks_left(x, mask_id)

  s = MaskState(x=x, nfe=jnp.zeros((), jnp.int32))
  if cache_p:
    shape = jax.eval_shape(net, x).shape
    s = s.replace(logits=jnp.zeros(shape, jnp.float32), stale=jnp.asarray(True))
  s, history = jax.lax.scan(step, s, jnp.arange(steps))
  return DiffusionOutput(tokens=s.x, nfe=s.nfe, history=history)


@functools.partial(jax.jit, static_argnames=_COMMON + ('steps', 'eta', 'schedule',
                                                       'final_argmax'))
def remdm(logits_fn: Callable, params, x, rng, *, mask_id: int, steps: int, eta: float = 0.5,
          temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
          schedule: str = 'loglinear', final_argmax: bool = True) -> DiffusionOutput:
  """ReMDM-cap (Wang et al. 2025, "Remasking discrete diffusion models": q_sigma).

  sigma_t = eta * min(1, (1 - alpha_s)/alpha_t). Step t -> s (t_i = i / steps):
  - a decoded position (generated here, not given) is remasked with probability sigma_t;
  - a masked position becomes v with probability (alpha_s - (1 - sigma_t) alpha_t)/(1 - alpha_t)
    p_theta(v) and stays masked with probability (1 - alpha_s - sigma_t alpha_t)/(1 - alpha_t).
  eta = 0 is `ancestral` without cache. Given tokens are never remasked. The last step does not
  remask and fills every remaining mask (argmax by default, as in `ancestral`). NFE = steps.
  """
  _check(temperature, top_k, top_p, steps=steps)
  if not 0 <= eta <= 1:
    raise ValueError(f'eta must be in [0, 1] (sigma_t = eta * sigma_max), got {eta}')
  x = x.astype(jnp.int32)
  given = x != mask_id
  kw = dict(mask_id=mask_id, temperature=temperature, top_k=top_k, top_p=top_p,
            final_argmax=final_argmax)

  def step(x, k):
    a_t, a_s, final = _times(k, steps, schedule)
    sigma = jnp.where(final, 0.0, eta * jnp.minimum(1.0, (1.0 - a_s) / a_t))
    p_unmask = (a_s - (1.0 - sigma) * a_t) / (1.0 - a_t)
    logits = logits_fn(params, x, None)[0].astype(jnp.float32)  # [B, L, V]
    x = _reverse_step(jax.random.fold_in(rng, k), x, logits, p_unmask, sigma, final, given, **kw)
    return x, _masks_left(x, mask_id)

  x, history = jax.lax.scan(step, x, jnp.arange(steps))
  return DiffusionOutput(tokens=x, nfe=jnp.asarray(steps, jnp.int32), history=history)


def _decode_whole(logits_fn, params, x, rng, rule, max_steps, mask_id, temperature, top_k, top_p):
  """`pd.decode_loop` over every masked position of x [B, L], the network seeing all of x."""
  x = x.astype(jnp.int32)
  L = x.shape[1]
  propose = lambda rng, x: _propose(logits_fn, params, x, rng, 0, L, temperature, top_k, top_p,
                                    rule.score)
  x, nfe, history = pd.decode_loop(propose, x, rng, jnp.ones(x.shape, bool), rule,
                                   min(max_steps, rule.max_steps(L)), mask_id)
  return DiffusionOutput(tokens=x, nfe=nfe, history=history)


@functools.partial(jax.jit, static_argnames=_COMMON + ('steps', 'confidence'))
def confidence_topk(logits_fn: Callable, params, x, rng, *, mask_id: int, steps: int,
                    confidence: str = 'max', temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0) -> DiffusionOutput:
  """MaskGIT (Chang et al. 2022) / LLaDA (Nie et al. 2025) low-confidence remasking.

  Each step proposes x_hat ~ p_theta (argmax when temperature == 0) at every masked position,
  with confidence c (`confidence`: 'max' = max_v p(v), the paper's; 'sampled' = p(x_hat), the
  reference code's at temperature > 0; `sample.parallel_decoding` doc), and commits the k_i
  most confident, where a row's M masked positions are spread as evenly as possible:
  k_i = M // steps + (i < M % steps) (LLaDA's get_num_transfer_tokens; M is per row, so
  infill patterns may differ). After
  `steps` steps no mask is left; with steps > M the surplus steps are not run (no NFE).
  history [steps, B] is the number of masks left after each step.

  With confidence='sampled' and temperature > 0 it does not sample p_theta even for a
  context-free model unless steps == 1: the committed token of a step is the most probable
  draw among all masked positions, so frequent tokens win, and on a weak model the text
  collapses to spaces. With 'max' the order depends on x only and each committed token is an
  exact draw of p_theta(. | x).
  """
  _check(temperature, top_k, top_p, steps=steps)
  return _decode_whole(logits_fn, params, x, rng, pd.make_rule('topk', steps=steps,
                       confidence=confidence), steps, mask_id, temperature, top_k, top_p)


@functools.partial(jax.jit, static_argnames=_COMMON + ('tau', 'max_steps', 'confidence'))
def confidence_threshold(logits_fn: Callable, params, x, rng, *, mask_id: int, tau: float = 0.9,
                         max_steps: int | None = None, confidence: str = 'max',
                         temperature: float = 1.0, top_k: int = 0,
                         top_p: float = 1.0) -> DiffusionOutput:
  """Fast-dLLM confidence-aware parallel decoding (Wu et al. 2025), threshold rule.

  Each step commits every masked position whose confidence c >= tau (c as in `confidence_topk`), and
  always the single most confident masked position of each row, inside a `lax.while_loop` that
  stops when no mask is left (at most L steps). NFE = steps actually run. With max_steps < L
  the last allowed step commits every remaining proposal. history [max_steps, B] (default
  max_steps = L): masks left after each step. Fast-dLLM runs it inside semi-AR blocks of 32
  (`semi_autoregressive(strategy='threshold')`).
  """
  _check(temperature, top_k, top_p, max_steps=max_steps)
  rule = pd.make_rule('threshold', tau=tau, confidence=confidence)
  return _decode_whole(logits_fn, params, x, rng, rule, max_steps or x.shape[1], mask_id,
                       temperature, top_k, top_p)


@functools.partial(jax.jit, static_argnames=_COMMON + ('strategy', 'steps', 'tau', 'factor',
                                                       'gamma', 'max_steps', 'confidence'))
def parallel_decode(logits_fn: Callable, params, x, rng, *, mask_id: int, strategy: str,
                    steps: int | None = None, tau: float = 0.9, factor: float = 1.0,
                    gamma: float = 0.1, max_steps: int | None = None, confidence: str = 'max',
                    temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0) -> DiffusionOutput:
  """Every masked position of x [B, L] decoded by one commit rule of `sample.parallel_decoding`:
  'topk' (`steps`, = `confidence_topk`), 'threshold' (`tau`, = `confidence_threshold`),
  'factor' (Fast-dLLM's factor rule: commit the largest n with (n + 1)(1 - c_(n)) < `factor`)
  or 'eb' (EB-sampler, Ben-Hamu et al. 2025: by increasing entropy, the largest prefix with
  sum H - max H <= `gamma` nats). The first three rank by `confidence` ('max' | 'sampled').
  At least one token per step; the step `max_steps` (default: `steps` for topk, else L)
  commits the rest. Returns DiffusionOutput (history [max_steps, B]).
  """
  _check(temperature, top_k, top_p, steps=steps, max_steps=max_steps)
  rule = pd.make_rule(strategy, steps=steps, tau=tau, factor=factor, gamma=gamma,
                      confidence=confidence)
  L = x.shape[1]
  return _decode_whole(logits_fn, params, x, rng, rule, max_steps or L, mask_id, temperature,
                       top_k, top_p)


@functools.partial(jax.jit, static_argnames=_COMMON + ('block_len', 'strategy', 'steps_per_block',
                                                       'tau', 'factor', 'gamma', 'window',
                                                       'confidence'))
def semi_autoregressive(logits_fn: Callable, params, x, rng, *, mask_id: int, block_len: int,
                        strategy: str = 'topk', steps_per_block: int | None = None,
                        tau: float = 0.9, factor: float = 1.0, gamma: float = 0.1,
                        window: int | None = None, confidence: str = 'max',
                        temperature: float = 1.0, top_k: int = 0,
                        top_p: float = 1.0) -> DiffusionOutput:
  """LLaDA semi-autoregressive remasking (Nie et al. 2025, low-confidence remasking in blocks).

  The generated region [start, L), start = the first position masked in any row, is cut into
  blocks of `block_len`, decoded left to right in one `lax.fori_loop`. Inside block j only its
  masked positions may be committed, by the commit rule `strategy` (`sample.parallel_decoding`):
  - 'topk': `steps_per_block` low-confidence-remasking steps (`confidence_topk`), k_i spread
    over the row's masks in that block;
  - 'threshold': Fast-dLLM's rule (`confidence_threshold`, tau) until the block is full;
  - 'factor': Fast-dLLM's factor rule, (n + 1)(1 - c_(n)) < factor, until the block is full;
  - 'eb': EB-sampler's entropy bound, sum H - max H <= gamma (nats), until the block is full.
  The confidence rules rank by `confidence` ('max' | 'sampled', as in `confidence_topk`).
  Later blocks stay masked but visible to the network. A block with nothing to fill costs no NFE.

  window: outputs longer than the model's context. When given and L > window, block j is
  decoded with the network seeing only the `window` tokens ending at the block's end,
  x[:, e - window:e] with e = min(block end, L) (clipped to start at 0), a dynamic_slice of
  static size `window`; needs block_len <= window. Positions inside the window restart at 0.
  """
  _check(temperature, top_k, top_p, block_len=block_len, steps_per_block=steps_per_block)
  rule = pd.make_rule(strategy, steps=steps_per_block, tau=tau, factor=factor, gamma=gamma,
                      confidence=confidence)
  x = x.astype(jnp.int32)
  B, L = x.shape
  W = L if window is None else min(window, L)
  if block_len > W:
    raise ValueError(f'block_len={block_len} must be <= window={window}')
  pos = jnp.arange(L)
  start = jnp.min(jnp.where(x == mask_id, pos[None], L))  # [] first masked position

  def block(j, s: MaskState) -> MaskState:
    lo = start + j * block_len
    region = jnp.broadcast_to((pos >= lo) & (pos < lo + block_len), (B, L))  # [B, L]
    off = jnp.clip(jnp.minimum(lo + block_len, L) - W, 0, L - W)
    propose = lambda rng, x: _propose(logits_fn, params, x, rng, off, W, temperature, top_k, top_p,
                                      rule.score)
    x, nfe, _ = pd.decode_loop(propose, s.x, jax.random.fold_in(rng, j), region, rule,
                               rule.max_steps(block_len), mask_id)
    return s.replace(x=x, nfe=s.nfe + nfe)

  n_blocks = -(-L // block_len)  # enough for start = 0; blocks past L are empty and free
  s = jax.lax.fori_loop(0, n_blocks, block, MaskState(x=x, nfe=jnp.zeros((), jnp.int32)))
  return DiffusionOutput(tokens=s.x, nfe=s.nfe)


@functools.partial(jax.jit, static_argnames=_COMMON + ('block_size', 'num_blocks',
                                                       'steps_per_block', 'use_cache', 'schedule',
                                                       'final_argmax'))
def block_diffusion(logits_fn: Callable, params, prompt, rng, cache=None, *, mask_id: int,
                    block_size: int, num_blocks: int, steps_per_block: int,
                    use_cache: bool = True, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0, schedule: str = 'loglinear',
                    final_argmax: bool = True) -> DiffusionOutput:
  """BD3-LM decoding (Arriola et al. 2025, block-wise sampling): blocks left to right, each by
  `steps_per_block` ancestral steps (as `ancestral`, without cache_p) from all-mask.

  Positions are absolute (prompt [B, P], then num_blocks blocks: T = P + num_blocks *
  block_size) and position p has block id p // block_size (needs P % block_size == 0); the
  network runs with the block-causal mask over these ids, which is the BD3 mask at decode time.
  - use_cache=True: `cache` is empty with room for T (`Transformer.init_cache(B, T)`). The
    prompt is prefilled; each denoising call reads the cache and the noisy block, and the cache
    it returns is discarded (the noisy block must not enter it); the finished block is then
    committed by one more call whose cache is kept. NFE = [P > 0] + num_blocks (S + 1).
  - use_cache=False: each call runs the network over the whole buffer [B, T] and takes the
    current block's logits. Later (still masked) blocks have larger ids, and a key is visible
    only to queries with an id >= its own, so the current block never sees them: the logits
    are those of the cached path. NFE = num_blocks S. Both modes give the same tokens for the
    same rng.
  Returns DiffusionOutput with tokens [B, T] (the prompt, then the blocks).
  """
  _check(temperature, top_k, top_p, block_size=block_size, num_blocks=num_blocks,
         steps_per_block=steps_per_block)
  B, P = prompt.shape
  Bk, N, S = block_size, num_blocks, steps_per_block
  if P % Bk:
    raise ValueError(f'prompt length {P} must be a multiple of block_size={Bk}; left-pad it')
  T = P + N * Bk
  if use_cache:
    if cache is None:
      raise ValueError(f'use_cache=True needs an empty `cache` with room for {T} positions '
                       f'(Transformer.init_cache(B, {T})), or use_cache=False')
    if hasattr(cache, 'ids') and cache.ids.shape[-1] < T:
      raise ValueError(f'the cache holds {cache.ids.shape[-1]} positions; it needs {T}')
  else:
    cache = None
  prompt = prompt.astype(jnp.int32)
  pos_all = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))  # [B, T]
  ids_all = pos_all // Bk  # [B, T] block ids
  buf = jnp.concatenate([prompt, jnp.full((B, N * Bk), mask_id, jnp.int32)], axis=1)  # [B, T]
  nfe = jnp.zeros((), jnp.int32)
  if use_cache and P:
    _, cache = logits_fn(params, prompt, cache, positions=pos_all[:, :P], ids=ids_all[:, :P])
    nfe = nfe + 1
  kw = dict(mask_id=mask_id, temperature=temperature, top_k=top_k, top_p=top_p,
            final_argmax=final_argmax)
  no_given = jnp.zeros((B, Bk), bool)

  def block(j, s: MaskState) -> MaskState:
    at = P + j * Bk
    positions = at + jnp.broadcast_to(jnp.arange(Bk, dtype=jnp.int32), (B, Bk))  # [B, Bk]
    ids = positions // Bk

    def net(xb):  # xb: [B, Bk] -> logits [B, Bk, V]
      if use_cache:
        return logits_fn(params, xb, s.cache, positions=positions, ids=ids)[0]  # cache discarded
      full = jax.lax.dynamic_update_slice(s.x, xb, (0, at))  # [B, T]
      logits = logits_fn(params, full, None, positions=pos_all, ids=ids_all)[0]  # [B, T, V]
      return jax.lax.dynamic_slice_in_dim(logits, at, Bk, axis=1)

    def step(k, xb):
      a_t, a_s, final = _times(k, S, schedule)
      p_unmask = (a_s - a_t) / (1.0 - a_t)
      logits = net(xb).astype(jnp.float32)
      rng_k = jax.random.fold_in(jax.random.fold_in(rng, j), k)
      return _reverse_step(rng_k, xb, logits, p_unmask, 0.0, final, no_given, **kw)

    xb = jax.lax.fori_loop(0, S, step, jnp.full((B, Bk), mask_id, jnp.int32))  # [B, Bk]
    s = s.replace(x=jax.lax.dynamic_update_slice(s.x, xb, (0, at)), nfe=s.nfe + S)
    if use_cache:  # commit the clean block to the cache
      _, cache = logits_fn(params, xb, s.cache, positions=positions, ids=ids)
      s = s.replace(cache=cache, nfe=s.nfe + 1)
    return s

  s = jax.lax.fori_loop(0, N, block, MaskState(x=buf, nfe=nfe, cache=cache))
  return DiffusionOutput(tokens=s.x, nfe=s.nfe)
