"""Masked (absorbing-state) diffusion LMs, MDLM / MD4, and block diffusion, BD3-LM.

Forward process (MDLM eq. 2; MD4 eq. 1): every position independently stays itself with
probability alpha_t and becomes the mask token m otherwise,
    q(z_t^l | x^l) = Cat(alpha_t onehot(x^l) + (1 - alpha_t) onehot(m)),
with alpha_t falling from ~1 at t = 0 to ~0 at t = 1.

Continuous-time NELBO (MDLM eq. 10; MD4 eq. 5), in nats per token:
    L = E_{t ~ U(0,1)} E_{z_t} [ w(t) / L * sum_{l: z_t^l = m} -log p_theta(x^l | z_t) ],
    w(t) = -alpha'_t / (1 - alpha_t)                         (1/t for the linear schedule)
with t drawn antithetically over the batch: t_b = (u + b / B) mod 1. Discrete time with T steps
(MD4 eq. 4): T * E_{i ~ U{1..T}} [ (alpha_s - alpha_t) / (1 - alpha_t) * sum_masked -log p ],
t = i / T, s = t - 1 / T.

SUBS parameterisation (MDLM Sec. 3.2): the mask logit is set to -1e6 so m is never predicted,
and unmasked positions carry over (they add nothing to the loss; the samplers copy them).
Time conditioning is off by default (RADD: the absorbing-state posterior does not need t); set
`loss.time_conditioning=True` and `model.cond_dim > 0` to feed t through the adaLN hook.

Block diffusion (BD3-LM, Arriola et al. 2025, Sec. 3): with block size B < L the network reads
concat(x_t, x_0) (length 2L) under the BD3 mask (`bd3_mask`), t is drawn per block, and the loss
is taken on the x_t half. B = L is MDLM; B = 1 is next-token prediction (with every token of
the block masked the loss is exactly the left-to-right NLL of the same network).

Batch: {'tokens': int32 [B, L + 1]} (the AR windows); the diffusion models x = tokens[:, :L].
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from paradigms.nn.transformer import Transformer, TransformerConfig

Config = TransformerConfig

MASK_LOGIT = -1e6  # SUBS: large and finite (not -inf) so softmax never yields NaN


# --- Schedules alpha_t (each a pair alpha(t), alpha'(t)) -------------------------------------

def _linear(t):
  return 1.0 - t, -jnp.ones_like(t)


def _loglinear(t, eps=1e-3):
  """MDLM: sigma(t) = -log(1 - (1 - eps) t), alpha = exp(-sigma) = 1 - (1 - eps) t."""
  return 1.0 - (1.0 - eps) * t, -(1.0 - eps) * jnp.ones_like(t)


def _cosine(t, clamp=1e-4):
  """MD4: alpha = 1 - cos(pi/2 (1 - t)), clamped to (1 - 2c) alpha + c."""
  a = 1.0 - jnp.cos(0.5 * jnp.pi * (1.0 - t))
  da = -0.5 * jnp.pi * jnp.sin(0.5 * jnp.pi * (1.0 - t))
  return (1.0 - 2 * clamp) * a + clamp, (1.0 - 2 * clamp) * da


def _polynomial(t, w=2.0):
  """MD4's polynomial schedule: alpha = 1 - t^w."""
  return 1.0 - t ** w, -w * t ** (w - 1)


SCHEDULES = {'linear': _linear, 'loglinear': _loglinear, 'cosine': _cosine,
             'polynomial': _polynomial}


def schedule(name: str):
  """alpha(t) -> (alpha_t, alpha'_t) for a schedule name in SCHEDULES."""
  if name not in SCHEDULES:
    raise ValueError(f'loss.schedule={name!r}: choose one of {sorted(SCHEDULES)}')
  return SCHEDULES[name]


# --- Masks -------------------------------------------------------------------------------------

def bd3_mask(L: int, block_size: int):
  """BD3-LM training mask over concat(x_t, x_0): bool [2L, 2L] (True = may attend).

  For index i let f = (i >= L) and b = (i - f L) // B. Query q sees key k iff
    b_q == b_k and f_q == f_k            (block-diagonal, within x_t or within x_0), or
    b_q >  b_k and f_k = 1 and f_q = 0   (a noisy block sees the clean earlier blocks), or
    b_q >= b_k and f_q = f_k = 1         (block-causal within x_0).
  """
  i = np.arange(2 * L)
  f = i >= L
  b = (i - f * L) // block_size
  fq, fk, bq, bk = f[:, None], f[None, :], b[:, None], b[None, :]
  return ((bq == bk) & (fq == fk)) | ((bq > bk) & fk & ~fq) | ((bq >= bk) & fq & fk)


# --- The paradigm contract ---------------------------------------------------------------------

