"""Uniform-state discrete diffusion: UDLM's continuous-time NELBO (Schiff et al. 2025), the base
model of DUO (Sahoo et al., ICML 2025).

Forward process over the N states of every position (N = mask_id: the byte tokens and the
separator; no mask state):
    q(z_t | x) = Cat(alpha_t x + (1 - alpha_t) / N 1),
alpha_t from ~1 at t = 0 to ~0 at t = 1 (`paradigms.masked_diffusion.SCHEDULES`). The network
gives x_theta(z_t, t) = softmax(logits) over the N states, and the reverse step takes the
posterior q(z_s | z_t, x) with x_theta in place of the clean one-hot x (`posterior`).

NELBO (UDLM's continuous-time limit of the discrete KL terms; DUO eq. 8), per position with
z_t = i, in nats:
    f = alpha'_t / (N alpha_t) [ N / xbar_i - N / xbar_theta_i
                                 - sum_j (xbar_j / xbar_i) log( xbar_theta_i xbar_j / (xbar_theta_j xbar_i) ) ],
    xbar = N alpha_t x + (1 - alpha_t) 1,   xbar_theta = N alpha_t x_theta + (1 - alpha_t) 1,
and L = E_{t ~ U(eps, 1)} E_{z_t} sum_positions f. f >= 0 and is exactly
lim_{dt -> 0} KL(q(z_{t-dt} | z_t, x) || q(z_{t-dt} | z_t, x_theta)) / dt for every z_t
(checked in tests/test_duo.py); the reconstruction and prior terms are ~0 at eps and 1 and are
left out, as in UDLM. `evaluate` reports it in bits per token beside MDLM's and SEDD's bounds.

DUO's duality (Sahoo et al. 2025, Sec. 3): with a Gaussian latent w_t = a~_t x + sqrt(1 - a~_t^2) eps
over the N states (x one-hot, eps ~ N(0, I_N)), z_t = argmax(w_t) follows the uniform-state
marginal above with (eq. 11)
    alpha_t = T(a~_t) = N / (N - 1) [ int phi(z - mu) Phi(z)^(N-1) dz - 1 / N ],  mu = a~ / sqrt(1 - a~^2)
(`transformation`, a 2001-point quadrature; phi, Phi the standard normal pdf and cdf). The
Gaussian schedule is the released code's: a~^2 = sigmoid(-gamma), gamma linear in t between
the values whose T gives a chosen alpha range (`gamma_for_alpha`). Two uses (`loss` picks):
  curriculum (loss.curriculum_tau > 0; eq. 21): the network reads the tempered softmax
      softmax(w_t / tau) (a soft embedding lookup) instead of argmax(w_t), with t drawn where
      alpha_t in `curriculum_alpha` (DUO: tau = 1e-3, alpha in [0.05, 0.95], the first half of
      training); the loss is the NELBO integrand f at z_t = argmax(w_t), alpha_t = T(a~_t),
      alpha'_t by forward-mode differentiation of T. Not a bound unless tau -> 0 over the whole
      range: `evaluate` always reports the discrete NELBO. Stage 2 is a plain run from it
      (train.init_from).
  distillation (loss.distill_delta > 0; DCD, Alg. 1, eq. 22-23): one x and one eps give the
      deterministic discrete trajectory z_t = argmax(a~_t x + s~_t eps); the student at (z_t, t)
      is pulled to the teacher at (z_s, s = t - delta) on the same trajectory,
          L = sum_l KL( x_theta(z_t, t)_l || x_theta-(z_s, s)_l ),
      the teacher a copy of the student refreshed every `distill_round_steps` updates, delta
      doubling each round (`init_extra` / `after_update`; the trainer's EMA is the result).
      Sample the distilled run with few ancestral steps (sample/duo.py).
The network is conditioned on the log-linear time with the same alpha (t = (1 - alpha) /
(1 - 1e-3)), so the curriculum and the distilled runs sample with the base model's sampler.

Batch: {'tokens': int32 [B, L + 1]}; x = tokens[:, :L].
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from paradigms import masked_diffusion as md
from paradigms.masked_diffusion import draw_t, schedule, time_embedding
from paradigms.nn.transformer import Transformer, TransformerConfig

Config = TransformerConfig


@dataclasses.dataclass(frozen=True)
class Options:
  """The loss's knobs (`config.loss`)."""
  mask_id: int = 257  # the first id that is not a state: states are 0 .. mask_id - 1
  schedule: str = 'loglinear'
  time_conditioning: bool = True
  t_eps: float = 1e-3
  antithetic: bool = True
  eval_draws: int = 4
  discrete_steps: int = 0  # (draw_t's field; continuous time only)
  curriculum_tau: float = 0.0  # > 0: DUO's Gaussian curriculum at this softmax temperature
  curriculum_alpha: tuple = (0.05, 0.95)  # the alpha_t range of its t draws
  distill_delta: float = 0.0  # > 0: consistency distillation, delta of the first round
  distill_round_steps: int = 1000  # updates per round (teacher refreshed, delta doubled)
  distill_alpha: tuple = (0.005, 0.999)  # the alpha_t range its t in [0, 1] spans

  def __post_init__(self):
    schedule(self.schedule)  # validates the name
    gauss = self.curriculum_tau > 0 or self.distill_delta > 0
    if self.curriculum_tau > 0 and self.distill_delta > 0:
      raise ValueError('set one of loss.curriculum_tau (stage 1) and loss.distill_delta '
                       '(distillation of a trained run), not both')
    if gauss and self.schedule != 'loglinear':
      raise ValueError("DUO's curriculum and distillation condition the network on the "
                       "log-linear time: loss.schedule='loglinear'")
    for name in ('curriculum_alpha', 'distill_alpha'):
      object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))  # hashable
      lo, hi = getattr(self, name)
      if not 0.0 < lo < hi < 1.0:
        raise ValueError(f'loss.{name}={(lo, hi)}: need 0 < low < high < 1')
    if self.distill_delta > 0 and (self.distill_delta >= 1 or self.distill_round_steps < 1):
      raise ValueError(f'loss.distill_delta={self.distill_delta} must be in (0, 1) and '
                       f'loss.distill_round_steps={self.distill_round_steps} >= 1')
    if self.discrete_steps:
      raise ValueError('the uniform-state NELBO here is continuous-time: loss.discrete_steps=0')
    if self.mask_id < 2:
      raise ValueError(f'loss.mask_id={self.mask_id}: the chain needs at least 2 states')

  @property
  def num_states(self) -> int:
    return self.mask_id

  def alpha(self, t):
    return schedule(self.schedule)(t)


