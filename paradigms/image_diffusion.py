"""Continuous image diffusion: one denoiser D(x; sigma, cond) for eps, v, x0, EDM and flow nets.

Every objective is written in EDM's variance-exploding coordinates (Karras et al. 2022):
    x = x0 + sigma n,  n ~ N(0, I)                                       (EDM eq. 1, s(t) = 1)
A VP/DDPM state is x_vp = a x with a = 1/sqrt(1 + sigma^2) (abar = a^2), and a rectified-flow
state is x_t = (1 - t) x0 + t n = x / (1 + sigma) with t = sigma / (1 + sigma). Each objective
fixes how the network F sees x (`net_input`), what it predicts (`target`) and how its output
becomes the denoised estimate (`denoise`):

  objective  input           c_noise        D(x; sigma) from F            target F*
  eps        a x             ln(sigma)/4    x - sigma F                   n            (DDPM)
  v          a x             ln(sigma)/4    a^2 x - a sigma F             a n - a sigma x0  (Salimans & Ho 2022)
  x0         a x             ln(sigma)/4    F                             x0
  edm        c_in x          ln(sigma)/4    c_skip x + c_out F            (x0 - c_skip x)/c_out  (EDM Table 1)
  flow       x / (1 + sigma) t              x/(1+sigma) - t F             n - x0       (SD3)

Training noise levels: DDPM's discrete schedules (linear, cosine) for eps/v/x0; EDM's
log-normal ln sigma ~ N(P_mean, P_std^2); SD3's logit-normal t = sigmoid(u), u ~ N(m, s^2) for
flow. The loss is ||F - F*||^2, which for EDM is exactly its weighted loss
lambda(sigma) ||D - x0||^2 with lambda = (sigma^2 + sigma_d^2)/(sigma sigma_d)^2 = 1/c_out^2
(EDM eq. 8). Labels are dropped (set to the null label 0) with probability `label_dropout` so
the same network is also the unconditional model for classifier-free guidance.

Shortcut models (Frans et al. 2024, flow objective only): the network also takes a step-size
index k, d = 2^-k. A share `shortcut_fraction` of each batch is trained on the self-consistency
target s(x_t, t, 2d) = (s(x_t, t, d) + s(x', t - d, d)) / 2 with x' = x_t - d s(x_t, t, d)
(t = 1 is noise here, so steps go down in t), the rest on flow matching at the finest step
d = 1/M. Targets come from the current parameters under stop_gradient.

Batch: {'image': float32 [B, H, W, C] in [-1, 1], 'label': int32 [B, S]}.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from paradigms.nn.dit import DiT, DiTConfig

Config = DiTConfig
OBJECTIVES = ('eps', 'v', 'x0', 'edm', 'flow')
VP_SCHEDULES = ('linear', 'cosine')


@dataclasses.dataclass(frozen=True)
class Options:
  """The loss's knobs (`config.loss`)."""
  objective: str = 'flow'  # one of OBJECTIVES
  sigma_data: float = 0.5  # EDM's data std (images in [-1, 1])
  p_mean: float = -1.2  # EDM: ln sigma ~ N(p_mean, p_std^2)
  p_std: float = 1.2
  vp_schedule: str = 'cosine'  # DDPM beta schedule for eps/v/x0: 'linear' | 'cosine'
  vp_steps: int = 1000  # DDPM's T
  flow_mean: float = 0.0  # SD3 logit-normal t: t = sigmoid(u), u ~ N(flow_mean, flow_std^2)
  flow_std: float = 1.0
  label_dropout: float = 0.1  # probability a label is replaced by the null label (CFG)
  shortcut_fraction: float = 0.0  # > 0: shortcut model; share of the batch on bootstrap targets
  shortcut_steps: int = 128  # M: the finest step is d = 1/M (a power of two)

  def __post_init__(self):
    if self.objective not in OBJECTIVES:
      raise ValueError(f'loss.objective={self.objective!r}: choose one of {OBJECTIVES}')
    if self.vp_schedule not in VP_SCHEDULES:
      raise ValueError(f'loss.vp_schedule={self.vp_schedule!r}: choose one of {VP_SCHEDULES}')
    if not 0 <= self.label_dropout < 1:
      raise ValueError(f'loss.label_dropout={self.label_dropout} must be in [0, 1)')
    if self.shortcut_fraction:
      if self.objective != 'flow':
        raise ValueError("loss.shortcut_fraction > 0 (shortcut models) needs loss.objective='flow'")
      if not 0 < self.shortcut_fraction < 1:
        raise ValueError(f'loss.shortcut_fraction={self.shortcut_fraction} must be in (0, 1)')
    if self.shortcut_steps < 2 or self.shortcut_steps & (self.shortcut_steps - 1):
      raise ValueError(f'loss.shortcut_steps={self.shortcut_steps} must be a power of two >= 2')

  @property
  def max_step_index(self) -> int:
    return int(math.log2(self.shortcut_steps))