def build(cfg: TransformerConfig) -> Transformer:
  """The network: the shared backbone with a bidirectional mask (same params as the AR model)."""
  if cfg.mask != 'bidirectional':
    raise ValueError(f"masked diffusion needs model.mask='bidirectional', got {cfg.mask!r}")
  return Transformer(cfg)


def example_batch(batch_size: int, data, model_cfg) -> dict:
  """Shapes and dtypes of one batch (`data` is config.data), for `jax.eval_shape` init."""
  return {'tokens': jax.ShapeDtypeStruct((batch_size, data.seq_len + 1), jnp.int32)}


def init(model: Transformer, rng, batch) -> dict:
  x = batch['tokens'][:, :-1]
  cond = jnp.zeros((x.shape[0], model.cfg.cond_dim)) if model.cfg.cond_dim else None
  return model.init(rng, x, cond=cond)


@dataclasses.dataclass(frozen=True)
class Options:
  """The loss's knobs (`config.loss`)."""
  mask_id: int = 257
  schedule: str = 'loglinear'
  block_size: int = 0  # 0 or L: MDLM; 1 <= B < L: BD3-LM
  discrete_steps: int = 0  # 0: continuous time; T > 0: MD4's discrete-time NELBO
  antithetic: bool = True
  t_eps: float = 1e-3  # t is drawn in [t_eps, 1] (MDLM's sampling_eps)
  time_conditioning: bool = False
  mask_all: bool = False  # every position masked with weight 1 (the BD3 B=1 identity)
  eval_draws: int = 4  # t draws per held-out batch in evaluate()

  def blocks(self, L: int) -> int:
    B = self.block_size or L
    if L % B:
      raise ValueError(f'loss.block_size={B} must divide data.seq_len={L}')
    return B


