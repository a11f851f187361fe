"""Samplers for continuous (image) diffusion, written once in EDM's variance-exploding coordinates.

x_sigma = x0 + sigma n, n ~ N(0, I) (Karras et al. 2022, "EDM", with s(t) = 1, sigma(t) = t).
The seam is EDM's denoiser D(x; sigma):

  denoise_fn(params, x [B, ...], sigma [B] float32, cond) -> x0_hat [B, ...]

`denoise_fn` is a static argument (hashable by value, e.g. a frozen dataclass); `cond` is any
pytree (labels, embeddings; leaves with a leading batch axis), passed through untouched. VP/DDPM
models (x_vp = x / sqrt(1 + sigma^2), abar = 1 / (1 + sigma^2)) and rectified-flow models
(t = sigma / (1 + sigma), x_flow = x / (1 + sigma)) are adapted to D on the model side.

Every sampler is one step function run by ONE jitted `lax.scan` over the grid (`sample`):

| method | step x_t -> x_s (sigma_t -> sigma_s) | NFE over N steps |
|---|---|---|
| `ddim` | DDIM (Song et al. 2021, eq. 12) in VE coordinates, any eta | N |
| `ddpm` | ancestral DDPM (Ho et al. 2020) posterior step = `ddim` with eta = 1 | N |
| `euler` | EDM Algorithm 1 without the 2nd-order correction (PF-ODE Euler) | N |
| `heun` | EDM Algorithm 2 (Heun, with optional churn) | 2N - 1 |
| `dpmpp_2m` | DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), lambda = -log sigma | N |

Conventions:
- Grids (`karras_sigmas`, `uniform_sigmas`, `vp_sigmas`, `flow_sigmas`) are float32 [N + 1],
  strictly descending, ending with sigma_N = 0 (EDM's t_N = 0); the last step returns x0_hat.
- Samplers take `x_T` [B, ...], the start at sigma_0 (e.g. `sigmas[0] * n`), or a shape tuple,
  in which case x_T = sigmas[0] * N(0, I) is drawn from `split(rng)[0]`; the steps always use
  `split(rng)[1]` (step i: `fold_in(., i)`), so results are deterministic given rng. The state
  is float32 whatever the model's dtype.
- They return `SampleOutput(x [B, ...] float32, nfe [] int32)`. NFE counts calls of the
  sampler's denoise_fn; a `cfg_denoiser` call is ONE call on a 2B batch (twice the FLOPs of an
  unguided call): double it to compare with papers that count guided calls as 2.
- `cfg_denoiser` (guidance), `inpaint` (RePaint) and `sdedit` compose with every method.
- DDIM with eta = 0 is the same update as Euler in these coordinates, and Euler on a
  `flow_sigmas` grid is exactly the rectified-flow Euler step x <- x + (t_next - t) v.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from paradigms.image_diffusion import vp_alpha_bar  # the one definition of the DDPM schedules


@struct.dataclass
class SamplerState:
  """Carry of the generic loop, the same for every method."""
  x: jax.Array  # [B, ...] float32 sample at the current sigma
  x0_hat: jax.Array  # [B, ...] float32 last D(x; sigma_hat) (DPM-Solver++(2M) history)
  sigma_hat: jax.Array  # [] float32 sigma where x0_hat was taken; 0 = no history
  nfe: jax.Array  # [] int32 calls of denoise_fn so far


@struct.dataclass
class SampleOutput:
  x: jax.Array  # [B, ...] float32 sample at sigmas[-1] (0: clean)
  nfe: jax.Array  # [] int32 calls of denoise_fn


# --- Noise-level grids: float32 [N + 1], descending, last = 0 --------------------------------

def _grid(sigmas) -> jax.Array:
  return jnp.asarray(np.append(np.asarray(sigmas, np.float64), 0.0), jnp.float32)


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                  rho: float = 7.0) -> jax.Array:
  """EDM time steps (Karras et al. 2022, eq. 5): for i < N,
  sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, and
  sigma_N = 0. n = N steps; n = 1 gives [sigma_max, 0]. Returns [n + 1] float32."""
  _check_n(n)
  i = np.arange(n) / max(n - 1, 1)
  a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
  return _grid((a + i * (b - a)) ** rho)


def uniform_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0) -> jax.Array:
  """Uniform in sigma, the VE process's own time (EDM's sigma(t) = t; = `karras_sigmas` with
  rho = 1): sigma_i = sigma_max + i/(N-1) (sigma_min - sigma_max), then 0. Crowds no steps at
  low noise, so it is a poor grid for images; uniform DDPM timesteps are `vp_sigmas`, uniform
  flow time is `flow_sigmas`. Returns [n + 1] float32."""
  return karras_sigmas(n, sigma_min, sigma_max, rho=1.0)


def vp_sigmas(n: int, schedule: str = 'linear', T: int = 1000) -> jax.Array:
  """DDIM's uniformly strided timesteps (Song et al. 2021, 'uniform' skip: t = 0, c, ..., (n-1)c
  with c = T // n, run from the largest down) of a discrete VP schedule (`vp_alpha_bar`), as
  sigma_t = sqrt((1 - abar_t)/abar_t), then 0 (DDIM's abar_prev = 1 at the last step). The
  sigmas are exactly the model's trained timesteps, so a VP adapter can invert them exactly.
  Returns [n + 1] float32."""
  _check_n(n)
  if n > T:
    raise ValueError(f'n={n} steps needs n <= T={T}')
  abar = vp_alpha_bar(schedule, T)[np.arange(n)[::-1] * (T // n)]
  return _grid(np.sqrt((1 - abar) / abar))


def flow_sigmas(n: int, shift: float = 1.0, t_max: float = 1 - 1e-3) -> jax.Array:
  """Rectified-flow grid (SD3 convention, t = 1 is noise; Esser et al. 2024): t_i = 1 - i/N,
  shifted t' = k t / (1 + (k - 1) t) with k = shift, mapped to sigma = t' / (1 - t').
  t' = 1 (sigma = inf) is clipped to t_max (default 0.999: sigma_0 = 999, where x_flow =
  x / (1 + sigma) is 0.999 n + 0.001 x0); raises if the next point is already above t_max.
  Returns [n + 1] float32, ending with t' = 0, sigma = 0."""
  _check_n(n)
  t = np.linspace(1.0, 0.0, n + 1)
  t = shift * t / (1 + (shift - 1) * t)
  if n > 1 and t[1] >= t_max:
    raise ValueError(f't_max={t_max} is below the second grid point t={t[1]:.6f}; raise t_max')
  t[0] = min(t[0], t_max)
  return jnp.asarray(t / (1 - t), jnp.float32)


# --- One step sigma -> sigma_next of each method ----------------------------------------------
# step(denoise_fn, params, state, sigma [], sigma_next [], cond, rng, *, n_steps, **options)
#   -> state; n_steps = N of the grid (EDM's churn uses it); sigma > 0, sigma_next >= 0.

def _denoise(denoise_fn, params, x, sigma, cond):
  """D(x; sigma) with sigma [] broadcast to [B]; float32 [B, ...]."""
  s = jnp.full((x.shape[0],), sigma, jnp.float32)
  return denoise_fn(params, x, s, cond).astype(jnp.float32)


def euler_step(denoise_fn, params, s: SamplerState, sigma, sigma_next, cond, rng, *, n_steps):
  """Euler step of the probability-flow ODE dx/dsigma = (x - D(x; sigma))/sigma (EDM Algorithm 1,
  lines 4-5, no correction). On a flow grid this is x_flow <- x_flow + (t_next - t) v. 1 NFE."""
  x0 = _denoise(denoise_fn, params, s.x, sigma, cond)
  x = jnp.where(sigma_next > 0, s.x + (sigma_next - sigma) * (s.x - x0) / sigma, x0)
  return s.replace(x=x, x0_hat=x0, sigma_hat=sigma, nfe=s.nfe + 1)


def ddim_step(denoise_fn, params, s: SamplerState, sigma, sigma_next, cond, rng, *, n_steps,
              eta=0.0):
  """DDIM (Song et al. 2021, eq. 12) in VE coordinates, t -> s with sigma_t = sigma, sigma_s =
  sigma_next, eta in [0, 1]. 1 NFE.

  Derivation: with abar = 1/(1 + sigma^2), x_vp = x / sqrt(1 + sigma^2) and eps_hat =
  (x_vp - sqrt(abar) x0_hat)/sqrt(1 - abar) = (x - x0_hat)/sigma_t. DDIM's noise scale
  sigma_ddim^2 = eta^2 (1 - abar_s)/(1 - abar_t) (1 - abar_t/abar_s)
              = eta^2 sigma_s^2 (sigma_t^2 - sigma_s^2) / (sigma_t^2 (1 + sigma_s^2)).
  Multiplying eq. 12 by sqrt(1 + sigma_s^2) (back to VE):
    x_s = x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z,  c^2 = eta^2 sigma_s^2 (sigma_t^2 -
    sigma_s^2)/sigma_t^2 = (1 + sigma_s^2) sigma_ddim^2.
  eta = 0: x_s = x + (sigma_s - sigma_t) eps_hat, the Euler step. eta = 1: mean x0_hat +
  sigma_s^2/sigma_t^2 (x_t - x0_hat) and variance c^2 of the posterior q(x_s | x_t, x0_hat).
  """
  x0 = _denoise(denoise_fn, params, s.x, sigma, cond)
  eps = (s.x - x0) / sigma
  c2 = eta ** 2 * sigma_next ** 2 * jnp.maximum(1 - (sigma_next / sigma) ** 2, 0.0)
  z = jax.random.normal(rng, s.x.shape, jnp.float32)
  x = x0 + jnp.sqrt(jnp.maximum(sigma_next ** 2 - c2, 0.0)) * eps + jnp.sqrt(c2) * z
  return s.replace(x=x, x0_hat=x0, sigma_hat=sigma, nfe=s.nfe + 1)


def ddpm_step(denoise_fn, params, s: SamplerState, sigma, sigma_next, cond, rng, *, n_steps):
  """Ancestral DDPM step (Ho et al. 2020, Algorithm 2 with the posterior variance beta_tilde):
  a draw from q(x_s | x_t, x0 = x0_hat), which is exactly `ddim_step` with eta = 1 (same code)."""
  return ddim_step(denoise_fn, params, s, sigma, sigma_next, cond, rng, n_steps=n_steps, eta=1.0)


def heun_step(denoise_fn, params, s: SamplerState, sigma, sigma_next, cond, rng, *, n_steps,
              s_churn=0.0, s_tmin=0.0, s_tmax=float('inf'), s_noise=1.0, flow_space=False):
  """EDM Algorithm 2 (Karras et al. 2022), one iteration i:
  gamma = min(S_churn/N, sqrt2 - 1) if S_tmin <= t_i <= S_tmax else 0; t_hat = t_i (1 + gamma);
  x_hat = x + sqrt(t_hat^2 - t_i^2) S_noise eps; d = (x_hat - D(x_hat; t_hat))/t_hat;
  x' = x_hat + (t_next - t_hat) d; if t_next > 0: d' = (x' - D(x'; t_next))/t_next and
  x' = x_hat + (t_next - t_hat)(d + d')/2. The correction is skipped (`lax.cond`) at t_next = 0,
  so NFE = 2N - 1 over a grid ending at 0. S_churn = 0 is Algorithm 1 (deterministic).

  flow_space=True takes the trapezoidal correction in rectified-flow coordinates instead:
  x_t = x / (1 + sigma), t = sigma / (1 + sigma), whose velocity is dx_t/dt = d - D, and
  x'_t = x_t + (t' - t)(v + v')/2 (the Euler predictor is the same step in both coordinates).
  Flow models' paths are nearly straight in t, not in sigma: on the glyph DiT (flow, w=3) Heun
  at N=4 read 10% of strings in sigma and 60% in t."""
  gamma = jnp.where((s_tmin <= sigma) & (sigma <= s_tmax),
                    jnp.minimum(s_churn / n_steps, math.sqrt(2) - 1), 0.0)
  t_hat = sigma * (1 + gamma)
  eps = s_noise * jax.random.normal(rng, s.x.shape, jnp.float32)
  x_hat = s.x + sigma * jnp.sqrt(gamma * (2 + gamma)) * eps  # = sqrt(t_hat^2 - t_i^2) eps, exact
  x0 = _denoise(denoise_fn, params, x_hat, t_hat, cond)
  d = (x_hat - x0) / t_hat

  def correct():
    x1 = x_hat + (sigma_next - t_hat) * d
    x0_1 = _denoise(denoise_fn, params, x1, sigma_next, cond)
    d1 = (x1 - x0_1) / sigma_next
    in_sigma = x_hat + (sigma_next - t_hat) * 0.5 * (d + d1)
    dt = sigma_next / (1 + sigma_next) - t_hat / (1 + t_hat)
    in_t = (x_hat / (1 + t_hat) + dt * 0.5 * ((d - x0) + (d1 - x0_1))) * (1 + sigma_next)
    return jnp.where(flow_space, in_t, in_sigma)

  x = jax.lax.cond(sigma_next > 0, correct, lambda: x0)
  return s.replace(x=x, x0_hat=x0, sigma_hat=t_hat,
                   nfe=s.nfe + 1 + (sigma_next > 0).astype(jnp.int32))


def dpmpp_2m_step(denoise_fn, params, s: SamplerState, sigma, sigma_next, cond, rng, *, n_steps):
  """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2; k-diffusion `sample_dpmpp_2m`) with alpha = 1,
  lambda = -log sigma. h = lambda_next - lambda, r = h_last / h,
  D' = (1 + 1/(2r)) D(x; sigma) - 1/(2r) D_prev and
  x' = (sigma_next/sigma) x + (1 - sigma_next/sigma) D'  (-expm1(-h) = 1 - sigma_next/sigma).
  First-order (D' = D, the DDIM step) with no history (sigma_hat = 0: first step) and on the last
  step to sigma_next = 0, which returns x0_hat. 1 NFE."""
  x0 = _denoise(denoise_fn, params, s.x, sigma, cond)
  second = (s.sigma_hat > 0) & (sigma_next > 0)
  h = jnp.log(sigma / jnp.where(second, sigma_next, 1.0))
  h_last = jnp.log(jnp.where(second, s.sigma_hat, 1.0) / sigma)
  half_inv_r = jnp.where(second, 0.5 * h / jnp.where(second, h_last, 1.0), 0.0)  # 1/(2r)
  x0_d = (1 + half_inv_r) * x0 - half_inv_r * s.x0_hat
  ratio = sigma_next / sigma
  x = ratio * s.x + (1 - ratio) * x0_d
  return s.replace(x=x, x0_hat=x0, sigma_hat=sigma, nfe=s.nfe + 1)


SAMPLERS = {'ddpm': ddpm_step, 'ddim': ddim_step, 'euler': euler_step, 'heun': heun_step,
            'dpmpp_2m': dpmpp_2m_step}
NFE = {'ddpm': lambda n: n, 'ddim': lambda n: n, 'euler': lambda n: n,
       'heun': lambda n: 2 * n - 1, 'dpmpp_2m': lambda n: n}  # over a grid ending at 0


# --- The one generic loop ----------------------------------------------------------------------

def _check_n(n):
  if not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f'the number of steps must be an int >= 1, got {n!r}')