# --- Noise levels ------------------------------------------------------------------------------

def vp_alpha_bar(schedule: str = 'linear', T: int = 1000) -> np.ndarray:
  """abar_t, t = 0..T-1 (float64 [T]) of a discrete VP schedule: abar_t = prod_{s<=t} (1 - beta_s).
  - 'linear': DDPM (Ho et al. 2020), beta linear from 1e-4 to 0.02 at T = 1000 (both scaled by
    1000/T otherwise, as in Nichol & Dhariwal's code);
  - 'cosine': Nichol & Dhariwal 2021 eq. 17, f(t) = cos((t/T + s)/(1 + s) pi/2)^2, s = 0.008,
    beta_t = min(1 - f(t+1)/f(t), 0.999)."""
  if schedule == 'linear':
    scale = 1000 / T
    betas = np.linspace(scale * 1e-4, scale * 0.02, T, dtype=np.float64)
  elif schedule == 'cosine':
    f = lambda t: np.cos((t / T + 0.008) / 1.008 * np.pi / 2) ** 2
    t = np.arange(T, dtype=np.float64)
    betas = np.minimum(1 - f(t + 1) / f(t), 0.999)
  else:
    raise ValueError(f"schedule must be 'linear' or 'cosine', got {schedule!r}")
  return np.cumprod(1 - betas)


def vp_sigma_table(schedule: str = 'cosine', T: int = 1000) -> np.ndarray:
  """The VE noise levels of a DDPM schedule, sigma_t = sqrt((1 - abar_t) / abar_t): float64 [T]."""
  abar = vp_alpha_bar(schedule, T)
  return np.sqrt((1.0 - abar) / abar)


def edm_precond(sigma, sigma_data: float = 0.5):
  """EDM preconditioning (Karras et al. 2022, Table 1): (c_skip, c_out, c_in, c_noise)."""
  s2, d2 = sigma ** 2, sigma_data ** 2
  c_skip = d2 / (s2 + d2)
  c_out = sigma * sigma_data / jnp.sqrt(s2 + d2)
  c_in = 1.0 / jnp.sqrt(s2 + d2)
  c_noise = jnp.log(sigma) / 4.0
  return c_skip, c_out, c_in, c_noise


def _bcast(v, x):
  """[B] -> [B, 1, ..., 1] to broadcast against x [B, ...]."""
  return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


def net_input(objective: str, x, sigma, sigma_data: float = 0.5):
  """What the network sees at VE state x [B, ...] and noise level sigma [B]: (x_in, c_noise [B])."""
  s = _bcast(sigma, x)
  if objective == 'flow':
    return x / (1.0 + s), sigma / (1.0 + sigma)
  if objective == 'edm':
    _, _, c_in, c_noise = edm_precond(sigma, sigma_data)
    return _bcast(c_in, x) * x, c_noise
  return x * jax.lax.rsqrt(1.0 + s ** 2), jnp.log(sigma) / 4.0


def denoise(objective: str, F, x, sigma, sigma_data: float = 0.5):
  """The adapter (see the module table): network output F [B, ...] at VE state x -> D(x; sigma)."""
  s = _bcast(sigma, x)
  if objective == 'eps':
    return x - s * F
  if objective == 'v':
    a2 = 1.0 / (1.0 + s ** 2)
    return a2 * x - jnp.sqrt(a2) * s * F
  if objective == 'x0':
    return F
  if objective == 'edm':
    c_skip, c_out, _, _ = edm_precond(s, sigma_data)
    return c_skip * x + c_out * F
  if objective == 'flow':
    return (x - s * F) / (1.0 + s)
  raise ValueError(f'objective {objective!r}: choose one of {OBJECTIVES}')