def time_embedding(t, dim: int):
  """Sinusoidal features of t * 1000 (DDPM / DiT timestep embedding): [B] -> [B, dim]."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10_000.0) * jnp.arange(half) / half)
  args = 1000.0 * t[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def draw_t(rng, shape, opt: Options):
  """t in [t_eps, 1], antithetic (stratified) over all draws: t_j = (u + j / n) mod 1.

  With discrete_steps T, t is a multiple of 1/T in {1/T, ..., 1}.
  """
  n = math.prod(shape)
  if opt.antithetic:
    u = (jax.random.uniform(rng, ()) + jnp.arange(n) / n) % 1.0
    u = jax.random.permutation(jax.random.fold_in(rng, 1), u)
  else:
    u = jax.random.uniform(rng, (n,))
  u = u.reshape(shape)
  if opt.discrete_steps:
    T = opt.discrete_steps
    return (jnp.floor(u * T) + 1) / T
  return opt.t_eps + (1.0 - opt.t_eps) * u


def position_weights(t, opt: Options):
  """Per-position NELBO weight of a masked token: [..] t -> [..] weight (see module doc)."""
  alpha = schedule(opt.schedule)
  a_t, da_t = alpha(t)
  if opt.discrete_steps:
    a_s, _ = alpha(t - 1.0 / opt.discrete_steps)
    return opt.discrete_steps * (a_s - a_t) / (1.0 - a_t)
  return -da_t / (1.0 - a_t)


def subs_log_probs(logits, mask_id: int):
  """log p_theta(x | z_t) with the mask token removed (SUBS). logits: [B, L, V] float32."""
  return jax.nn.log_softmax(logits.at[..., mask_id].set(MASK_LOGIT), axis=-1)


def denoiser_logits(model: Transformer, params, z_t, x0, t, opt: Options):
  """The network's logits for the x_t positions: [B, L, V].

  MDLM reads z_t; BD3 reads concat(z_t, x0) under the BD3 mask with both halves at positions
  0..L-1, and returns the z_t half.
  """
  Bsz, L = z_t.shape
  cond = None
  if opt.time_conditioning:
    if not model.cfg.cond_dim:
      raise ValueError('loss.time_conditioning=True needs model.cond_dim > 0')
    if t.ndim > 1 and t.shape[1] > 1:
      raise ValueError('time conditioning is per sequence; it is not available for block_size < L')
    cond = time_embedding(t.reshape(Bsz), model.cfg.cond_dim)
  elif model.cfg.cond_dim:
    cond = jnp.zeros((Bsz, model.cfg.cond_dim))
  B = opt.blocks(L)
  if B == L:
    logits, _ = model.apply({'params': params}, z_t, cond=cond)
    return logits
  pos = jnp.broadcast_to(jnp.concatenate([jnp.arange(L), jnp.arange(L)]), (Bsz, 2 * L))
  mask = jnp.asarray(bd3_mask(L, B))[None, None]
  logits, _ = model.apply({'params': params}, jnp.concatenate([z_t, x0], axis=1), positions=pos,
                          cond=cond, attn_mask=mask)
  return logits[:, :L]


def nelbo_given(params, x0, t, masked, model: Transformer, opt: Options):
  """Per-sequence NELBO sums in nats for given t [B, n_blocks] and mask pattern [B, L] bool."""
  Bsz, L = x0.shape
  t_pos = jnp.repeat(t, L // t.shape[1], axis=1)  # [B, L]
  w = jnp.ones_like(t_pos) if opt.mask_all else position_weights(t_pos, opt)
  z_t = jnp.where(masked, opt.mask_id, x0)
  logp = subs_log_probs(denoiser_logits(model, params, z_t, x0, t, opt), opt.mask_id)
  nll = -jnp.take_along_axis(logp, x0[..., None], axis=-1)[..., 0]  # [B, L]
  return jnp.sum(jnp.where(masked, w * nll, 0.0), axis=1)


def nelbo_terms(params, x0, rng, model: Transformer, opt: Options):
  """Per-sequence NELBO sums in nats [B] and the mask rate, with one t per block (one per
  sequence for MDLM) drawn antithetically and z_t ~ q(z_t | x0)."""
  Bsz, L = x0.shape
  B = opt.blocks(L)
  t_rng, z_rng = jax.random.split(rng)
  t = draw_t(t_rng, (Bsz, L // B), opt)  # [B, n_blocks]
  if opt.mask_all:
    masked = jnp.ones((Bsz, L), bool)
  else:
    a_t, _ = schedule(opt.schedule)(jnp.repeat(t, B, axis=1))
    masked = jax.random.uniform(z_rng, (Bsz, L)) >= a_t  # P(masked) = 1 - alpha_t
  return nelbo_given(params, x0, t, masked, model, opt), masked.mean()


def loss(params, batch, rng, *, model: Transformer, **options):
  """NELBO in nats per token (MDLM eq. 10 / BD3-LM eq. 8). Returns (scalar, metrics)."""
  opt = Options(**options)
  x0 = batch['tokens'][:, :-1]
  per_seq, mask_rate = nelbo_terms(params, x0, rng, model, opt)
  nelbo = per_seq.mean() / x0.shape[1]
  return nelbo, {'nelbo': nelbo, 'bits_per_token': nelbo / jnp.log(2.0), 'mask_rate': mask_rate}


def evaluate(params, batch, rng, *, model: Transformer, **options) -> dict:
  """Held-out NELBO sums over `eval_draws` antithetic t draws: {'nats', 'tokens', 'nats_sq'}.

  'nats_sq' (sum of squared per-sequence, per-draw nats per token) gives the standard error of
  the bound's Monte-Carlo estimate: se = sqrt((E[x^2] - E[x]^2) / n) with n = draws * B.
  """
  opt = Options(**options)
  x0 = batch['tokens'][:, :-1]
  L = x0.shape[1]

  def one(i):
    per_seq, _ = nelbo_terms(params, x0, jax.random.fold_in(rng, i), model, opt)
    return per_seq

  per = jax.lax.map(one, jnp.arange(opt.eval_draws))  # [draws, B]
  return {'nats': per.sum() / opt.eval_draws, 'tokens': jnp.asarray(x0.size, jnp.float32),
          'nats_sq': jnp.sum((per / L) ** 2), 'draws': jnp.asarray(per.size, jnp.float32)}


@dataclasses.dataclass(frozen=True)
class LogitsFn:
  """Sampler seam: (params, tokens [B, T], cache) -> (SUBS logits [B, T, V], cache).

  `ids` (block index per position) switch the network to the block-causal mask used to decode
  BD3 models block by block against a KV cache of finished blocks. `attn_mask` [B, 1|H, T, S]
  bool is AND-ed on top of the mask (the approximate caches of `sample.dllm_cache` hide stale
  cache slots with it).
  """
  model: Transformer
  mask_id: int = 257
  time_conditioning: bool = False  # what the model was trained with (`loss.time_conditioning`)

  def __post_init__(self):
    if not 0 <= self.mask_id < self.model.cfg.vocab_size:
      raise ValueError(f'mask_id={self.mask_id} is outside the vocabulary [0, {self.model.cfg.vocab_size})')
    if self.time_conditioning:
      raise NotImplementedError(
          'the samplers are time-agnostic (RADD): they call the network without t, which is exact '
          'only for models trained with loss.time_conditioning=False')

  def __call__(self, params, tokens, cache, positions=None, ids=None, attn_mask=None):
    model = self.model
    if ids is not None:
      model = Transformer(dataclasses.replace(model.cfg, mask='block_causal'))
    cond = jnp.zeros((tokens.shape[0], model.cfg.cond_dim)) if model.cfg.cond_dim else None
    logits, cache = model.apply({'params': params}, tokens, positions=positions, ids=ids,
                                cache=cache, cond=cond, attn_mask=attn_mask)
    return logits.at[..., self.mask_id].set(MASK_LOGIT), cache
