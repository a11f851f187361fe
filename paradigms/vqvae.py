"""VAR's multi-scale residual VQ-VAE (Tian et al. 2024, "Visual Autoregressive Modeling").

An image x [B, H, W, C] is encoded to f = E(x) [B, h, w, Cz] (h = H/f, w = W/f for the
encoder's downsampling factor f) and quantised into K token maps r_1..r_K of growing sizes
h_1 x w_1 < ... < h_K x w_K = h x w, all from one codebook e [V, Cz]. The ladder is
`scales` = (s_1 < ... < s_K = h), the heights; images may be wider than tall by an integer
aspect a = W/H (`image_width`, 0 = square, a = 1), and scale k is h_k x w_k = s_k x a s_k, so a
32x64 image with scales (1, 2, 3, 4, 6, 8) has maps 1x2, 2x4, ..., 8x16 (VAR Algorithm 1 in
h x w form, with f_hat_0 = 0):

    for k = 1..K:
      r_k  = argmin_v || area(f - f_hat_{k-1}, (h_k, w_k)) - e_v ||^2   # [B, h_k, w_k] ids
      f_hat_k = f_hat_{k-1} + phi_k(up(e[r_k], (h, w)))                # [B, h, w, Cz]
    x_hat = D(f_hat_K)

and decoded by VAR Algorithm 2: f_hat = sum_k phi_k(up(e[r_k], (h, w))), x_hat = D(f_hat).
- area(., (h_k, w_k)): exact area resampling: output cell (i, j) is the mean of the input over
  the rectangle [i h/h_k, (i+1) h/h_k) x [j w/w_k, (j+1) w/w_k), partial pixels weighted by
  their covered area (`jax.image.resize(..., 'area')`). For h_k | h, w_k | w it is block
  averaging. (PyTorch's mode='area' in VAR's code is adaptive average pooling over whole-pixel
  windows [floor(i h/h_k), ceil((i+1) h/h_k)); the two agree whenever the sizes divide.)
  area(., (h, w)) is the identity.
- up(., (h, w)): `VQConfig.upsample`: 'bicubic' (default) is PyTorch's bicubic
  (F.interpolate(mode='bicubic', align_corners=False): Keys a = -0.75, edge pixels repeated),
  exactly VAR's; 'bilinear' and 'nearest' are alternatives ('nearest' with h_k | h makes the
  quantisation error provably non-increasing in k). up(., (h, w)) at scale K is the identity.
  Both resample each axis on its own, so a rectangle costs nothing new; a square image
  (a = 1) is exactly the square code.
- phi_k(z) = (1 - r) z + r conv(z) with r = `phi_ratio` (VAR's quant_resi); r = 0 is the
  identity. `n_phi` convs are shared across scales as in VAR's "partially shared" phi: conv j
  sits at tick t_j (linspace(1/(3n), 1 - 1/(3n), n) for n = 4, else linspace(1/(2n),
  1 - 1/(2n), n)) and scale k (0-based) uses the conv whose tick is nearest k / (K - 1)
  (`VQConfig.phi_index`). n_phi = 0 gives one conv per scale, 1 one shared conv.

Training loss (VQ-VAE, van den Oord et al. 2017, eq. 3, in VAR's multi-scale form):
    L = ||x - D(f_st)||^2 + w_1 |x - D(f_st)|
        + w_vq mean_k ( ||sg(f) - f_hat_k||^2 + beta ||f - sg(f_hat_k)||^2 )
with the straight-through estimator f_st = f + sg(f_hat_K - f) (the decoder's gradient reaches
the encoder unchanged) and the codebook/commitment terms on every cumulative f_hat_k, averaged
over the K scales, as VAR's quantizer does (||.||^2 are means over elements). Codes are found
in float32 with stop-gradients; the codebook and phi learn from the codebook term only. No
perceptual or GAN loss (no pretrained networks available here).

Dead codes: the train state keeps an EMA of each code's share of the batch's tokens
(`init_extra`); `after_update` replaces the codes whose share falls below dead_threshold / V by
random vectors the batch quantised, area(f - f_hat_{k-1}, (h_k, w_k)) of any scale (plus a little
noise), and resets their share to the mean (Jukebox's random restarts, Dhariwal et al. 2020).

Tokens for the VAR transformer: the K maps flattened scale-major, raster (row-major) within a
scale (`flatten_indices`, L = sum_k h_k w_k). Its teacher-forcing input for scale k = 2..K is
area(f_hat_{k-1}, (h_k, w_k)) (`next_scale_inputs`, [B, L - h_1 w_1, Cz]; `add_scale` gives the
same one scale at a time). In the code scales are 0-based: k = 0..K-1.

Batch: {'image': float32 [B, H, W, C] in [-1, 1], 'label': int32 [B, S]} (labels unused).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from paradigms.image_diffusion import example_batch  # noqa: F401 (the same image batch)
from paradigms.nn.vq_conv import Decoder, Encoder, Phi, group_count

UPSAMPLE = {'bicubic': 'bicubic-pytorch', 'bilinear': 'linear', 'nearest': 'nearest'}
sg = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True)
class VQConfig:
  """The tokenizer's fields (built from `config.model` of a vqvae config)."""
  image_size: int = 32  # H (the height; also the width when image_width = 0)
  image_width: int = 0  # W, a multiple of H (scale k is s_k x (W/H) s_k); 0 = square
  channels: int = 3
  base_channels: int = 64
  channel_mult: tuple = (1, 2, 2)  # latent side = image_size / 2^(len - 1)
  n_res_blocks: int = 1  # ResBlocks per level, encoder and decoder
  norm_groups: int = 32  # GroupNorm groups (min with the width)
  latent_dim: int = 32  # Cz
  codebook_size: int = 512  # V
  scales: tuple = (1, 2, 3, 4, 6, 8)  # heights s_1 < ... < s_K = latent height h
  upsample: str = 'bicubic'  # up(): 'bicubic' (PyTorch's, as VAR) | 'bilinear' | 'nearest'
  phi_kernel: int = 3
  phi_ratio: float = 0.5  # r in phi(z) = (1 - r) z + r conv(z); 0 = identity (no convs)
  n_phi: int = 4  # phi convs shared across scales (VAR: 4); 0 = one per scale
  beta: float = 0.25  # commitment weight (VQ-VAE eq. 3)
  dtype: str = 'float32'  # encoder/decoder compute dtype; quantisation is always float32
  param_dtype: str = 'float32'

  def __post_init__(self):
    for name in ('channel_mult', 'scales'):  # a config reloaded from JSON holds lists
      object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
    n = len(self.channel_mult)
    if n < 1 or min(self.channel_mult) < 1:
      raise ValueError(f'model.channel_mult={self.channel_mult} must be non-empty positive ints')
    if self.image_size % 2 ** (n - 1):
      raise ValueError(f'model.image_size={self.image_size} must be divisible by 2^(len('
                       f'channel_mult) - 1) = {2 ** (n - 1)}; change either')
    if self.image_width < 0 or self.image_width % self.image_size:
      raise ValueError(f'model.image_width={self.image_width} must be 0 (square) or a multiple '
                       f'of model.image_size={self.image_size}: scale k is s_k x (W/H) s_k, so '
                       'W/H must be an integer')
    for m in self.channel_mult:
      width = self.base_channels * m
      if width % group_count(width, self.norm_groups):
        raise ValueError(f'width base_channels * {m} = {width} must be divisible by '
                         f'model.norm_groups={self.norm_groups}; change either')
    s, side = self.scales, self.latent_side
    if not s or s[0] < 1 or any(b <= a for a, b in zip(s, s[1:])) or s[-1] != side:
      raise ValueError(f'model.scales={s} must be strictly increasing positive heights ending '
                       f'at the latent height {side} (image_size {self.image_size} / 2^'
                       f'{n - 1}); e.g. set model.scales={_suggest(side)}')
    if self.upsample not in UPSAMPLE:
      raise ValueError(f'model.upsample={self.upsample!r}: choose one of {sorted(UPSAMPLE)}')
    if self.codebook_size < 2 or self.latent_dim < 1:
      raise ValueError(f'model.codebook_size={self.codebook_size} must be >= 2 and '
                       f'model.latent_dim={self.latent_dim} >= 1')
    if not 0.0 <= self.phi_ratio <= 1.0 or self.phi_kernel % 2 == 0:
      raise ValueError(f'model.phi_ratio={self.phi_ratio} must be in [0, 1] and '
                       f'model.phi_kernel={self.phi_kernel} odd')
    if self.n_phi < 0:
      raise ValueError(f'model.n_phi={self.n_phi} must be >= 0 (0 = one phi per scale)')
    used = {self.phi_index(k) for k in range(len(s))} if self.num_phi else set()
    if len(used) != self.num_phi:
      unused = sorted(set(range(self.num_phi)) - used)
      raise ValueError(f'model.n_phi={self.n_phi} leaves phi convs {unused} unused with '
                       f'{len(s)} scales; lower model.n_phi (at most {len(s)})')

  @property
  def latent_side(self) -> int:
    """h: the height of the latent grid f (its side when square)."""
    return self.image_size // 2 ** (len(self.channel_mult) - 1)

  @property
  def aspect(self) -> int:
    """a = W/H (1 when square)."""
    return self.image_width // self.image_size if self.image_width else 1

  @property
  def latent_width(self) -> int:
    """w = a h: the width of the latent grid f."""
    return self.aspect * self.latent_side

  @property
  def latent_shape(self) -> tuple:
    """(h, w)."""
    return self.latent_side, self.latent_width

  @property
  def scale_shapes(self) -> tuple:
    """((h_k, w_k), ...) = ((s_k, a s_k), ...): the K token maps' sizes."""
    return scale_shapes(self.scales, self.aspect)

  @property
  def num_tokens(self) -> int:
    """L = sum_k h_k w_k."""
    return sum(h * w for h, w in self.scale_shapes)

  @property
  def num_phi(self) -> int:
    """How many phi convs exist (0 when phi_ratio = 0: phi is the identity)."""
    if self.phi_ratio == 0:
      return 0
    return self.n_phi or len(self.scales)

  def phi_index(self, k: int) -> int:
    """Which phi conv scale k (0-based) uses: VAR's PhiPartiallyShared ticks (module doc)."""
    n, K = self.num_phi, len(self.scales)
    if n <= 1:
      return 0
    if self.n_phi == 0:  # one per scale
      return k
    q = 3 if n == 4 else 2
    ticks = np.linspace(1 / q / n, 1 - 1 / q / n, n)
    return int(np.argmin(np.abs(ticks - k / max(K - 1, 1))))


