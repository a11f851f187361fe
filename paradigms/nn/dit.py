"""DiT (Peebles & Xie 2023): a Transformer over image patches with adaLN-Zero conditioning.

    x [B, H, W, C] -> patchify -> [B, N, p*p*C] -> linear + fixed 2-D sin-cos positions
                                  N = (H/p)(W/p), raster order over the (H/p) x (W/p) grid
    c = MLP(sinusoid(1000 c_noise)) + sum_j E_j[label_j] (+ E_step[k])        # [B, D]
    h = the shared scanned Blocks (bidirectional, adaLN-Zero on c, no RoPE)  # paradigms.nn
    out = Linear(modulate(RMSNorm(h), adaLN(c)))  (zero-init) -> unpatchify  # [B, H, W, C]

The blocks are exactly the token paradigms' (`paradigms.nn.transformer.block_stack`); only the
input embedding and the output layer are image-specific. Labels are `label_len` slots of ids in
[0, label_vocab) where 0 is the null symbol: a glyph string "A7" is [id(A), id(7), 0], and the
all-zero label is the unconditional (classifier-free guidance) label. With
`label_tokens` the label slots are also S tokens that every patch attends to (SD3's joint
attention over text tokens beside its pooled adaLN vector; Esser et al. 2024, sec. 4, with one
set of weights for both streams): a glyph string is a sequence, and attention lets each patch
look up the symbol it is drawing, which a single pooled vector makes the MLPs decode. With
`step_conditioning` the network also takes a step-size index k (d = 2^-k) for shortcut models
(Frans et al. 2024).

Images may be rectangular: `image_size` is the height H and `image_width` the width W (0 = square,
W = H). The position embedding is MAE's 2-D sin-cos on the rectangular grid: patch (i, j) gets
[sincos(i; D/2), sincos(j; D/2)], the first half of the channels from its row, the second from its
column, so a square grid is exactly the old table and a wide grid extends the columns.
"""
from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from paradigms.nn.layers import AdaLN, RMSNorm, modulate, normal_init, zeros_init
from paradigms.nn.transformer import TransformerConfig, block_stack, run_blocks


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  """The DiT's fields (built from `config.model` of an image config)."""
  image_size: int = 32  # H (the height; also the width when image_width = 0)
  image_width: int = 0  # W; 0 = square (W = image_size)
  channels: int = 3
  patch_size: int = 2
  label_len: int = 3  # label slots; 0 = unconditional model
  label_vocab: int = 32  # ids per slot, 0 = null / blank
  label_tokens: bool = True  # label slots also enter as in-context tokens (joint attention)
  step_conditioning: bool = False  # shortcut models: condition on the step-size index k
  max_step_index: int = 7  # k in [0, max_step_index], d = 2^-k (log2 of shortcut M)
  freq_dim: int = 256  # sinusoidal features of the noise level
  d_model: int = 128
  n_layers: int = 4
  n_heads: int = 4
  d_ff: int = 0  # 0 -> SwiGLU's 8/3 d rounded up to a multiple of 64
  norm_eps: float = 1e-6
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  remat_policy: str = 'none'
  scan_unroll: int = 0  # TransformerConfig.scan_unroll (0 = automatic)
  attention_impl: str = 'xla'

  def __post_init__(self):
    if self.image_size % self.patch_size or self.width % self.patch_size:
      raise ValueError(f'the image {self.image_size}x{self.width} (model.image_size x '
                       f'model.image_width) must have both sides multiples of '
                       f'model.patch_size={self.patch_size}; change either')
    if self.image_width < 0:
      raise ValueError(f'model.image_width={self.image_width} must be >= 0 (0 = square)')
    if self.label_len and self.label_vocab < 2:
      raise ValueError(f'model.label_vocab={self.label_vocab} must be >= 2 (0 is the null id) '
                       f'when model.label_len={self.label_len} > 0')
    if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 4:
      raise ValueError(f'model.d_model={self.d_model} / n_heads={self.n_heads} must be a '
                       'multiple of 4')
    self.backbone()  # validates the shared fields

  @property
  def width(self) -> int:
    """W: image_width, or image_size when square (image_width = 0)."""
    return self.image_width or self.image_size

  @property
  def grid(self) -> tuple:
    """(H/p, W/p): the patch grid's rows and columns."""
    return self.image_size // self.patch_size, self.width // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid[0] * self.grid[1]

  @property
  def num_tokens(self) -> int:
    """Sequence length through the blocks: the label tokens (if any) then the patches."""
    return self.num_patches + (self.label_len if self.label_tokens else 0)

  @property
  def patch_dim(self) -> int:
    return self.patch_size ** 2 * self.channels

  def backbone(self) -> TransformerConfig:
    """The shared blocks' config: bidirectional, adaLN-Zero on a d_model condition, no RoPE."""
    return TransformerConfig(
        vocab_size=1, d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads,
        d_ff=self.d_ff, max_len=self.num_tokens, mask='bidirectional', rope_base=0.0,
        norm_eps=self.norm_eps, cond_dim=self.d_model, dtype=self.dtype,
        param_dtype=self.param_dtype, remat_policy=self.remat_policy, scan_unroll=self.scan_unroll,
        attention_impl=self.attention_impl)

  def num_params(self) -> int:
    """Exact parameter count (tested against the initialised tree)."""
    d, bb = self.d_model, self.backbone()
    blocks = bb.num_params(embeddings=False) - d  # minus the token model's final norm
    embed = self.patch_dim * d + d + self.freq_dim * d + d + d * d + d
    embed += self.label_len * self.label_vocab * d
    embed += (self.max_step_index + 1) * d if self.step_conditioning else 0
    final = d + 2 * d * (d + 1) + d * self.patch_dim + self.patch_dim
    return blocks + embed + final


