"""SEDD samplers (Lou et al. 2024, sec. 4): Euler steps of the reverse rate and Tweedie
tau-leaping, from the limit (uniform noise or all masks) at t = 1 down to t = eps.

The reverse process jumps x -> y (y != x) at rate sigma'(t) w(x, y) s_theta(x, t)_y (w: the
forward chain's rate, `paradigms.sedd.jump_rates`; s = exp of the network's log score), so with
rate matrix R(x)_y = w(x, y) s_y off the diagonal and R(x)_x = -sum_{y != x} R(x)_y (each row
sums to zero: `reverse_rate`):
  euler    x_{t - dt} ~ Cat(onehot(x) + dt sigma'(t) R(x))  (clipped at 0, renormalised)
  tweedie  x_s ~ Cat( [exp(-ds Q) s](y) exp(ds Q)(x, y) ), ds = sigmabar(t) - sigmabar(s): the
           "staggered" score times the transition (SEDD eq. 19, Tweedie tau-leaping); exact for a
           single position given the exact score.
Both finish with one Tweedie step from eps to 0 (the absorbing chain then may not keep a mask),
so NFE = steps + 1. A Tweedie step amplifies the score's deviations by e^ds: from the uniform
chain's sigma_max = 20, where the true ratios differ from 1 by ~e^-20, far below float32's
resolution, a few large steps cannot recover p_s; use tens of steps there (the tests: 4 steps
suffice for the absorbing chain, 32 for the uniform one). Every position updates independently given x_t (tau-leaping). A prompt is
held fixed: its positions are reset after every step and never sampled.

    config, model, params = load_run('runs/sedd_code')
    fn = sedd.LogScoreFn(model, Options(**config.loss))
    out = sedd.sample(fn, params, prompt, jax.random.key(0), length=256, steps=64)
    out.tokens  # [B, length], prompt first
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import struct

from paradigms import sedd
from paradigms.nn.transformer import Transformer
from sample.categorical import sample_probs

METHODS = ('euler', 'tweedie')


@dataclasses.dataclass(frozen=True)
class LogScoreFn:
  """The sampler's seam: (params, x [B, L], t [B], sigma [B]) -> log scores [B, L, N]."""
  model: Transformer
  opt: sedd.Options

  def __call__(self, params, x, t, sigma):
    return sedd.log_score(self.model, params, x, t, sigma, self.opt)


@struct.dataclass
class SEDDOutput:
  tokens: jax.Array  # [B, L] int32
  nfe: jax.Array  # [] int32 network passes


def reverse_rate(opt: sedd.Options, x, score):
  """R(x): x int [...], score [..., N] (exp of the log score) -> [..., N], rows summing to 0."""
  off = sedd.jump_rates(opt, x) * score
  return off - jax.nn.one_hot(x, opt.num_states) * off.sum(-1, keepdims=True)


def staggered_score(opt: sedd.Options, score, ds):
  """[exp(-ds Q) s]: score [..., N], ds [...] -> [..., N] (SEDD eq. 19's first factor)."""
  N = opt.num_states
  e = jnp.exp(ds)[..., None]
  if opt.graph == 'uniform':  # exp(-ds Q) = e^ds I + (1 - e^ds)/N 1 1^T, as e^ds (s - mean) + mean
    mean = score.mean(-1, keepdims=True)
    return e * (score - mean) + mean
  total = score.sum(-1, keepdims=True)
  return e * score + (1.0 - e) * total * jax.nn.one_hot(opt.mask_id, N)


def transp_transition(opt: sedd.Options, x, ds):
  """exp(ds Q)(x, .): the chance of each y having moved to x in ds: x int [...] -> [..., N]."""
  N = opt.num_states
  keep = jnp.exp(-ds)[..., None]
  one = jax.nn.one_hot(x, N)
  if opt.graph == 'uniform':
    return keep * one + (1.0 - keep) / N
  return keep * one + (x == opt.mask_id)[..., None] * (1.0 - keep)


def tweedie_probs(opt: sedd.Options, x, score, ds, final: bool = False):
  """Unnormalised p(x_s = y | x_t = x) of a Tweedie step of size ds; `final` (to t = 0) drops
  the mask state of the absorbing chain."""
  p = staggered_score(opt, score, ds) * transp_transition(opt, x, ds)
  if final and opt.graph == 'absorb':
    p = p * (1.0 - jax.nn.one_hot(opt.mask_id, opt.num_states))
  return jnp.maximum(p, 0.0)


def limit(opt: sedd.Options, rng, shape):
  """x_1: uniform noise over the N states, or all masks."""
  if opt.graph == 'uniform':
    return jax.random.randint(rng, shape, 0, opt.num_states)
  return jnp.full(shape, opt.mask_id, jnp.int32)


def _draw(rng, p):
  return sample_probs(rng, p / jnp.maximum(p.sum(-1, keepdims=True), 1e-30))


@functools.partial(jax.jit, static_argnames=('fn', 'length', 'steps', 'method'))
def sample(fn, params, prompt, rng, *, length: int, steps: int = 64,
           method: str = 'tweedie') -> SEDDOutput:
  """Draw `length` tokens per row, the first P fixed to `prompt` int32 [B, P] (P may be 0).
  fn: a LogScoreFn (or any callable of its signature with an `opt`); steps: T >= 1."""
  if method not in METHODS:
    raise ValueError(f'method={method!r}: choose one of {METHODS}')
  if steps < 1 or prompt.shape[1] >= length:
    raise ValueError(f'steps={steps} must be >= 1 and the prompt ({prompt.shape[1]} tokens) '
                     f'shorter than length={length}')
  opt = fn.opt
  B, P = prompt.shape
  eps = opt.t_eps
  x = limit(opt, jax.random.fold_in(rng, steps + 1), (B, length)).at[:, :P].set(prompt)
  times = jnp.linspace(1.0, eps, steps + 1)

  def step(k, x):
    t, s = times[k], times[k + 1]
    sig_t, dsig_t = opt.sigma(t)
    tb = jnp.full((B,), t)
    score = jnp.exp(fn(params, x, tb, jnp.full((B,), sig_t)))
    if method == 'euler':
      p = jax.nn.one_hot(x, opt.num_states) + (t - s) * dsig_t * reverse_rate(opt, x, score)
      p = jnp.maximum(p, 0.0)
    else:
      p = tweedie_probs(opt, x, score, jnp.full(x.shape, sig_t - opt.sigma(s)[0]))
    return _draw(jax.random.fold_in(rng, k), p).at[:, :P].set(prompt)

  x = jax.lax.fori_loop(0, steps, step, x)
  sig = opt.sigma(jnp.asarray(eps))[0]
  score = jnp.exp(fn(params, x, jnp.full((B,), eps), jnp.full((B,), sig)))
  p = tweedie_probs(opt, x, score, jnp.full(x.shape, sig), final=True)
  x = _draw(jax.random.fold_in(rng, steps), p).at[:, :P].set(prompt)
  return SEDDOutput(tokens=x, nfe=jnp.asarray(steps + 1, jnp.int32))