def _check(method: str, sigmas, min_len: int = 2):
  if method not in SAMPLERS:
    raise ValueError(f'unknown method {method!r}; choose one of {sorted(SAMPLERS)}')
  if isinstance(sigmas, jax.core.Tracer):
    return
  s = np.asarray(sigmas, np.float64)
  if s.ndim != 1 or len(s) < min_len:
    raise ValueError(f'sigmas must be a 1-D grid of >= {min_len} noise levels, got shape {s.shape}')
  if not (np.all(np.isfinite(s)) and np.all(np.diff(s) < 0) and np.all(s[:-1] > 0)
          and s[-1] >= 0):
    raise ValueError('sigmas must be finite, strictly descending, > 0 except a final 0 '
                     '(use karras_sigmas / vp_sigmas / flow_sigmas)')


def _init(x) -> SamplerState:
  x = jnp.asarray(x, jnp.float32)
  return SamplerState(x=x, x0_hat=jnp.zeros_like(x), sigma_hat=jnp.zeros((), jnp.float32),
                      nfe=jnp.zeros((), jnp.int32))


def _loop(method, denoise_fn, params, sigmas, state, cond, rng, options) -> SamplerState:
  """lax.scan of SAMPLERS[method] over steps sigmas[i] -> sigmas[i + 1], rng fold_in(rng, i)."""
  step = SAMPLERS[method]
  n = sigmas.shape[0] - 1

  def body(s, i):
    s = step(denoise_fn, params, s, sigmas[i], sigmas[i + 1], cond, jax.random.fold_in(rng, i),
             n_steps=n, **options)
    return s, None

  return jax.lax.scan(body, state, jnp.arange(n))[0]