Config = VQConfig


def scale_shapes(scales, aspect: int = 1) -> tuple:
  """Heights s_k and the integer aspect a = W/H -> ((s_k, a s_k), ...) (VAR's maps, h x w)."""
  return tuple((int(s), int(aspect) * int(s)) for s in scales)


def _pair(size) -> tuple:
  """An int side (square) or an (h, w) pair -> (h, w)."""
  return (int(size), int(size)) if np.ndim(size) == 0 else tuple(int(v) for v in size)


def _suggest(side: int) -> tuple:
  """A VAR-like scale ladder ending at `side` (for error messages)."""
  return tuple(sorted({max(1, round(side * f)) for f in (1 / 8, 1 / 4, 3 / 8, 1 / 2, 3 / 4)}
                      | {side}))


# --- Resampling --------------------------------------------------------------------------------

def _resize(x, size, method: str):
  """x [B, h, w, C] -> [B, h', w', C] for size = (h', w') (an int: square) by `jax.image.resize`
  (antialiased for 'area' only; the up-sampling kernels must not be widened). Same size: the
  identity."""
  B, h, w, C = x.shape
  size = _pair(size)
  if (h, w) == size:
    return x
  return jax.image.resize(x, (B,) + size + (C,), method, antialias=method == 'area')


def area_down(x, size):
  """Exact area resampling x [B, h, w, C] -> [B, h_k, w_k, C], size = (h_k, w_k) or an int for
  a square (see the module doc)."""
  return _resize(x, size, 'area')