def perturb(rng, opt: Options, x, alpha):
  """z_t ~ q(z_t | x): x int32 [B, L], alpha [B, 1] -> [B, L]."""
  k1, k2 = jax.random.split(rng)
  noise = jax.random.uniform(k1, x.shape) >= alpha
  return jnp.where(noise, jax.random.randint(k2, x.shape, 0, opt.num_states), x)


def x_theta(model: Transformer, params, z, t, opt: Options):
  """softmax over the N states of the network's logits: z [B, L], t [B] -> [B, L, N]."""
  cond = None
  if opt.time_conditioning:
    if not model.cfg.cond_dim:
      raise ValueError('loss.time_conditioning=True needs model.cond_dim > 0 (e.g. 64)')
    cond = time_embedding(t, model.cfg.cond_dim)
  elif model.cfg.cond_dim:
    cond = jnp.zeros((z.shape[0], model.cfg.cond_dim))
  logits, _ = model.apply({'params': params}, z, cond=cond)
  if logits.shape[-1] < opt.num_states:
    raise ValueError(f'model.vocab_size={logits.shape[-1]} < the {opt.num_states} states')
  return jax.nn.softmax(logits[..., :opt.num_states].astype(jnp.float32), axis=-1)


def nelbo_integrand(opt: Options, x_hat, z, x, alpha, dalpha):
  """f of the module doc per position: x_hat [B, L, N] (x_theta), z, x int [B, L], alpha and
  dalpha [B] -> [B, L] nats per unit t."""
  N = opt.num_states
  a, da = alpha[:, None, None], dalpha[:, None]
  xbar = N * a * jax.nn.one_hot(x, N) + (1.0 - a)
  xbt = N * a * x_hat + (1.0 - a)
  pick = lambda v: jnp.take_along_axis(v, z[..., None], axis=-1)  # [B, L, 1]
  xi, xti = pick(xbar), pick(xbt)
  log_ratio = jnp.log(xti) + jnp.log(xbar) - jnp.log(xbt) - jnp.log(xi)
  bracket = N / xi[..., 0] - N / xti[..., 0] - jnp.sum(xbar / xi * log_ratio, axis=-1)
  return da / (N * alpha[:, None]) * bracket


