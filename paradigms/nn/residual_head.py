"""A per-token MLP denoiser: MAR's diffusion head (Li et al. 2024), used by HART for the residual.

MAR ("Autoregressive Image Generation without Vector Quantization", sec. 3.3 and its
SimpleMLPAdaLN) models p(x | z) of one continuous token x [Cz] given the transformer's vector z
with a small diffusion model: residual MLP blocks with adaLN on c = MLP(sinusoid(c_noise)) + W z,
trained with the diffusion loss L(z, x) = E ||F(x_sigma | sigma, z) - F*||^2 (MAR eq. 2 with
our objectives, paradigms.image_diffusion). HART (Tang et al. 2024, sec. 3.3) conditions it on
the last-layer hidden state of the token that predicted the last scale plus that token's
embedding, and samples it in 8 steps.

    h = Linear(x)                                                         # [N, W]
    c = MLP(sinusoid(1000 c_noise)) + Linear(z)                           # [N, W]
    h += gate * MLP(modulate(LN(h), shift, scale)),  (shift, scale, gate) = adaLN-Zero(c)
    F = Linear(modulate(LN(h), adaLN(c)))  (zero-init)                    # [N, Cz]

The module has the DiT's call signature (x, c_noise, cond, step) so `image_diffusion`'s loss,
adapters and `Denoiser` seam, and every sampler in sample/image_diffusion.py, apply unchanged.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from paradigms.nn.dit import timestep_features
from paradigms.nn.layers import AdaLN, modulate, normal_init, zeros_init


@dataclasses.dataclass(frozen=True)
class HeadConfig:
  """The head's fields: token size Cz, condition size, width W and depth."""
  token_dim: int = 32  # Cz
  cond_dim: int = 128  # size of z
  width: int = 256  # W
  depth: int = 3  # residual blocks (MAR's default)
  freq_dim: int = 128  # sinusoidal features of the noise condition
  step_conditioning: bool = False  # (the Denoiser seam asks; heads are never step-conditioned)

  def __post_init__(self):
    for name in ('token_dim', 'cond_dim', 'width', 'depth', 'freq_dim'):
      if getattr(self, name) < 1:
        raise ValueError(f'head {name}={getattr(self, name)} must be >= 1')

  def num_params(self) -> int:
    """Exact parameter count (tested against the initialised tree)."""
    W, C, Z, F = self.width, self.token_dim, self.cond_dim, self.freq_dim
    stem = C * W + W + F * W + W + W * W + W + Z * W + W
    block = W + 3 * W * (W + 1) + 2 * (W * W + W)  # norm + adaLN(3) + 2 linears
    final = W + 2 * W * (W + 1) + W * C + C
    return stem + self.depth * block + final


class ResidualHead(nn.Module):
  """x: [N, Cz]; c_noise: [N]; cond: [N, cond_dim] float (z); step: ignored (None).
  Returns the network output F [N, Cz] float32 (its meaning is the objective's)."""
  cfg: HeadConfig

  @nn.compact
  def __call__(self, x, c_noise, cond, step=None):
    cfg = self.cfg
    W = cfg.width
    if x.shape[-1] != cfg.token_dim or cond.shape[-1] != cfg.cond_dim:
      raise ValueError(f'ResidualHead expects x [N, {cfg.token_dim}] and cond [N, {cfg.cond_dim}], '
                       f'got {x.shape} and {cond.shape}')

    def dense(h, n_out, name, std=None):
      n_in = h.shape[-1]
      init = (zeros_init((None, None)) if std == 0 else
              normal_init(std or n_in ** -0.5, (None, None)))
      w = self.param(f'{name}_w', init, (n_in, n_out))
      return h @ w + self.param(f'{name}_b', zeros_init((None,)), (n_out,))

    def norm(h, name):  # LayerNorm without affine parameters in MAR; here with a scale
      h = (h - h.mean(-1, keepdims=True)) * jax.lax.rsqrt(h.var(-1, keepdims=True) + 1e-6)
      return h * self.param(f'{name}_scale', nn.initializers.ones, (h.shape[-1],))

    t = timestep_features(c_noise, cfg.freq_dim)  # [N, F]
    c = dense(nn.silu(dense(t, W, 't1', std=0.02)), W, 't2', std=0.02) + dense(cond, W, 'z')
    h = dense(x.astype(jnp.float32), W, 'in')[:, None, :]  # [N, 1, W]
    for i in range(cfg.depth):
      shift, scale, gate = AdaLN(W, 3, name=f'block{i}_adaln')(c)  # [N, 1, W] each
      u = modulate(norm(h, f'block{i}_norm'), shift, scale)
      u = dense(nn.silu(dense(u, W, f'block{i}_fc1')), W, f'block{i}_fc2')
      h = h + gate * u
    shift, scale = AdaLN(W, 2, name='final_adaln')(c)
    h = modulate(norm(h, 'final_norm'), shift, scale)
    return dense(h, cfg.token_dim, 'out', std=0)[:, 0].astype(jnp.float32)