def upsample(z, size, method: str = 'bicubic'):
  """z [B, h_k, w_k, C] -> [B, h, w, C], size = (h, w) or an int for a square, with `method` in
  UPSAMPLE (the module doc's up())."""
  return _resize(z, size, UPSAMPLE[method])


def nearest_code(r, e):
  """argmin_v ||r - e_v||^2 for r [..., Cz], e [V, Cz] -> int32 [...] (float32, full precision)."""
  dots = jnp.einsum('...c,vc->...v', r, e, precision=jax.lax.Precision.HIGHEST)
  return jnp.argmin(jnp.sum(e * e, axis=-1) - 2.0 * dots, axis=-1).astype(jnp.int32)


# --- The network -------------------------------------------------------------------------------

class VQVAE(nn.Module):
  """Encoder, decoder, phi convs and the codebook [V, Cz]. Call the methods through
  `model.apply({'params': params}, ..., method=...)` or use the free functions below."""
  cfg: VQConfig

  def setup(self):
    c = self.cfg
    kw = dict(norm_groups=c.norm_groups, dtype=jnp.dtype(c.dtype),
              param_dtype=jnp.dtype(c.param_dtype))
    self.encoder = Encoder(c.base_channels, c.channel_mult, c.n_res_blocks, c.latent_dim, **kw)
    self.decoder = Decoder(c.base_channels, c.channel_mult, c.n_res_blocks, c.channels, **kw)
    self.phis = [Phi(c.phi_ratio, c.phi_kernel) for _ in range(c.num_phi)]
    V = c.codebook_size  # VQGAN's init: e ~ U(-1/V, 1/V); dead codes then restart from data
    self.codebook = self.param(
        'codebook', lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -1 / V, 1 / V),
        (V, c.latent_dim))

  def encode(self, x):
    """x [B, H, W, C] -> f [B, h, w, Cz] float32."""
    return self.encoder(x.astype(jnp.dtype(self.cfg.dtype))).astype(jnp.float32)

  def decode(self, f_hat):
    """f_hat [B, h, w, Cz] -> x_hat [B, H, W, C] float32."""
    return self.decoder(f_hat.astype(jnp.dtype(self.cfg.dtype))).astype(jnp.float32)

  def phi(self, z, k: int):
    """phi_k(z) for static scale index k: [B, h, w, Cz] -> [B, h, w, Cz]."""
    return self.phis[self.cfg.phi_index(k)](z) if self.phis else z.astype(jnp.float32)

  def embed(self, idx_k, k: int):
    """Scale k's contribution phi_k(up(e[idx_k], (h, w))): ids [B, h_k, w_k] or [B, h_k w_k]
    -> [B, h, w, Cz]."""
    c = self.cfg
    z = self.codebook[idx_k.reshape((idx_k.shape[0],) + c.scale_shapes[k])]  # [B, h_k, w_k, Cz]
    return self.phi(upsample(z, c.latent_shape, c.upsample), k)

  def quantize(self, f):
    """VAR Algorithm 1 on f [B, h, w, Cz]: (indices, tuple of K int32 [B, h_k, w_k];
    f_hat [B, h, w, Cz] (differentiable in the codebook and phi, not in f); aux) with aux =
    {'commit': mean_k ||f - sg(f_hat_k)||^2, 'codebook': mean_k ||sg(f) - f_hat_k||^2,
     'counts': float32 [K, V] code counts per scale, 'residuals': [B, L, Cz] the quantised
     vectors area(f - f_hat_{k-1}, (h_k, w_k)), scale-major (stop-gradient)}."""
    c = self.cfg
    f = f.astype(jnp.float32)
    B, (h, w) = f.shape[0], c.latent_shape
    if f.shape[1:] != (h, w, c.latent_dim):
      raise ValueError(f'quantize expects f [B, {h}, {w}, {c.latent_dim}], got {f.shape}')
    e = sg(self.codebook)
    f_hat = jnp.zeros_like(f)
    indices, residuals, counts, commit, codebook = [], [], [], 0.0, 0.0
    for k, (h_k, w_k) in enumerate(c.scale_shapes):
      r_k = area_down(sg(f - f_hat), (h_k, w_k))  # [B, h_k, w_k, Cz]
      idx = nearest_code(r_k, e)  # [B, h_k, w_k]
      f_hat = f_hat + self.embed(idx, k)
      indices.append(idx)
      residuals.append(r_k.reshape(B, h_k * w_k, -1))
      counts.append(jnp.bincount(idx.reshape(-1), length=c.codebook_size).astype(jnp.float32))
      commit += jnp.mean((f - sg(f_hat)) ** 2)
      codebook += jnp.mean((sg(f) - f_hat) ** 2)
    K = len(c.scales)
    aux = {'commit': commit / K, 'codebook': codebook / K, 'counts': jnp.stack(counts),
           'residuals': jnp.concatenate(residuals, axis=1)}
    return tuple(indices), f_hat, aux

  def indices_to_fhat(self, indices):
    """VAR Algorithm 2 up to the decoder: sum over the given (first len(indices)) scales of
    phi_k(up(e[idx_k])): ids [B, h_k, w_k] (or [B, h_k w_k]) -> f_hat [B, h, w, Cz]."""
    f_hat = None
    for k, idx in enumerate(indices):
      f_hat = self.add_scale(f_hat, idx, k, next_input=False)[0]
    return f_hat

  def add_scale(self, f_hat, idx_k, k: int, next_input: bool = True):
    """f_hat [B, h, w, Cz] (None = zeros) + scale k's ids [B, h_k w_k] ->
    (f_hat' = f_hat + phi_k(up(e[idx_k])), area(f_hat', (h_{k+1}, w_{k+1})) flattened
    [B, h_{k+1} w_{k+1}, Cz], or None after the last scale or when not `next_input`)."""
    c = self.cfg
    z = self.embed(idx_k, k)
    f_hat = z if f_hat is None else f_hat + z
    if not next_input or k + 1 == len(c.scales):
      return f_hat, None
    h_n, w_n = c.scale_shapes[k + 1]
    return f_hat, area_down(f_hat, (h_n, w_n)).reshape(f_hat.shape[0], h_n * w_n, c.latent_dim)

  def next_scale_inputs(self, indices):
    """VAR's teacher-forcing inputs: for k = 1..K-1 (0-based), area(f_hat of scales < k,
    (h_k, w_k)) raster-flattened and concatenated: [B, L - h_0 w_0, Cz]. Uses indices[:K-1]."""
    c = self.cfg
    f_hat, outs = None, [jnp.zeros((indices[0].shape[0], 0, c.latent_dim), jnp.float32)]
    for k in range(len(c.scales) - 1):
      f_hat, nxt = self.add_scale(f_hat, indices[k], k)
      outs.append(nxt)
    return jnp.concatenate(outs, axis=1)

  def __call__(self, x):
    """Reconstruction x [B, H, W, C] -> (x_hat [B, H, W, C], indices); touches every param."""
    indices, f_hat, _ = self.quantize(self.encode(x))
    return self.decode(f_hat), indices


