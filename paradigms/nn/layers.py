"""Small building blocks shared by every paradigm: norms, RoPE, MLP, embeddings, adaLN.

Every parameter carries logical axis names (``nn.with_logical_partitioning``); the trainer maps
them to mesh axes with the rules in its config. Parameter names used here:
``vocab, embed, mlp, heads, kv_heads, head_dim, cond, layers``.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from paradigms.nn import quant

Dtype = jnp.dtype


def normal_init(std: float, names: tuple[str, ...]):
  """A normal(std) initialiser whose parameter carries the logical axis `names`."""
  return nn.with_logical_partitioning(nn.initializers.normal(std), names)


def zeros_init(names: tuple[str, ...]):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


class RMSNorm(nn.Module):
  """RMSNorm (Zhang & Sennrich 2019): y = x / sqrt(mean(x^2) + eps) * g.

  Statistics are computed in float32 whatever the compute dtype. `axis_name` is the logical name
  of the normalised axis ('embed'; 'head_dim' for Qwen3's per-head q/k norm).
  """
  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str = 'embed'

  @nn.compact
  def __call__(self, x):  # [..., D] -> [..., D]
    g = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones_init(),
                                                         (self.axis_name,)),
                   (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * g.astype(jnp.float32)).astype(self.dtype)


ROPE_SCALINGS = ('', 'linear', 'llama3')


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """How RoPE's frequencies are stretched for long context (Hugging Face `rope_scaling`).

  kind '' : none.  'linear' (position interpolation, Chen et al. 2023): theta_i / factor.
  'llama3' (Llama 3.1): with wavelength lambda_i = 2 pi / theta_i and original context C,
      theta_i                                  if lambda_i < C / high_freq_factor,
      theta_i / factor                         if lambda_i > C / low_freq_factor,
      (1 - s) theta_i / factor + s theta_i     otherwise, s = (C / lambda_i - low) / (high - low).
  """
  kind: str = ''
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_len: int = 8192

  def __post_init__(self):
    if self.kind == 'yarn':
      raise ValueError("model.rope_scaling='yarn' is not implemented (its attention-temperature "
                       "and ramp terms are not in this backbone); use '' , 'linear' or 'llama3'")
    if self.kind not in ROPE_SCALINGS:
      raise ValueError(f'model.rope_scaling={self.kind!r}: choose one of {ROPE_SCALINGS}')
    if self.kind and self.factor <= 0:
      raise ValueError(f'model.rope_factor={self.factor} must be > 0')
    if self.kind == 'llama3' and not self.high_freq_factor > self.low_freq_factor > 0:
      raise ValueError('llama3 rope scaling needs model.rope_high_freq_factor > '
                       f'model.rope_low_freq_factor > 0, got {self.high_freq_factor} and '
                       f'{self.low_freq_factor}')


def rope_frequencies(head_dim: int, base: float, scaling: RopeScaling = RopeScaling()) -> np.ndarray:
  """theta_i = base^(-2i/Dh), i < Dh/2, then `scaling`: float32 [Dh/2], computed as Hugging Face
  does (1 / base^(2i/Dh) in float32) so imported models rotate identically."""
  inv = (1.0 / (np.float32(base) ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)))
  inv = inv.astype(np.float32)
  if scaling.kind == 'linear':
    return (inv / np.float32(scaling.factor)).astype(np.float32)
  if scaling.kind == 'llama3':
    C, lo, hi, f = (scaling.original_max_len, scaling.low_freq_factor, scaling.high_freq_factor,
                    scaling.factor)
    wavelen = 2 * np.pi / inv
    scaled = np.where(wavelen > C / lo, inv / f, inv)
    s = (C / wavelen - lo) / (hi - lo)
    smooth = (1 - s) * scaled / f + s * scaled
    medium = ~(wavelen < C / hi) & ~(wavelen > C / lo)
    return np.where(medium, smooth, scaled).astype(np.float32)
  return inv


def rope(x, positions, base: float = 10_000.0, scaling: RopeScaling = RopeScaling()):
  """Rotary position embedding (Su et al. 2021, eq. 34), rotate-half convention (LLaMA/Gemma).

  x: [B, L, H, Dh] with Dh even; positions: [B, L] integer positions. Returns x rotated by
  angle positions * theta_i in each (i, i + Dh/2) plane (`rope_frequencies`). Computed in float32.
  """
  inv_freq = jnp.asarray(rope_frequencies(x.shape[-1], base, scaling))  # [Dh/2]
  theta = positions.astype(jnp.float32)[:, :, None] * inv_freq  # [B, L, Dh/2]
  cos, sin = jnp.cos(theta)[:, :, None, :], jnp.sin(theta)[:, :, None, :]  # [B, L, 1, Dh/2]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class SwiGLU(nn.Module):
  """Gated MLP (Shazeer 2020): W_out (silu(x W_gate) * (x W_up))."""
  d_ff: int
  out_std: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # [B, L, D] -> [B, L, D]
    d = x.shape[-1]
    init = normal_init(d ** -0.5, ('embed', 'mlp'))
    w_gate = self.param('w_gate', init, (d, self.d_ff), self.param_dtype)
    w_up = self.param('w_up', init, (d, self.d_ff), self.param_dtype)
    w_out = self.param('w_out', normal_init(self.out_std, ('mlp', 'embed')), (self.d_ff, d),
                       self.param_dtype)
    gate = quant.einsum('bld,df->blf', x, w_gate, self.dtype)  # [B, L, F]
    up = quant.einsum('bld,df->blf', x, w_up, self.dtype)  # [B, L, F]
    h = nn.with_logical_constraint(nn.silu(gate) * up, ('batch', 'length', 'act_mlp'))
    return quant.einsum('blf,fd->bld', h, w_out, self.dtype)


PAD_LOGIT = -1e6  # logit of a padding row of the vocabulary: large, finite (no NaN in softmax)


class Embed(nn.Module):
  """Token embedding with a tied (`attend`) or untied output head.

  Output logits are returned in float32: logits = h E^T (tied) or h W (untied). Both matrices
  start at std 0.02 (GPT-2), so initial logits are small and the initial loss is about ln V.
  With `vocab_size` < the table's `rows` (padded for sharding), the logits of the padding rows
  are PAD_LOGIT, so they are never sampled and add nothing to the softmax normaliser.
  """
  vocab_size: int
  d_model: int
  tie: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  rows: int = 0  # 0 -> vocab_size; more pads the table (e.g. to a multiple of 128)

  def setup(self):
    rows = self.rows or self.vocab_size
    self.embedding = self.param('embedding', normal_init(0.02, ('vocab', 'embed')),
                                (rows, self.d_model), self.param_dtype)
    if not self.tie:
      self.head = self.param('head', normal_init(0.02, ('embed', 'vocab')),
                             (self.d_model, rows), self.param_dtype)

  def __call__(self, tokens):
    """int ids [B, L] -> [B, L, D]; or weights [B, L, K] float over the first K rows (a relaxed
    one-hot, e.g. DUO's tempered softmax of a Gaussian latent) -> their mix [B, L, D]."""
    if not jnp.issubdtype(tokens.dtype, jnp.floating):
      return quant.take(self.embedding, tokens, self.dtype)
    if quant.is_quantized(self.embedding):
      raise ValueError('relaxed (float) token inputs need a float embedding table, not int8')
    table = self.embedding[:tokens.shape[-1]].astype(self.dtype)  # [K, D]
    return jnp.einsum('blk,kd->bld', tokens.astype(self.dtype), table)

  def attend(self, h):  # [B, L, D] -> [B, L, V] float32
    w = self.embedding if self.tie else self.head  # [V, D] | [D, V], float or quant.Int8Kernel
    if quant.is_quantized(w):  # per output channel: a row of the table, a column of the head
      logits = quant.einsum('bld,vd->blv' if self.tie else 'bld,dv->blv', h, w, self.dtype)
    else:
      logits = jnp.einsum('bld,dv->blv', h, (w.T if self.tie else w).astype(self.dtype))
    logits = logits.astype(jnp.float32)
    rows = self.rows or self.vocab_size
    if rows > self.vocab_size:  # padding rows
      logits = jnp.where(jnp.arange(rows) < self.vocab_size, logits, PAD_LOGIT)
    return nn.with_logical_constraint(logits, ('batch', 'length', 'act_vocab'))


class AdaLN(nn.Module):
  """adaLN-Zero modulation (DiT, Peebles & Xie 2023, Sec. 3.2): cond -> (shift, scale, gate) x n.

  The projection is zero-initialised so every block starts as the identity map.
  cond: [B, C] -> tuple of `n_chunks` arrays [B, 1, D].
  """
  d_model: int
  n_chunks: int = 6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, cond):
    w = self.param('w', zeros_init(('cond', None, 'embed')),
                   (cond.shape[-1], self.n_chunks, self.d_model), self.param_dtype)
    b = self.param('b', zeros_init((None, 'embed')), (self.n_chunks, self.d_model), self.param_dtype)
    out = jnp.einsum('bc,ckd->bkd', nn.silu(cond).astype(self.dtype), w.astype(self.dtype))
    out = out + b.astype(self.dtype)  # [B, n_chunks, D]
    return tuple(out[:, i, None, :] for i in range(self.n_chunks))


def modulate(x, shift, scale):
  """DiT's adaLN modulation: x * (1 + scale) + shift."""
  return x * (1 + scale) + shift