def _start(x_T, sigmas, rng):
  """(x_T [B, ...] float32, step rng): x_T given, or sigma_0 N(0, I) of shape x_T drawn."""
  k_init, k_steps = jax.random.split(rng)
  if isinstance(x_T, (tuple, list)):
    x_T = jnp.asarray(sigmas, jnp.float32)[0] * jax.random.normal(k_init, tuple(x_T), jnp.float32)
  return jnp.asarray(x_T, jnp.float32), k_steps


@functools.partial(jax.jit, static_argnames=('method', 'denoise_fn'))
def _sample(method, denoise_fn, params, sigmas, x_T, cond, rng, options) -> SampleOutput:
  s = _loop(method, denoise_fn, params, sigmas, _init(x_T), cond, rng, options)
  return SampleOutput(x=s.x, nfe=s.nfe)


def sample(method: str, denoise_fn: Callable, params, sigmas, x_T, cond, rng,
           **options) -> SampleOutput:
  """Run `method` (a key of SAMPLERS) over the grid `sigmas` [N + 1] from x_T [B, ...] at
  sigmas[0] (or a shape: x_T = sigmas[0] N(0, I) from split(rng)[0]). The whole loop is one
  jitted `lax.scan`; `options` (eta, s_churn, ...) are traced, so changing them does not
  recompile. Returns SampleOutput(x [B, ...], nfe [])."""
  _check(method, sigmas)
  x_T, rng = _start(x_T, sigmas, rng)
  return _sample(method, denoise_fn, params, jnp.asarray(sigmas, jnp.float32), x_T, cond, rng,
                 options)