def posterior(opt: Options, x, z, alpha_s, alpha_t):
  """q(z_s | z_t, x) for a distribution x [..., N] over the clean token (one-hot, or x_theta),
  z [...] the current states, alpha_s >= alpha_t broadcastable to [...]: [..., N] normalised.
  Bayes: q(z_t | z_s) q(z_s | x), q(z_t | z_s) = a_ts [z_s = z_t] + (1 - a_ts)/N."""
  N = opt.num_states
  a_s, a_t = jnp.asarray(alpha_s)[..., None], jnp.asarray(alpha_t)[..., None]
  a_ts = a_t / a_s
  prior = a_s * x + (1.0 - a_s) / N
  like = a_ts * jax.nn.one_hot(z, N) + (1.0 - a_ts) / N
  p = like * prior
  return p / p.sum(-1, keepdims=True)


def nelbo_terms(params, x, rng, model: Transformer, opt: Options):
  """Per-sequence NELBO sums in nats [B] (one t per sequence, antithetic) and the share of
  positions whose state differs from x."""
  t_rng, z_rng = jax.random.split(rng)
  t = draw_t(t_rng, (x.shape[0],), opt)
  a, da = opt.alpha(t)
  z = perturb(z_rng, opt, x, a[:, None])
  f = nelbo_integrand(opt, x_theta(model, params, z, t, opt), z, x, a, da)
  return f.sum(axis=1), (z != x).mean()


# --- The Gaussian duality (DUO) ---------------------------------------------------------------

_U = np.linspace(-10.0, 10.0, 2001)  # quadrature nodes of int phi(u) Phi(mu + u)^(N-1) du


_erfc = np.frompyfunc(math.erfc, 1, 1)


def _np_log_ndtr(x):
  """log Phi(x) in float64 (x >= -10 here: erfc cannot underflow)."""
  return np.log(0.5 * _erfc(-np.asarray(x) / math.sqrt(2.0)).astype(np.float64))


def transformation(mu, num_states: int, xp=jnp):
  """alpha = T of eq. 11 at mu = a~ / sqrt(1 - a~^2) (any shape; differentiable): the chance
  that the true coordinate wins argmax(w), rescaled so that alpha = 0 at mu = 0, 1 as mu -> inf.
  xp=np evaluates it in float64 outside a trace (`gamma_for_alpha`)."""
  log_cdf = log_ndtr if xp is jnp else _np_log_ndtr
  u = xp.asarray(_U, xp.float32 if xp is jnp else xp.float64)
  mu = xp.asarray(mu, u.dtype)[..., None]
  log_f = -0.5 * u ** 2 - 0.5 * math.log(2 * math.pi) + (num_states - 1) * log_cdf(mu + u)
  p = xp.trapezoid(xp.exp(log_f), u, axis=-1)
  return (num_states * p - 1.0) / (num_states - 1.0)