# --- Free functions over (model, params) -------------------------------------------------------

def _apply(model: VQVAE, params, method: str, *args):
  return model.apply({'params': params}, *args, method=method)


def encode(model: VQVAE, params, x):
  """x [B, H, W, C] -> f [B, h, w, Cz] float32."""
  return _apply(model, params, 'encode', x)


def decode(model: VQVAE, params, f_hat):
  """f_hat [B, h, w, Cz] -> x_hat [B, H, W, C] float32."""
  return _apply(model, params, 'decode', f_hat)


def quantize(model: VQVAE, params, f):
  """VAR Algorithm 1: f [B, h, w, Cz] -> (indices (K x int32 [B, h_k, w_k]), f_hat, aux)."""
  return _apply(model, params, 'quantize', f)


def indices_to_fhat(model: VQVAE, params, indices):
  """sum_k phi_k(up(e[idx_k])) over the given scales -> f_hat [B, h, w, Cz]."""
  return _apply(model, params, 'indices_to_fhat', tuple(indices))


def next_scale_inputs(model: VQVAE, params, indices):
  """The VAR transformer's teacher-forcing inputs [B, L - h_1 w_1, Cz] (see the method)."""
  return _apply(model, params, 'next_scale_inputs', tuple(indices))


def add_scale(model: VQVAE, params, f_hat, idx_k, k: int):
  """Incremental decoding step k (static): (f_hat + scale k, next input [B, h_{k+1} w_{k+1}, Cz]
  or None). Starts from f_hat=None (zeros); agrees with `next_scale_inputs`."""
  return _apply(model, params, 'add_scale', f_hat, idx_k, k)