def ddim(denoise_fn, params, sigmas, x_T, cond, rng, eta: float = 0.0) -> SampleOutput:
  """DDIM (Song et al. 2021, eq. 12) in VE coordinates (`ddim_step`). NFE = N."""
  return sample('ddim', denoise_fn, params, sigmas, x_T, cond, rng, eta=eta)


def ddpm(denoise_fn, params, sigmas, x_T, cond, rng) -> SampleOutput:
  """DDPM ancestral sampling (Ho et al. 2020) = `ddim` with eta = 1 (`ddpm_step`). NFE = N."""
  return sample('ddpm', denoise_fn, params, sigmas, x_T, cond, rng)


def euler(denoise_fn, params, sigmas, x_T, cond, rng) -> SampleOutput:
  """Probability-flow ODE Euler (EDM Algorithm 1 without correction; `euler_step`). NFE = N."""
  return sample('euler', denoise_fn, params, sigmas, x_T, cond, rng)


def heun(denoise_fn, params, sigmas, x_T, cond, rng, s_churn: float = 0.0, s_tmin: float = 0.0,
         s_tmax: float = float('inf'), s_noise: float = 1.0,
         flow_space: bool = False) -> SampleOutput:
  """EDM Algorithm 2 (Karras et al. 2022; `heun_step`; flow_space: its correction in
  rectified-flow time). NFE = 2N - 1."""
  return sample('heun', denoise_fn, params, sigmas, x_T, cond, rng, s_churn=s_churn,
                s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise, flow_space=flow_space)