@functools.lru_cache(maxsize=64)
def gamma_for_alpha(alpha: float, num_states: int) -> float:
  """The log noise-to-signal ratio gamma (a~^2 = sigmoid(-gamma), mu = exp(-gamma / 2)) whose
  T is `alpha`: bisection (T falls as gamma grows)."""
  lo, hi = -30.0, 30.0
  for _ in range(80):
    mid = 0.5 * (lo + hi)
    if float(transformation(math.exp(-mid / 2), num_states, np)) > alpha:
      lo = mid
    else:
      hi = mid
  return 0.5 * (lo + hi)


def gaussian_alpha(opt: Options, t, alpha_range):
  """gamma_t linear in t from gamma(alpha_high) at t = 0 to gamma(alpha_low) at t = 1: t [B] ->
  (mu_t [B] (a~_t / s~_t), alpha_t = T [B], alpha'_t [B] (forward-mode))."""
  g0 = gamma_for_alpha(float(alpha_range[1]), opt.num_states)
  g1 = gamma_for_alpha(float(alpha_range[0]), opt.num_states)
  mu = lambda t: jnp.exp(-0.5 * (g0 + t * (g1 - g0)))
  alpha, dalpha = jax.jvp(lambda t: transformation(mu(t), opt.num_states), (t,),
                          (jnp.ones_like(t),))
  return mu(t), alpha, dalpha


def gaussian_latent(rng, opt: Options, x, mu):
  """w_t / s~_t = mu x + eps over the N states: x int [B, L], mu [B] -> [B, L, N] (argmax and
  the tempered softmax scaled by 1 / s~ are those of w_t, with tau rescaled alike)."""
  eps = jax.random.normal(rng, x.shape + (opt.num_states,))
  return mu[:, None, None] * jax.nn.one_hot(x, opt.num_states) + eps


def loglinear_time(alpha):
  """The log-linear schedule's t with this alpha, the network's time input."""
  return (1.0 - alpha) / (1.0 - 1e-3)


def curriculum_terms(params, x, rng, model: Transformer, opt: Options):
  """Eq. 21 per sequence: (nats [B] of f at z_t = argmax(w_t), the network reading
  softmax(w_t / tau)), share of positions with z_t != x)."""
  t_rng, w_rng = jax.random.split(rng)
  t = draw_t(t_rng, (x.shape[0],), opt)
  mu, alpha, dalpha = gaussian_alpha(opt, t, opt.curriculum_alpha)
  w = gaussian_latent(w_rng, opt, x, mu)  # [B, L, N], w_t / s~_t
  s = jax.lax.rsqrt(1.0 + mu ** 2)[:, None, None]  # s~_t: w_t = s~ (mu x + eps)
  z = jnp.argmax(w, axis=-1)
  soft = jax.nn.softmax(w * s / opt.curriculum_tau, axis=-1)
  f = nelbo_integrand(opt, x_theta(model, params, soft, loglinear_time(alpha), opt), z, x,
                      alpha, dalpha)
  return f.sum(axis=1), (z != x).mean()


def trajectory(rng, opt: Options, x, *mus):
  """Points of one deterministic discrete trajectory (eq. 22): argmax(mu x + eps) with one eps
  for every mu [B] given; x int [B, L] -> one int [B, L] per mu. A position reads x from the
  first (largest) mu on where it does, and argmax(eps) before (App. A.7)."""
  eps = jax.random.normal(rng, x.shape + (opt.num_states,))  # [B, L, N]
  hot = jax.nn.one_hot(x, opt.num_states)
  return tuple(jnp.argmax(mu[:, None, None] * hot + eps, -1) for mu in mus)