def flatten_indices(indices):
  """K maps [B, h_k, w_k] -> tokens int32 [B, L], scale-major, raster within a scale."""
  return jnp.concatenate([i.reshape(i.shape[0], -1) for i in indices], axis=1)


def split_indices(tokens, shapes):
  """tokens [B, L] -> tuple of K maps [B, h_k, w_k] (the inverse of `flatten_indices`);
  shapes: the maps' (h_k, w_k) (`VQConfig.scale_shapes`), or sides s_k for square maps."""
  shapes = tuple(_pair(s) for s in shapes)
  sizes = [h * w for h, w in shapes]
  if tokens.shape[1] != sum(sizes):
    raise ValueError(f'tokens of length {tokens.shape[1]} do not match the scales {shapes} '
                     f'(L = {sum(sizes)})')
  ends = np.cumsum(sizes)[:-1].tolist()
  return tuple(t.reshape((t.shape[0],) + hw) for t, hw in zip(jnp.split(tokens, ends, axis=1),
                                                                shapes))


def encode_tokens(model: VQVAE, params, x):
  """Images x [B, H, W, C] -> tokens int32 [B, L]."""
  return residual(model, params, x)[0]


def decode_tokens(model: VQVAE, params, tokens):
  """Tokens [B, L] -> images [B, H, W, C] (VAR Algorithm 2)."""
  f_hat = indices_to_fhat(model, params, split_indices(tokens, model.cfg.scale_shapes))
  return decode(model, params, f_hat)