def dpmpp_2m(denoise_fn, params, sigmas, x_T, cond, rng) -> SampleOutput:
  """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2; `dpmpp_2m_step`). NFE = N."""
  return sample('dpmpp_2m', denoise_fn, params, sigmas, x_T, cond, rng)


# --- Guidance and editing ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CFGDenoiser:
  """Classifier-free guidance as a denoise_fn (see `cfg_denoiser`); hashable, so static."""
  denoise_fn: Callable
  w: float
  null_cond: Any  # a hashable fill value for every cond leaf, or a callable cond -> uncond
  interval: tuple[float, float] | None = None  # (sigma_lo, sigma_hi]

  def __call__(self, params, x, sigma, cond):  # x [B, ...], sigma [B] -> [B, ...]
    if self.w == 1:
      return self.denoise_fn(params, x, sigma, cond)
    if callable(self.null_cond):
      uncond = self.null_cond(cond)
    else:
      uncond = jax.tree.map(lambda c: jnp.full_like(c, self.null_cond), cond)
    B = x.shape[0]
    if self.interval is None:
      inside = jnp.ones((B,), bool)
    else:
      lo, hi = self.interval
      inside = (sigma > lo) & (sigma <= hi)  # [B]

    def guided():
      both = lambda a, b: jnp.concatenate([a, b], axis=0)
      d = self.denoise_fn(params, both(x, x), both(sigma, sigma), jax.tree.map(both, cond, uncond))
      d_c, d_u = d[:B], d[B:]
      d_w = d_u + self.w * (d_c - d_u)
      return jnp.where(inside.reshape((B,) + (1,) * (x.ndim - 1)), d_w, d_c)

    if self.interval is None:
      return guided()
    return jax.lax.cond(jnp.any(inside), guided, lambda: self.denoise_fn(params, x, sigma, cond))


