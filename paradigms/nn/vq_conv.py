"""Convolutional encoder, decoder and phi of the VQ-VAE tokenizer (VQGAN-style, Esser et al. 2021).

    Encoder  x [B, H, W, C] -> f [B, h, w, Cz],  h = H / 2^(n-1) for n = len(channel_mult):
      conv3x3 -> for i < n: n_res ResBlocks at width base * mult[i], then a stride-2 conv3x3
      (not after the last level) -> ResBlock -> GroupNorm -> SiLU -> conv3x3 to Cz
    Decoder  f_hat [B, h, w, Cz] -> x [B, H, W, C], the mirror image:
      conv3x3 to base * mult[-1] -> ResBlock -> for i = n-1..0: n_res ResBlocks at
      base * mult[i], then nearest 2x upsampling + conv3x3 (not after level 0)
      -> GroupNorm -> SiLU -> conv3x3 to C
    ResBlock  h = conv3x3(SiLU(GN(x))); h = conv3x3(SiLU(GN(h))); out = skip(x) + h, with skip a
      1x1 conv when the width changes (DDPM's block without the time input; Ho et al. 2020).
    Phi       phi(z) = (1 - r) z + r conv_kxk(z) (VAR's `quant_resi`, Tian et al. 2024, sec. 3.2).

VQGAN's attention blocks are left out: at the latent grids of small images (8x8 for 32 px) the
convs already see the whole grid. Params are plain arrays (no logical axis names), so the
trainer replicates them on every device: the tokenizer is small and trains data parallel.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

Dtype = jnp.dtype


def group_count(width: int, norm_groups: int) -> int:
  """GroupNorm groups at `width` channels: `norm_groups`, or one channel each when narrower."""
  return min(norm_groups, width)


def conv(features: int, kernel: int = 3, *, name: str, dtype, param_dtype, strides: int = 1,
         padding='SAME') -> nn.Conv:
  """A kernel x kernel convolution (built inside a compact module; Flax's LeCun-normal init)."""
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding=padding,
                 name=name, dtype=dtype, param_dtype=param_dtype)


def norm(width: int, norm_groups: int, *, name: str, dtype, param_dtype) -> nn.GroupNorm:
  return nn.GroupNorm(group_count(width, norm_groups), name=name, dtype=dtype,
                      param_dtype=param_dtype)


class ResBlock(nn.Module):
  """Pre-activation residual block: [B, H, W, Cin] -> [B, H, W, width]."""
  width: int
  norm_groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = x
    for i in range(2):
      h = norm(h.shape[-1], self.norm_groups, name=f'norm{i}', **kw)(h)
      h = conv(self.width, name=f'conv{i}', **kw)(nn.silu(h))
    if x.shape[-1] != self.width:
      x = conv(self.width, 1, name='skip', **kw)(x)
    return x + h


class Encoder(nn.Module):
  """x [B, H, W, C] -> f [B, H / 2^(n-1), W / 2^(n-1), latent_dim] (see the module doc)."""
  base_channels: int
  channel_mult: Sequence[int]
  n_res_blocks: int
  latent_dim: int
  norm_groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    block = dict(norm_groups=self.norm_groups, **kw)
    n = len(self.channel_mult)
    h = conv(self.base_channels * self.channel_mult[0], name='conv_in', **kw)(x)
    for i, m in enumerate(self.channel_mult):
      for j in range(self.n_res_blocks):
        h = ResBlock(self.base_channels * m, name=f'down{i}_block{j}', **block)(h)
      if i < n - 1:  # VQGAN's downsampling: pad right/bottom by one, stride-2 conv3x3
        h = conv(h.shape[-1], strides=2, padding=((0, 1), (0, 1)), name=f'down{i}', **kw)(h)
    h = ResBlock(h.shape[-1], name='mid', **block)(h)
    h = norm(h.shape[-1], self.norm_groups, name='norm_out', **kw)(h)
    return conv(self.latent_dim, name='conv_out', **kw)(nn.silu(h))


class Decoder(nn.Module):
  """f_hat [B, h, w, Cz] -> x [B, h 2^(n-1), w 2^(n-1), channels] (see the module doc)."""
  base_channels: int
  channel_mult: Sequence[int]
  n_res_blocks: int
  channels: int
  norm_groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    block = dict(norm_groups=self.norm_groups, **kw)
    h = conv(self.base_channels * self.channel_mult[-1], name='conv_in', **kw)(z)
    h = ResBlock(h.shape[-1], name='mid', **block)(h)
    for i in reversed(range(len(self.channel_mult))):
      for j in range(self.n_res_blocks):
        h = ResBlock(self.base_channels * self.channel_mult[i], name=f'up{i}_block{j}',
                     **block)(h)
      if i > 0:  # nearest-neighbour 2x, then conv3x3
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
        h = conv(h.shape[-1], name=f'up{i}', **kw)(h)
    h = norm(h.shape[-1], self.norm_groups, name='norm_out', **kw)(h)
    return conv(self.channels, name='conv_out', **kw)(nn.silu(h))


class Phi(nn.Module):
  """VAR's residual refinement phi(z) = (1 - ratio) z + ratio conv_kxk(z): [B, h, w, Cz] -> same.
  Runs in float32 (VAR quantises with autocast off)."""
  ratio: float = 0.5
  kernel: int = 3

  @nn.compact
  def __call__(self, z):
    z = z.astype(jnp.float32)
    h = conv(z.shape[-1], self.kernel, name='conv', dtype=jnp.float32,
             param_dtype=jnp.float32)(z)
    return (1.0 - self.ratio) * z + self.ratio * h
