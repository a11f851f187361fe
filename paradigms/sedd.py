"""SEDD: score entropy discrete diffusion (Lou, Meng and Ermon, ICML 2024), absorbing or uniform.

Forward process: a continuous-time Markov chain on the N states of every position,
    d p_t / dt = sigma'(t) Q p_t,          p_{t|0} = exp(sigmabar(t) Q) onehot(x_0),
with the total noise sigmabar(t) of a schedule (`SCHEDULES`) and one of two base rates Q:
  uniform  Q = (1/N) 1 1^T - I over the N real tokens: p_{t|0}(y | x_0) = (1 - e^-s)/N +
           e^-s [y = x_0] (s = sigmabar(t)), the limit is uniform noise;
  absorb   every real token jumps to the mask m at rate 1: p_{t|0} = e^-s onehot(x_0) +
           (1 - e^-s) onehot(m), the limit is all masks (MDLM's process in SEDD's time).
The network outputs the log concrete score l_theta(x_t, t)_y ~ log p_t(y) / p_t(x_t) for every
position and every state y (the score of a one-token change at that position).

Loss: the diffusion-weighted denoising score entropy (SEDD eq. 13 / Thm 3.6), in nats per token,
    L = E_{t ~ U(eps, 1)} E_{x_t ~ p_{t|0}} sigma'(t) sum_i sum_{y != x_t^i} w(x_t^i, y)
          [ s_y - r_y log s_y + K(r_y) ],   s_y = exp l_theta(x_t, t)^i_y,
    r_y = p_{t|0}(y | x_0^i) / p_{t|0}(x_t^i | x_0^i),   K(a) = a (log a - 1),
with the rate w(x, y) of a jump x -> y of the reverse process: 1/N for every y != x (uniform), 1
for every real y when x = m and 0 otherwise (absorb). It is >= 0, zero exactly at the true
ratios, and (plus the prior term, ~0 at t = 1) an upper bound on -log p_theta(x_0): `evaluate`
reports it in bits per token like MDLM's NELBO. The network is conditioned on t (adaLN,
`time_conditioning`); for absorb, SEDD's `scale_by_sigma` output l = out - log(e^s - 1) -
log(N - 1) is used, so an untrained network starts near the right magnitude.

Samplers (sample/sedd.py): Euler steps of the reverse rate and Tweedie tau-leaping.

Batch: {'tokens': int32 [B, L + 1]} (the AR windows); x_0 = tokens[:, :L].
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from paradigms import masked_diffusion as md
from paradigms.masked_diffusion import draw_t, time_embedding
from paradigms.nn.transformer import Transformer, TransformerConfig

Config = TransformerConfig
GRAPHS = ('uniform', 'absorb')


# --- Noise schedules: t -> (sigmabar(t), sigma'(t) = d sigmabar / dt) ---------------------------

def _geometric(t, sigma_min=1e-4, sigma_max=20.0):
  """sigmabar = sigma_min^(1 - t) sigma_max^t (SEDD's uniform runs)."""
  s = sigma_min ** (1.0 - t) * sigma_max ** t
  return s, s * (jnp.log(sigma_max) - jnp.log(sigma_min))


def _loglinear(t, eps=1e-3):
  """sigmabar = -log(1 - (1 - eps) t): e^-sigmabar falls linearly (SEDD's absorbing runs)."""
  return -jnp.log1p(-(1.0 - eps) * t), (1.0 - eps) / (1.0 - (1.0 - eps) * t)


SCHEDULES = {'geometric': _geometric, 'loglinear': _loglinear}


@dataclasses.dataclass(frozen=True)
class Options:
  """The loss's knobs (`config.loss`)."""
  graph: str = 'uniform'  # 'uniform' or 'absorb'
  schedule: str = 'geometric'  # 'geometric' or 'loglinear'
  mask_id: int = 257  # absorb: the mask state m; uniform: the states are ids 0 .. mask_id - 1
  time_conditioning: bool = True  # feed t through the adaLN hook (model.cond_dim > 0)
  t_eps: float = 1e-3
  antithetic: bool = True
  eval_draws: int = 4
  discrete_steps: int = 0  # (draw_t's field; continuous time only)

  def __post_init__(self):
    if self.graph not in GRAPHS:
      raise ValueError(f'loss.graph={self.graph!r}: choose one of {GRAPHS}')
    if self.schedule not in SCHEDULES:
      raise ValueError(f'loss.schedule={self.schedule!r}: choose one of {sorted(SCHEDULES)}')
    if self.discrete_steps:
      raise ValueError('SEDD trains in continuous time: set loss.discrete_steps=0')

  @property
  def num_states(self) -> int:
    """N: the states of the chain (absorb: the real tokens and the mask)."""
    return self.mask_id + (1 if self.graph == 'absorb' else 0)

  def sigma(self, t):
    return SCHEDULES[self.schedule](t)


def _expm1(s):
  return jnp.expm1(jnp.maximum(s, 1e-12))


def transition(opt: Options, x0, sigma):
  """p_{t|0}(. | x_0) at total noise sigma: x0 int [...], sigma [...] -> probs [..., N]."""
  N = opt.num_states
  keep = jnp.exp(-sigma)[..., None]
  one = jax.nn.one_hot(x0, N)
  if opt.graph == 'uniform':
    return (1.0 - keep) / N + keep * one
  return keep * one + (1.0 - keep) * jax.nn.one_hot(jnp.full_like(x0, opt.mask_id), N)


def perturb(rng, opt: Options, x0, sigma):
  """x_t ~ p_{t|0}(. | x_0): x0 int32 [B, L], sigma [B, 1] -> [B, L]."""
  k1, k2 = jax.random.split(rng)
  move = jax.random.uniform(k1, x0.shape) < -jnp.expm1(-sigma)
  other = (jax.random.randint(k2, x0.shape, 0, opt.num_states) if opt.graph == 'uniform'
           else jnp.full_like(x0, opt.mask_id))
  return jnp.where(move, other, x0)


def jump_rates(opt: Options, x):
  """w(x, y): the rate of a jump x -> y for y != x (module doc): x int [...] -> [..., N]."""
  N = opt.num_states
  own = jax.nn.one_hot(x, N)
  if opt.graph == 'uniform':
    return (1.0 - own) / N
  real = 1.0 - jax.nn.one_hot(jnp.full_like(x, opt.mask_id), N)
  return (x == opt.mask_id)[..., None] * real


def log_score(model: Transformer, params, x_t, t, sigma, opt: Options):
  """l_theta(x_t, t): x_t [B, L], t and sigma [B] -> [B, L, N] float32, 0 at y = x_t (the
  ratio of a state to itself)."""
  B = x_t.shape[0]
  cond = None
  if opt.time_conditioning:
    if not model.cfg.cond_dim:
      raise ValueError('loss.time_conditioning=True needs model.cond_dim > 0 (e.g. 64)')
    cond = time_embedding(t, model.cfg.cond_dim)
  elif model.cfg.cond_dim:
    cond = jnp.zeros((B, model.cfg.cond_dim))
  logits, _ = model.apply({'params': params}, x_t, cond=cond)
  N = opt.num_states
  if logits.shape[-1] < N:
    raise ValueError(f'model.vocab_size={logits.shape[-1]} is smaller than the chain\'s {N} states')
  l = logits[..., :N].astype(jnp.float32)
  if opt.graph == 'absorb':  # SEDD's scale_by_sigma
    l = l - jnp.log(_expm1(sigma))[:, None, None] - jnp.log(N - 1.0)
  return jnp.where(jax.nn.one_hot(x_t, N, dtype=bool), 0.0, l)


def score_entropy(opt: Options, l, x_t, x0, sigma):
  """The bracket of the module doc summed over y != x_t, per position: l [B, L, N] log scores,
  x_t, x0 [B, L], sigma [B] -> [B, L] (>= 0)."""
  p = transition(opt, x0, sigma[:, None])  # [B, L, N]
  p_x = jnp.take_along_axis(p, x_t[..., None], axis=-1)  # [B, L, 1]
  r = p / p_x
  w = jump_rates(opt, x_t)
  K = jax.scipy.special.xlogy(r, r) - r
  return jnp.sum(w * (jnp.exp(l) - r * l + K), axis=-1)


def dwdse_terms(params, x0, rng, model: Transformer, opt: Options):
  """Per-sequence DWDSE sums in nats [B] with one t per sequence (antithetic)."""
  t_rng, z_rng = jax.random.split(rng)
  t = draw_t(t_rng, (x0.shape[0],), opt)
  sigma, dsigma = opt.sigma(t)
  x_t = perturb(z_rng, opt, x0, sigma[:, None])
  l = log_score(model, params, x_t, t, sigma, opt)
  return dsigma * score_entropy(opt, l, x_t, x0, sigma).sum(axis=1), (x_t != x0).mean()


# --- The paradigm contract ---------------------------------------------------------------------

def build(cfg: TransformerConfig) -> Transformer:
  if cfg.mask != 'bidirectional':
    raise ValueError(f"SEDD needs model.mask='bidirectional', got {cfg.mask!r}")
  return Transformer(cfg)


example_batch, init = md.example_batch, md.init  # the same token batch and backbone init


def loss(params, batch, rng, *, model: Transformer, **options):
  """The DWDSE bound in nats per token. Returns (scalar, metrics)."""
  opt = Options(**options)
  x0 = batch['tokens'][:, :-1]
  per_seq, moved = dwdse_terms(params, x0, rng, model, opt)
  nelbo = per_seq.mean() / x0.shape[1]
  return nelbo, {'nelbo': nelbo, 'bits_per_token': nelbo / jnp.log(2.0), 'changed': moved}


def evaluate(params, batch, rng, *, model: Transformer, **options) -> dict:
  """Held-out bound sums over `eval_draws` t draws: {'nats', 'tokens', 'nats_sq', 'draws'}
  (as masked_diffusion.evaluate: bits per token and its standard error)."""
  opt = Options(**options)
  x0 = batch['tokens'][:, :-1]
  L = x0.shape[1]
  per = jax.lax.map(lambda i: dwdse_terms(params, x0, jax.random.fold_in(rng, i), model, opt)[0],
                    jnp.arange(opt.eval_draws))  # [draws, B]
  return {'nats': per.sum() / opt.eval_draws, 'tokens': jnp.asarray(x0.size, jnp.float32),
          'nats_sq': jnp.sum((per / L) ** 2), 'draws': jnp.asarray(per.size, jnp.float32)}