def residual(model: VQVAE, params, x):
  """x [B, H, W, C] -> (tokens [B, L], f [B, h, w, Cz], f_hat [B, h, w, Cz]); f - f_hat is the
  continuous residual after the last scale (HART's diffusion target)."""
  f = encode(model, params, x)
  indices, f_hat, _ = quantize(model, params, f)
  return flatten_indices(indices), f, f_hat


def reconstruct(model: VQVAE, params, x):
  """x [B, H, W, C] -> (decode(f), decode(f_hat)), both [B, H, W, C]: the autoencoder alone and
  through the multi-scale residual quantiser (the ceiling of any model sampling through it)."""
  _, f, f_hat = residual(model, params, x)
  return decode(model, params, f), decode(model, params, f_hat)


# --- The paradigm contract ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Options:
  """The loss's and the dead-code restarts' knobs (`config.loss`)."""
  l1_weight: float = 0.0  # w_1: an extra L1 reconstruction term
  vq_weight: float = 1.0  # w_vq on the codebook + beta commitment terms
  usage_decay: float = 0.99  # EMA decay of each code's share of the tokens
  dead_threshold: float = 0.03  # a code is dead when its share < dead_threshold / V; 0 = off
  reinit_noise: float = 0.01  # restart noise std, relative to the features' rms
  num_features: int = 256  # M residual vectors sampled per step as restart candidates

  def __post_init__(self):
    if self.l1_weight < 0 or self.vq_weight < 0:
      raise ValueError(f'loss.l1_weight={self.l1_weight} and loss.vq_weight={self.vq_weight} '
                       'must be >= 0')
    if not 0 <= self.usage_decay < 1:
      raise ValueError(f'loss.usage_decay={self.usage_decay} must be in [0, 1)')
    if self.dead_threshold < 0 or self.reinit_noise < 0 or self.num_features < 1:
      raise ValueError('loss.dead_threshold and loss.reinit_noise must be >= 0 and '
                       f'loss.num_features >= 1, got {self.dead_threshold}, '
                       f'{self.reinit_noise}, {self.num_features}')


def build(cfg: VQConfig) -> VQVAE:
  return VQVAE(cfg)


def init(model: VQVAE, rng, batch) -> dict:
  return model.init(rng, batch['image'])


def init_extra(model: VQVAE, params, **options) -> dict:
  """{'usage': float32 [V]}: the EMA share of tokens per code, starting uniform (1 / V)."""
  V = model.cfg.codebook_size
  return {'usage': jnp.full((V,), 1.0 / V, jnp.float32)}


def _usage(counts):
  """counts [V] -> (fraction of codes used, perplexity exp(H(p)) of the code distribution)."""
  p = counts / jnp.maximum(counts.sum(), 1.0)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return jnp.mean(counts > 0), jnp.exp(entropy)