def target(objective: str, x0, n, sigma, sigma_data: float = 0.5):
  """F* with denoise(objective, F*, x0 + sigma n, sigma) == x0 (the regression target)."""
  s = _bcast(sigma, x0)
  if objective == 'eps':
    return n
  if objective == 'v':
    a = jax.lax.rsqrt(1.0 + s ** 2)
    return a * n - a * s * x0
  if objective == 'x0':
    return x0
  if objective == 'edm':
    c_skip, c_out, _, _ = edm_precond(s, sigma_data)
    return (x0 - c_skip * (x0 + s * n)) / c_out
  if objective == 'flow':
    return n - x0
  raise ValueError(f'objective {objective!r}: choose one of {OBJECTIVES}')


def draw_sigma(rng, batch: int, opts: Options):
  """Training noise levels sigma [B] for the objective (see the module doc)."""
  if opts.objective == 'edm':
    return jnp.exp(opts.p_mean + opts.p_std * jax.random.normal(rng, (batch,)))
  if opts.objective == 'flow':
    t = jax.nn.sigmoid(opts.flow_mean + opts.flow_std * jax.random.normal(rng, (batch,)))
    return t / (1.0 - t)
  table = jnp.asarray(vp_sigma_table(opts.vp_schedule, opts.vp_steps), jnp.float32)  # [T]
  return table[jax.random.randint(rng, (batch,), 0, opts.vp_steps)]


# --- The paradigm contract ---------------------------------------------------------------------

def build(cfg: DiTConfig) -> DiT:
  return DiT(cfg)


def example_batch(batch_size: int, data, model_cfg) -> dict:
  """Shapes of one batch from the data config: images [B, H, W, C] with H = data.image_size and
  W = data.image_width (0 or absent: W = H); every image source gives labels of
  `data.max_chars` slots (glyph strings; a class id in slot 0; all-null when unlabelled)."""
  label_len = data.max_chars
  width = getattr(data, 'image_width', 0) or data.image_size
  return {'image': jax.ShapeDtypeStruct((batch_size, data.image_size, width, data.channels),
                                        jnp.float32),
          'label': jax.ShapeDtypeStruct((batch_size, label_len), jnp.int32)}


def init(model: DiT, rng, batch) -> dict:
  x = batch['image']
  B = x.shape[0]
  step = jnp.zeros((B,), jnp.int32) if model.cfg.step_conditioning else None
  return model.init(rng, x, jnp.zeros((B,)), batch['label'], step)


def _check(model: DiT, opts: Options) -> None:
  if opts.shortcut_fraction and not model.cfg.step_conditioning:
    raise ValueError('loss.shortcut_fraction > 0 needs model.step_conditioning=True')
  if model.cfg.step_conditioning and model.cfg.max_step_index != opts.max_step_index:
    raise ValueError(f'model.max_step_index={model.cfg.max_step_index} must equal '
                     f'log2(loss.shortcut_steps)={opts.max_step_index}')


def per_example_loss(params, batch, rng, *, model: DiT, opts: Options, train: bool = True):
  """||F - F*||^2 averaged over pixels, per example: [B]; plus the sigmas drawn [B]."""
  x0, label = batch['image'], batch['label']
  B = x0.shape[0]
  r_sigma, r_noise, r_drop, r_short = jax.random.split(rng, 4)
  if train and opts.label_dropout:
    keep = jax.random.uniform(r_drop, (B, 1)) >= opts.label_dropout
    label = jnp.where(keep, label, 0)
  sigma = draw_sigma(r_sigma, B, opts)
  n = jax.random.normal(r_noise, x0.shape)
  step = None
  if model.cfg.step_conditioning:
    step = jnp.full((B,), opts.max_step_index, jnp.int32)  # flow matching at the finest d
  x = x0 + _bcast(sigma, x0) * n
  F_star = target(opts.objective, x0, n, sigma, opts.sigma_data)
  if train and opts.shortcut_fraction:
    x, sigma, step, F_star = _shortcut_targets(params, model, opts, x, sigma, step, F_star,
                                               label, r_short)
  x_in, c_noise = net_input(opts.objective, x, sigma, opts.sigma_data)
  F = model.apply({'params': params}, x_in, c_noise, label, step)
  return jnp.mean((F - F_star) ** 2, axis=tuple(range(1, x0.ndim))), sigma