def patchify(x, p: int):
  """[B, H, W, C] -> [B, (H/p)(W/p), p*p*C], patches in raster order."""
  B, H, W, C = x.shape
  x = x.reshape(B, H // p, p, W // p, p, C).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(x, p: int, channels: int, grid: int | tuple | None = None):
  """The inverse of `patchify`: [B, N, p*p*C] -> [B, H, W, C] with (H, W) = p grid, grid =
  (rows, columns) of patches (an int for a square grid; None: square, sqrt(N) a side)."""
  B, N, _ = x.shape
  gh, gw = _pair(math.isqrt(N) if grid is None else grid)
  if gh * gw != N:
    raise ValueError(f'unpatchify: {N} patches do not fill a {gh}x{gw} grid')
  x = x.reshape(B, gh, gw, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(B, gh * p, gw * p, channels)


def _pair(grid) -> tuple:
  """An int side (square) or a (rows, columns) pair -> (rows, columns)."""
  return (int(grid), int(grid)) if np.ndim(grid) == 0 else tuple(int(g) for g in grid)


def sincos_2d(grid: int | tuple, d: int) -> np.ndarray:
  """DiT/MAE fixed 2-D sin-cos position embedding of a (rows, columns) grid (an int: square):
  [rows*columns, d] in raster order, the first d/2 channels from the row, the last from the
  column."""
  def one_axis(pos, dim):
    omega = 1.0 / 10_000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))  # [dim/2]
    out = pos[:, None] * omega[None]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # [N, dim]
  gh, gw = _pair(grid)
  rows, cols = np.meshgrid(np.arange(gh, dtype=np.float64), np.arange(gw, dtype=np.float64),
                           indexing='ij')
  emb = np.concatenate([one_axis(rows.ravel(), d // 2), one_axis(cols.ravel(), d // 2)], axis=1)
  return emb.astype(np.float32)


def timestep_features(c_noise, dim: int, max_period: float = 10_000.0):
  """Sinusoidal features of the noise condition (DiT's TimestepEmbedder on 1000 c_noise).

  c_noise: [B] float -> [B, dim] float32."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)  # [dim/2]
  args = 1000.0 * c_noise.astype(jnp.float32)[:, None] * freqs[None]  # [B, dim/2]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class DiT(nn.Module):
  """x: [B, H, W, C]; c_noise: [B] (the noise condition, e.g. ln(sigma)/4 or flow t);
  label: [B, label_len] int32 (0 = null) or None (= all null); step: [B] int32 step-size index
  (only with `step_conditioning`). Returns the network output F [B, H, W, C] float32, whose
  meaning (eps, v, x0, EDM's F or flow velocity) the paradigm's objective decides."""
  cfg: DiTConfig

  @nn.compact
  def __call__(self, x, c_noise, label=None, step=None):
    cfg = self.cfg
    bb = cfg.backbone()
    dt, pdt = bb.compute_dtype, jnp.dtype(cfg.param_dtype)
    d, B = cfg.d_model, x.shape[0]
    if x.shape[1:] != (cfg.image_size, cfg.width, cfg.channels):
      raise ValueError(f'DiT expects images [B, {cfg.image_size}, {cfg.width}, {cfg.channels}] '
                       f'(model.image_size, model.image_width, model.channels), got {x.shape}')

    def dense(h, n_in, n_out, name, std=None, names=(None, 'embed')):
      init = zeros_init(names) if std == 0 else normal_init(std or n_in ** -0.5, names)
      w = self.param(f'{name}_w', init, (n_in, n_out), pdt)
      b = self.param(f'{name}_b', zeros_init(names[1:]), (n_out,), pdt)
      return jnp.einsum('...i,io->...o', h.astype(dt), w.astype(dt)) + b.astype(dt)

    # Condition c [B, D]: noise level (+ label slots) (+ step size).
    t = timestep_features(c_noise, cfg.freq_dim)
    c = dense(nn.silu(dense(t, cfg.freq_dim, d, 't1', std=0.02)), d, d, 't2', std=0.02,
              names=('embed', None))
    if cfg.label_len:
      if label is None:
        label = jnp.zeros((B, cfg.label_len), jnp.int32)
      table = self.param('label_embed', normal_init(0.02, (None, 'vocab', 'embed')),
                         (cfg.label_len, cfg.label_vocab, d), pdt)
      slots = jnp.arange(cfg.label_len)[None, :]  # [1, S]
      label_emb = table[slots, label].astype(dt)  # [B, S, D]
      c = c + label_emb.sum(axis=1)  # [B, D]
    if cfg.step_conditioning:
      if step is None:
        raise ValueError('model.step_conditioning is on: pass `step` (the step-size index)')
      table = self.param('step_embed', normal_init(0.02, (None, 'embed')),
                         (cfg.max_step_index + 1, d), pdt)
      c = c + table[step].astype(dt)

    # Patch tokens [B, N, D] through the shared blocks.
    h = dense(patchify(x, cfg.patch_size), cfg.patch_dim, d, 'patch')
    h = h + jnp.asarray(sincos_2d(cfg.grid, d), dt)[None]
    prefix = cfg.num_tokens - cfg.num_patches
    if prefix:
      h = jnp.concatenate([label_emb, h], axis=1)  # [B, S + N, D]
    h = nn.with_logical_constraint(h, ('batch', 'length', 'act_embed'))
    positions = jnp.broadcast_to(jnp.arange(cfg.num_tokens, dtype=jnp.int32), (B, cfg.num_tokens))
    h, _ = run_blocks(block_stack(bb), h, None, positions, positions, c, None)
    h = h[:, prefix:]  # the patch tokens [B, N, D]

    # Final layer: adaLN-modulated norm, zero-initialised linear, unpatchify.
    shift, scale = AdaLN(d, 2, dt, pdt, name='final_adaln')(c)
    h = modulate(RMSNorm(cfg.norm_eps, dt, pdt, name='final_norm')(h), shift, scale)
    out = dense(h, d, cfg.patch_dim, 'out', std=0, names=('embed', None))
    return unpatchify(out, cfg.patch_size, cfg.channels, cfg.grid).astype(jnp.float32)