def cfg_denoiser(denoise_fn: Callable, w: float, null_cond: Any,
                 interval: tuple[float, float] | None = None) -> CFGDenoiser:
  """Classifier-free guidance (Ho & Salimans 2022): D_w = D_u + w (D_c - D_u), a new denoise_fn.

  Guiding x0_hat is the same as guiding eps (or a flow's v): at fixed x and sigma,
  eps_hat = (x - x0_hat)/sigma is affine in x0_hat, so eps_u + w (eps_c - eps_u) = (x - D_w)/sigma.
  w = 1 is the conditional model (one unbatched call); w = 0 the unconditional one.
  The conditional and unconditional rows run as ONE call on a [2B] batch (x, sigma and cond
  concatenated along axis 0, cond first), counted as 1 NFE by the samplers. `null_cond`: a
  hashable fill value (e.g. the null class id) for every cond leaf, or a callable cond -> uncond.
  interval = (sigma_lo, sigma_hi): guidance only where sigma_lo < sigma <= sigma_hi
  (Kynkäänniemi et al. 2024), the conditional D elsewhere; when no row is inside, only the
  conditional half runs (`lax.cond`). w is static: a new w compiles a new sampler.
  """
  if interval is not None and not interval[0] < interval[1]:
    raise ValueError(f'interval must be (sigma_lo, sigma_hi), sigma_lo < sigma_hi; got {interval}')
  return CFGDenoiser(denoise_fn, float(w), null_cond,
                     None if interval is None else tuple(float(v) for v in interval))


def repaint_schedule(n: int, resample: int = 1, jump: int = 1) -> np.ndarray:
  """RePaint's time schedule (Lugmayr et al. 2022, `get_schedule_jump`) on grid indices 0..n:
  [K, 2] int32 transitions (i, j); j = i + 1 is a denoising step, j < i re-noises back up.
  After arriving at index n-1-k for k = 0, jump, 2 jump, ... < n - jump, go back up `jump`
  indices, `resample - 1` times, so each such stretch is run `resample` times; the last step
  (to index n) is never repeated."""
  _check_n(n)
  if resample < 1 or jump < 1:
    raise ValueError(f'resample and jump must be >= 1, got {resample}, {jump}')
  left = {n - 1 - k: resample - 1 for k in range(0, n - jump, jump)}
  out, i = [], 0
  while i < n:
    out.append((i, i + 1))
    i += 1
    if left.get(i, 0) > 0:
      left[i] -= 1
      out.append((i, i - jump))
      i -= jump
  return np.asarray(out, np.int32)