def _shortcut_targets(params, model, opts, x, sigma, step, F_star, label, rng):
  """Replace the first round(fraction B) rows by shortcut self-consistency targets
  (Frans et al. 2024, eq. 5), in flow time t = sigma / (1 + sigma) with t = 1 noise."""
  B = x.shape[0]
  nb = max(1, int(round(opts.shortcut_fraction * B)))
  r_k, r_j = jax.random.split(rng)
  k = jax.random.randint(r_k, (nb,), 0, opts.max_step_index)  # the step 2d being taught
  d = 2.0 ** -(k + 1.0)  # half step, taught as step index k + 1
  j = jax.random.randint(r_j, (nb,), 0, 2 ** 30) % (2 ** (k + 1)) + 1  # t = j d in {d, ..., 1}
  t = j * d
  # Recover (x0, n) of these rows from their VE state, then place them at the new t.
  t_old = sigma[:nb] / (1.0 + sigma[:nb])
  xt_old = x[:nb] / (1.0 + _bcast(sigma[:nb], x[:nb]))
  # x0 - n pair: F* = n - x0 and x_t = (1 - t) x0 + t n  =>  x0 = x_t - t F*, n = x0 + F*.
  x0 = xt_old - _bcast(t_old, xt_old) * F_star[:nb]
  n = x0 + F_star[:nb]
  xt = (1.0 - _bcast(t, x0)) * x0 + _bcast(t, x0) * n
  lab = label[:nb]
  teacher = jax.lax.stop_gradient(params)

  def velocity(x_t, t_, idx):
    return model.apply({'params': teacher}, x_t, t_, lab, idx)

  s1 = velocity(xt, t, k + 1)
  x_mid = xt - _bcast(d, xt) * s1
  s2 = velocity(x_mid, t - d, k + 1)
  boot = jax.lax.stop_gradient(0.5 * (s1 + s2))
  sig = t / jnp.maximum(1.0 - t, 1e-6)  # t = 1 -> a huge but finite sigma
  x_ve = xt * (1.0 + _bcast(sig, xt))
  return (x.at[:nb].set(x_ve), sigma.at[:nb].set(sig), step.at[:nb].set(k),
          F_star.at[:nb].set(boot))


def loss(params, batch, rng, *, model: DiT, **options):
  """Mean ||F - F*||^2 over the batch (see the module doc). Returns (scalar, metrics)."""
  opts = Options(**options)
  _check(model, opts)
  per, sigma = per_example_loss(params, batch, rng, model=model, opts=opts)
  mse = per.mean()
  return mse, {'mse': mse, 'mean_log_sigma': jnp.mean(jnp.log(sigma))}


def evaluate(params, batch, rng, *, model: DiT, **options) -> dict:
  """Held-out sums: {'mse_sum': sum of per-image losses, 'count': images}. No label dropout,
  no shortcut rows; noise levels drawn from the training distribution with the given rng (the
  trainer passes a fixed rng per eval batch, so the figure is comparable across steps)."""
  opts = Options(**options)
  per, _ = per_example_loss(params, batch, rng, model=model, opts=opts, train=False)
  return {'mse_sum': per.sum(), 'count': jnp.asarray(per.shape[0], jnp.float32)}


@dataclasses.dataclass(frozen=True)
class Denoiser:
  """The image sampler seam: `(params, x [B, H, W, C], sigma [B], label [B, S]) -> D(x; sigma)`.

  Hashable by value, so jitted samplers compile once per model. `step` is the shortcut
  step-size index k (d = 2^-k) for step-conditioned models, or None for the finest step."""
  model: DiT
  objective: str = 'flow'
  sigma_data: float = 0.5
  step: int | None = None

  def __call__(self, params, x, sigma, label):
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (x.shape[0],))
    step = None
    if self.model.cfg.step_conditioning:
      k = self.model.cfg.max_step_index if self.step is None else self.step
      step = jnp.full((x.shape[0],), k, jnp.int32)
    x_in, c_noise = net_input(self.objective, x, sigma, self.sigma_data)
    F = self.model.apply({'params': params}, x_in, c_noise, label, step)
    return denoise(self.objective, F, x, sigma, self.sigma_data)