def loss(params, batch, rng, *, model: VQVAE, **options):
  """The module doc's L. Returns (scalar, metrics): 'mse', 'l1' of x_hat; 'vq' =
  mean_k ||f - f_hat_k||^2 (the value of both VQ terms); 'latent_err' = ||f - f_hat||^2 /
  ||f||^2; 'usage' (fraction of the codes the batch uses) and 'perplexity'; '_counts' [V] (code
  counts, all scales) and '_features' [M, Cz] (sampled residual vectors) for `after_update`."""
  opts = Options(**options)
  x = batch['image']
  f = encode(model, params, x)
  _, f_hat, aux = quantize(model, params, f)
  x_hat = decode(model, params, f + sg(f_hat - f))  # straight-through
  mse, l1 = jnp.mean((x_hat - x) ** 2), jnp.mean(jnp.abs(x_hat - x))
  vq = aux['codebook'] + model.cfg.beta * aux['commit']
  total = mse + opts.l1_weight * l1 + opts.vq_weight * vq
  counts = aux['counts'].sum(axis=0)  # [V]
  usage, perplexity = _usage(counts)
  flat = aux['residuals'].reshape(-1, aux['residuals'].shape[-1])  # [B L, Cz]
  rows = jax.random.randint(rng, (opts.num_features,), 0, flat.shape[0])
  latent_err = jnp.mean((f - f_hat) ** 2) / jnp.maximum(jnp.mean(f ** 2), 1e-12)
  return total, {'mse': mse, 'l1': l1, 'vq': aux['commit'], 'latent_err': sg(latent_err),
                 'usage': usage, 'perplexity': perplexity,
                 '_counts': counts, '_features': flat[rows]}


def after_update(params, extra, aux, rng, *, model: VQVAE, **options):
  """Usage EMA and dead-code restarts (jittable): share <- d share + (1 - d) counts / sum;
  codes with share < dead_threshold / V become random rows of aux['_features'] plus noise
  (noise std = reinit_noise x the rows' rms) and their share is reset to the mean share.
  Returns (params, extra, {'dead_codes': how many were restarted}). Adam's moments of a
  restarted code are left as they were."""
  opts = Options(**options)
  counts, feats = aux['_counts'], aux['_features']  # [V], [M, Cz]
  V = model.cfg.codebook_size
  d = opts.usage_decay
  usage = d * extra['usage'] + (1 - d) * counts / jnp.maximum(counts.sum(), 1.0)
  dead = usage < opts.dead_threshold / V  # [V]
  k_rows, k_noise = jax.random.split(rng)
  rows = jax.random.randint(k_rows, (V,), 0, feats.shape[0])
  rms = jnp.sqrt(jnp.mean(feats ** 2))
  fresh = feats[rows] + opts.reinit_noise * rms * jax.random.normal(k_noise, (V, feats.shape[1]))
  codebook = params['codebook']
  params = {**params, 'codebook': jnp.where(dead[:, None], fresh.astype(codebook.dtype),
                                            codebook)}
  extra = {**extra, 'usage': jnp.where(dead, usage.mean(), usage)}
  return params, extra, {'dead_codes': dead.sum().astype(jnp.float32)}


def evaluate(params, batch, rng, *, model: VQVAE, **options) -> dict:
  """Held-out sums (means once divided by 'count'): 'mse' per pixel of x_hat = D(f_hat),
  'psnr' (dB, images in [-1, 1]: 10 log10(4 / mse)), 'latent_err' ||f - f_hat||^2 / ||f||^2,
  'usage' (fraction of the V codes used by the batch; batch-size dependent) and 'perplexity'."""
  Options(**options)  # validates
  x = batch['image']
  B = x.shape[0]
  f = encode(model, params, x)
  _, f_hat, aux = quantize(model, params, f)
  x_hat = decode(model, params, f_hat)
  mse = jnp.mean((x_hat - x) ** 2, axis=(1, 2, 3))  # [B]
  latent_err = jnp.sum((f - f_hat) ** 2, axis=(1, 2, 3)) / jnp.maximum(
      jnp.sum(f ** 2, axis=(1, 2, 3)), 1e-12)
  usage, perplexity = _usage(aux['counts'].sum(axis=0))
  psnr = 10 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))  # [B]
  return {'mse_sum': mse.sum(), 'psnr_sum': psnr.sum(),
          'latent_err_sum': latent_err.sum(), 'usage_sum': usage * B,
          'perplexity_sum': perplexity * B, 'count': jnp.asarray(B, jnp.float32)}