@functools.partial(jax.jit, static_argnames=('method', 'denoise_fn'))
def _inpaint(method, denoise_fn, params, sigmas, x_T, known, mask, cond, rng, plan, options):
  step = SAMPLERS[method]
  n = sigmas.shape[0] - 1
  keep = jnp.broadcast_to(mask != 0, x_T.shape)
  known = jnp.asarray(known, jnp.float32)

  def body(s, k):
    i, j = plan[k, 0], plan[k, 1]
    k_step, k_known = jax.random.split(jax.random.fold_in(rng, k))
    z = jax.random.normal(k_known, s.x.shape, jnp.float32)

    def down(s):
      s = step(denoise_fn, params, s, sigmas[i], sigmas[j], cond, k_step, n_steps=n, **options)
      return s.replace(x=jnp.where(keep, known + sigmas[j] * z, s.x))

    def up(s):  # x_j = x_i + sqrt(sigma_j^2 - sigma_i^2) z; multistep history is dropped
      x = s.x + jnp.sqrt(jnp.maximum(sigmas[j] ** 2 - sigmas[i] ** 2, 0.0)) * z
      return s.replace(x=x, sigma_hat=jnp.zeros_like(s.sigma_hat))

    return jax.lax.cond(j > i, down, up, s), None

  s = jax.lax.scan(body, _init(x_T), jnp.arange(plan.shape[0]))[0]
  return SampleOutput(x=s.x, nfe=s.nfe)


def inpaint(method: str, denoise_fn: Callable, params, sigmas, x_T, known, mask, cond, rng,
            resample: int = 1, jump: int = 1, **options) -> SampleOutput:
  """RePaint inpainting (Lugmayr et al. 2022, Algorithm 1) with any step `method` (RePaint's own
  is 'ddpm'). known [B, ...] and mask [B, ...] (broadcastable to x; nonzero = known).

  After every denoising step sigma_i -> sigma_j the known region is replaced by the forward-noised
  known pixels, known + sigma_j z (fresh z); re-noising steps (resample > 1, `repaint_schedule`)
  take the whole x back up: x_i = x_j + sqrt(sigma_i^2 - sigma_j^2) z. The last step goes to
  sigma = 0, so the known pixels of the output equal `known` exactly. One jitted `lax.scan` over
  the schedule; NFE = the method's NFE summed over the denoising steps, e.g. for ddpm with
  jump = 1: (N - 1) resample + 1.
  """
  _check(method, sigmas)
  sigmas = jnp.asarray(sigmas, jnp.float32)
  x_T, rng = _start(x_T, sigmas, rng)
  plan = jnp.asarray(repaint_schedule(sigmas.shape[0] - 1, resample, jump))
  return _inpaint(method, denoise_fn, params, sigmas, x_T, known, jnp.asarray(mask), cond, rng,
                  plan, options)


@functools.partial(jax.jit, static_argnames=('method', 'denoise_fn', 'i0'))
def _sdedit(method, denoise_fn, params, sigmas, x_ref, noise, cond, rng, options, i0):
  sigmas = sigmas[i0:]
  x = jnp.asarray(x_ref, jnp.float32) + sigmas[0] * noise
  s = _loop(method, denoise_fn, params, sigmas, _init(x), cond, rng, options)
  return SampleOutput(x=s.x, nfe=s.nfe)


def sdedit(method: str, denoise_fn: Callable, params, sigmas, x_ref, strength: float, cond, rng,
           noise=None, **options) -> SampleOutput:
  """SDEdit (Meng et al. 2022): perturb x_ref [B, ...] to the grid point i0 = round((1 -
  strength) N) (half up), x = x_ref + sigmas[i0] z, then run `method` over sigmas[i0:].
  strength in (0, 1]: 1 is the full sampler from x_T = x_ref + sigma_0 z (= `sample` with that
  x_T and the same rng); strength <= 1/(2N) runs no step and returns x_ref. z = `noise` [B, ...]
  (standard normal) or drawn from split(rng)[0]; steps use split(rng)[1], as in `sample`.
  NFE = the method's NFE over N - i0 steps.
  """
  if not 0 < strength <= 1:
    raise ValueError(f'strength must be in (0, 1], got {strength}')
  _check(method, sigmas, min_len=1)
  n = np.shape(sigmas)[0] - 1
  i0 = int(np.floor((1 - strength) * n + 0.5))
  k_noise, rng = jax.random.split(rng)
  if noise is None:
    noise = jax.random.normal(k_noise, np.shape(x_ref), jnp.float32)
  return _sdedit(method, denoise_fn, params, jnp.asarray(sigmas, jnp.float32), x_ref,
                 jnp.asarray(noise, jnp.float32), cond, rng, options, i0)
