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

Not built yet (issue 26): DUO's Gaussian-guided curriculum (training through the argmax of a
Gaussian diffusion) and its discrete consistency distillation to few-step sampling; the
samplers here are ancestral (sample/duo.py).

Batch: {'tokens': int32 [B, L + 1]}; x = tokens[:, :L].
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

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

  def __post_init__(self):
    schedule(self.schedule)  # validates the name
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


# --- The paradigm contract ---------------------------------------------------------------------

def build(cfg: TransformerConfig) -> Transformer:
  if cfg.mask != 'bidirectional':
    raise ValueError(f"uniform-state diffusion needs model.mask='bidirectional', got {cfg.mask!r}")
  return Transformer(cfg)


def example_batch(batch_size: int, data, model_cfg) -> dict:
  return {'tokens': jax.ShapeDtypeStruct((batch_size, data.seq_len + 1), jnp.int32)}


def init(model: Transformer, rng, batch) -> dict:
  x = batch['tokens'][:, :-1]
  cond = jnp.zeros((x.shape[0], model.cfg.cond_dim)) if model.cfg.cond_dim else None
  return model.init(rng, x, cond=cond)


def loss(params, batch, rng, *, model: Transformer, **options):
  """The NELBO in nats per token. Returns (scalar, metrics)."""
  opt = Options(**options)
  x = batch['tokens'][:, :-1]
  per_seq, changed = nelbo_terms(params, x, rng, model, opt)
  nelbo = per_seq.mean() / x.shape[1]
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
