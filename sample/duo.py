"""Ancestral sampling of uniform-state diffusion (UDLM / DUO, paradigms/duo.py).

    z_1 ~ Uniform(N)^L                                   (the prompt's positions fixed)
    for k = 0..T-1:  t = t_k, s = t_{k+1}  (t_k = 1 - k (1 - eps) / T)
        z_s ~ q(z_s | z_t, x_theta(z_t, t))              (paradigms.duo.posterior)
    z_0 ~ q(z_0 | z_eps, x_theta)                        (noise removal: alpha_s = 1)
NFE = T + 1. Unlike absorbing masks, every step may revise any position already written. With
`greedy_tail` the noise-removal step takes the posterior's argmax (DUO's greedy tail) instead of
a draw. Categorical draws use sample/categorical.py (inverse CDF at temperature 1).

Corrector (`eta` > 0; the ReMDM idea for any chain, in the form of DUO chapter II's
predictor-corrector posteriors): each step draws from the mixture
    (1 - eta) q(z_s | z_t, x_theta) + eta q(z_s | x_theta),   q(z_s | x) = alpha_s x + (1 - alpha_s)/N,
which re-noises a share eta of the positions from the model's own clean estimate at no extra
network call. With the exact x_theta both parts have the marginal q_s, so the mixture does too
(a chi-square test checks it); eta = 0 is ancestral sampling.

    config, model, params = load_run('runs/duo_code')
    fn = duo.XThetaFn(model, Options(**config.loss))
    out = duo.sample(fn, params, prompt, jax.random.key(0), length=256, steps=64)
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import struct

from paradigms import duo
from paradigms.nn.transformer import Transformer
from sample.categorical import sample_probs


@dataclasses.dataclass(frozen=True)
class XThetaFn:
  """The sampler's seam: (params, z [B, L], t [B]) -> x_theta [B, L, N]."""
  model: Transformer
  opt: duo.Options

  def __call__(self, params, z, t):
    return duo.x_theta(self.model, params, z, t, self.opt)


@struct.dataclass
class DUOOutput:
  tokens: jax.Array  # [B, L] int32
  nfe: jax.Array  # [] int32 network passes


@functools.partial(jax.jit, static_argnames=('fn', 'length', 'steps', 'greedy_tail'))
def sample(fn, params, prompt, rng, *, length: int, steps: int = 64,
           greedy_tail: bool = False, eta: float = 0.0) -> DUOOutput:
  """`length` tokens per row, the first P fixed to prompt int32 [B, P] (P may be 0); `eta` in
  [0, 1] the corrector's share (module doc; traced, so the caller checks its range)."""
  if steps < 1 or prompt.shape[1] >= length:
    raise ValueError(f'steps={steps} must be >= 1 and the prompt ({prompt.shape[1]} tokens) '
                     f'shorter than length={length}')
  opt = fn.opt
  B, P = prompt.shape
  times = jnp.linspace(1.0, opt.t_eps, steps + 1)
  z = jax.random.randint(jax.random.fold_in(rng, steps + 1), (B, length), 0, opt.num_states)
  z = z.at[:, :P].set(prompt)

  def step(k, z):
    t, s = times[k], times[k + 1]
    x_hat = fn(params, z, jnp.full((B,), t))
    a_s = opt.alpha(s)[0]
    p = duo.posterior(opt, x_hat, z, a_s, opt.alpha(t)[0])
    p = (1.0 - eta) * p + eta * (a_s * x_hat + (1.0 - a_s) / opt.num_states)
    return sample_probs(jax.random.fold_in(rng, k), p).at[:, :P].set(prompt)

  z = jax.lax.fori_loop(0, steps, step, z)
  t = times[-1]
  x_hat = fn(params, z, jnp.full((B,), t))
  p = duo.posterior(opt, x_hat, z, 1.0, opt.alpha(t)[0])
  z = (jnp.argmax(p, -1) if greedy_tail else sample_probs(jax.random.fold_in(rng, steps), p))
  return DUOOutput(tokens=z.astype(jnp.int32).at[:, :P].set(prompt),
                   nfe=jnp.asarray(steps + 1, jnp.int32))