def distill_delta(opt: Options, k):
  """delta of update k: distill_delta * 2^(k // distill_round_steps), capped below 1."""
  return jnp.minimum(opt.distill_delta * 2.0 ** (k // opt.distill_round_steps), 0.5)


def distill_terms(params, teacher, x, rng, k, model: Transformer, opt: Options):
  """DCD (eq. 23): per-sequence KL(student(z_t, t) || teacher(z_s, s)) in nats [B], the
  trajectory (z_s, z_t) from one eps, t ~ U[delta, 1], s = t - delta."""
  t_rng, w_rng = jax.random.split(rng)
  delta = distill_delta(opt, k)
  t = delta + (1.0 - delta) * draw_t(t_rng, (x.shape[0],), dataclasses.replace(opt, t_eps=0.0))
  mu_t, alpha_t, _ = gaussian_alpha(opt, t, opt.distill_alpha)
  mu_s, alpha_s, _ = gaussian_alpha(opt, t - delta, opt.distill_alpha)
  z_s, z_t = trajectory(w_rng, opt, x, mu_s, mu_t)
  target = jax.lax.stop_gradient(x_theta(model, teacher, z_s, loglinear_time(alpha_s), opt))
  p = x_theta(model, params, z_t, loglinear_time(alpha_t), opt)
  kl = jnp.sum(p * (jnp.log(jnp.maximum(p, 1e-30)) - jnp.log(jnp.maximum(target, 1e-30))), -1)
  return kl.sum(axis=1), delta


# --- The paradigm contract ---------------------------------------------------------------------

def build(cfg: TransformerConfig) -> Transformer:
  if cfg.mask != 'bidirectional':
    raise ValueError(f"uniform-state diffusion needs model.mask='bidirectional', got {cfg.mask!r}")
  return Transformer(cfg)


example_batch, init = md.example_batch, md.init  # the same token batch and backbone init


LOSS_TAKES_EXTRA = True  # the distillation teacher


def init_extra(model: Transformer, params, **options):
  """Distillation only: {'teacher': a copy of params, 'k': updates done}; else None."""
  if Options(**options).distill_delta <= 0:
    return None
  return {'teacher': jax.tree.map(jnp.copy, params), 'k': jnp.zeros((), jnp.int32)}


def after_update(params, extra, aux, rng, *, model: Transformer, **options):
  """Count the update; at the end of a round the teacher becomes the student (Alg. 1)."""
  if extra is None:
    return params, extra, {}
  opt = Options(**options)
  k = extra['k'] + 1
  new_round = k % opt.distill_round_steps == 0
  teacher = jax.tree.map(lambda p, q: jnp.where(new_round, p, q), params, extra['teacher'])
  return params, {'teacher': teacher, 'k': k}, {}


def loss(params, batch, rng, *, model: Transformer, extra=None, **options):
  """The NELBO in nats per token (or eq. 21's curriculum loss, or DCD's KL per token with the
  teacher in `extra`). Returns (scalar, metrics)."""
  opt = Options(**options)
  x = batch['tokens'][:, :-1]
  L = x.shape[1]
  if opt.distill_delta > 0:
    if extra is None:
      raise ValueError('loss.distill_delta > 0 needs the teacher the trainer keeps (extra)')
    per_seq, delta = distill_terms(params, extra['teacher'], x, rng, extra['k'], model, opt)
    kl = per_seq.mean() / L
    gap = sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(params),
                                                   jax.tree.leaves(extra['teacher'])))
    return kl, {'kl': kl, 'delta': delta, 'teacher_gap': gap}
  terms = curriculum_terms if opt.curriculum_tau > 0 else nelbo_terms
  per_seq, changed = terms(params, x, rng, model, opt)
  nelbo = per_seq.mean() / L
  return nelbo, {'nelbo': nelbo, 'bits_per_token': nelbo / jnp.log(2.0), 'changed': changed}


def evaluate(params, batch, rng, *, model: Transformer, **options) -> dict:
  """Held-out NELBO sums over `eval_draws` t draws (as masked_diffusion.evaluate)."""
  opt = Options(**options)
  x = batch['tokens'][:, :-1]
  L = x.shape[1]
  per = jax.lax.map(lambda i: nelbo_terms(params, x, jax.random.fold_in(rng, i), model, opt)[0],
                    jnp.arange(opt.eval_draws))
  return {'nats': per.sum() / opt.eval_draws, 'tokens': jnp.asarray(x.size, jnp.float32),
          'nats_sq': jnp.sum((per / L) ** 2), 'draws': jnp.asarray(per.size, jnp.float32)}
