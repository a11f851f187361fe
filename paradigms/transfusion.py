"""Transfusion (Zhou et al. 2024): one Transformer, next-token prediction on text and rectified
flow on image patches, on the glyph set (text in images; no VQ, pixels).

One sequence per example, of static length L = S + N + 3 (S = label_len prompt slots, N patches):
  text -> image (generation):  [PAD..] [BOS] c_1 .. c_n [BOI] p_1 .. p_N [EOI]   (left-padded)
  image -> text (OCR):         [BOI] p_1 .. p_N [EOI] c_1 .. c_n [EOS] [PAD..]    (right-padded)
A batch mixes them: its first round(ocr_fraction B) rows are OCR examples. Text tokens are the
glyph alphabet's characters with the label's ids (1 + index; 0 = PAD) and four specials after
them (BOS, EOS, BOI, EOI); p_i are p x p pixel patches in raster order.

Inputs: a text token enters through the (tied) embedding table; a patch of x_t enters as
    e_i = W_in p_i + sincos_2d(row, col) + MLP(sinusoid(t))            (Transfusion sec. 3.2)
(a linear patch encoder, DiT's fixed 2-D position table and the timestep embedding added to the
image positions). Every position also gets 1-D RoPE of its flat index, so text and image share
one position axis. Outputs: logits = h E^T at text positions, v_hat = W_out h at patches.

Attention (the Transfusion mask, sec. 3.2): causal across the sequence, bidirectional within
the image. It is the backbone's 'block_causal' form over ids: a text position's id is its
index, every patch's id is the index of the image's last patch, and query i sees key j iff
id_j <= id_i. So a patch sees the earlier text and the whole image, text before the image does
not see it, text after it sees all of it. PAD positions get the id EMPTY, which masks them as
keys (`paradigms.nn.attention`), so left padding changes nothing (RoPE is relative).

Noise (rectified flow, SD3's logit-normal t): x_t = (1 - t) x_0 + t eps, t = sigmoid(u),
u ~ N(flow_mean, flow_std^2); the target velocity is v = eps - x_0. OCR images, which precede
their text, are noised at most to t = ocr_t_max, by t_ocr = ocr_t_max t (default 0.5: our
reading of Transfusion's noise limiting for captioning, t <= 500 of 1000 steps; the exact
wording of the paper is not in REFERENCES.md and was not checked here).
Loss (Transfusion eq. 4):
    L = L_LM + lambda L_diff,
    L_LM   = mean over text targets of -log p(y_i | y_<i)             (next-token CE)
    L_diff = mean over image patches of ||v_hat - v||^2 / P           (flow MSE, P = p p C)
lambda = `diffusion_weight` (paper: 5). Text targets are c_1 .. c_n and BOI in generation rows
(so the model decides when an image starts), c_1 .. c_n and EOS in OCR rows; EOI is never a
target (the sampler appends it). Each mean is over its own positions and is exactly 0 when a
batch has none (OCR images count in L_diff only when ocr_t_max > 0: a clean image's velocity
target eps - x_0 is unpredictable). Generation prompts are dropped (n = 0) with probability
label_dropout, so the same network is the unconditional model for classifier-free guidance.

Interleaved sequences (issue 25 item 8; loss.interleaved, model.max_images = M >= 2): M
consecutive batch rows become one sequence [BOS] c^1 [BOI] I^1 [EOI] .. c^M [BOI] I^M [EOI]
[EOS] (`interleaved_layout`), every image a generation target with its own t, every text token
after BOS a target (BOI included: the model learns when an image starts); sampled by
`sample.transfusion.interleaved`, where the model's BOI switches the sampler to diffusion.

Batch: {'image': float32 [B, H, W, C] in [-1, 1], 'label': int32 [B, S]} (pipelines/glyphs.py).
`evaluate`: bits per text token of OCR examples (clean images) and the flow MSE of generation
examples at stratified t. Samplers: sample/transfusion.py.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from paradigms.nn.attention import EMPTY, KVCache, mask_from_ids
from paradigms.nn.dit import patchify, sincos_2d, timestep_features
from paradigms.nn.layers import Embed, RMSNorm, normal_init, zeros_init
from paradigms.nn.transformer import Transformer, TransformerConfig, block_stack, run_blocks

PAD = 0  # also the label's blank id: character ids are the label's, 1..A


@dataclasses.dataclass(frozen=True)
class TransfusionConfig:
  """The network's fields (`config.model`). Token ids: 0 = PAD, 1..label_vocab-1 the
  characters (the label's ids), then BOS, EOS, BOI, EOI."""
  image_size: int = 32  # H (data.image_size)
  image_width: int = 0  # W (data.image_width); 0 = square
  channels: int = 3
  patch_size: int = 4
  label_len: int = 3  # S prompt / caption slots (data.max_chars)
  label_vocab: int = 32  # len(alphabet) + 1 (0 = blank)
  max_images: int = 1  # M images per sequence (interleaved training and sampling, item 8)
  freq_dim: int = 256  # sinusoidal features of t
  d_model: int = 128
  n_layers: int = 4
  n_heads: int = 4
  n_kv_heads: int = 0  # 0 = n_heads
  d_ff: int = 0  # 0 -> SwiGLU's 8/3 d rounded up to a multiple of 64
  rope_base: float = 10_000.0
  norm_eps: float = 1e-6
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  remat_policy: str = 'none'
  scan_unroll: int = 0
  attention_impl: str = 'xla'

  def __post_init__(self):
    if self.image_width < 0 or self.image_size % self.patch_size or self.width % self.patch_size:
      raise ValueError(f'the image {self.image_size}x{self.width} (model.image_size x '
                       f'model.image_width, 0 = square) must have both sides multiples of '
                       f'model.patch_size={self.patch_size}; change either')
    if self.max_images < 1:
      raise ValueError(f'model.max_images={self.max_images} must be >= 1')
    if self.label_len < 1 or self.label_vocab < 2:
      raise ValueError(f'model.label_len={self.label_len} must be >= 1 and model.label_vocab='
                       f'{self.label_vocab} >= 2 (len(data.alphabet) + 1)')
    if self.d_model % 4 or self.freq_dim % 2:
      raise ValueError(f'model.d_model={self.d_model} must be a multiple of 4 (2-D sin-cos '
                       f'positions) and model.freq_dim={self.freq_dim} even')
    self.backbone()  # validates the shared fields

  @property
  def width(self) -> int:
    return self.image_width or self.image_size

  @property
  def grid(self) -> tuple:
    """(H/p, W/p) patch rows and columns."""
    return self.image_size // self.patch_size, self.width // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid[0] * self.grid[1]

  @property
  def patch_dim(self) -> int:
    return self.patch_size ** 2 * self.channels

  @property
  def seq_len(self) -> int:
    """Cache slots: S + N + 3 (either layout of the module doc), or M (S + N + 2) + 2 (an
    interleaved sequence of M >= 2 images)."""
    S, N, M = self.label_len, self.num_patches, self.max_images
    return S + N + 3 if M == 1 else M * (S + N + 2) + 2

  @property
  def bos(self) -> int:
    return self.label_vocab

  @property
  def eos(self) -> int:
    return self.label_vocab + 1

  @property
  def boi(self) -> int:
    return self.label_vocab + 2

  @property
  def eoi(self) -> int:
    return self.label_vocab + 3

  @property
  def vocab_size(self) -> int:
    return self.label_vocab + 4

  def backbone(self) -> TransformerConfig:
    return TransformerConfig(
        vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers,
        n_heads=self.n_heads, n_kv_heads=self.n_kv_heads, d_ff=self.d_ff, max_len=self.seq_len,
        mask='block_causal', rope_base=self.rope_base, norm_eps=self.norm_eps, dtype=self.dtype,
        param_dtype=self.param_dtype, remat_policy=self.remat_policy,
        scan_unroll=self.scan_unroll, attention_impl=self.attention_impl)

  def num_params(self) -> int:
    """Exact parameter count (tested against the initialised tree)."""
    d, P, f = self.d_model, self.patch_dim, self.freq_dim
    return self.backbone().num_params() + (P * d + d) + (f * d + d + d * d + d) + (d * P + P)


Config = TransfusionConfig


@dataclasses.dataclass(frozen=True)
class Options:
  """The loss's knobs (`config.loss`)."""
  ocr_fraction: float = 0.5  # share of each batch laid out image -> text
  diffusion_weight: float = 5.0  # lambda (Transfusion: 5)
  label_dropout: float = 0.1  # generation prompts dropped to n = 0 (CFG)
  ocr_t_max: float = 0.5  # OCR images are noised to t = ocr_t_max t (0: clean, no L_diff)
  flow_mean: float = 0.0  # t = sigmoid(u), u ~ N(flow_mean, flow_std^2)
  flow_std: float = 1.0
  interleaved: bool = False  # item 8: sequences of model.max_images (string, image) pairs

  def __post_init__(self):
    for name in ('ocr_fraction', 'ocr_t_max'):
      if not 0 <= getattr(self, name) <= 1:
        raise ValueError(f'loss.{name}={getattr(self, name)} must be in [0, 1]')
    if not 0 <= self.label_dropout < 1:
      raise ValueError(f'loss.label_dropout={self.label_dropout} must be in [0, 1)')
    if self.diffusion_weight < 0 or self.flow_std <= 0:
      raise ValueError(f'loss.diffusion_weight={self.diffusion_weight} must be >= 0 and '
                       f'loss.flow_std={self.flow_std} > 0')


@struct.dataclass
class Sequence:
  """One batch laid out as in the module doc."""
  tokens: jax.Array  # [B, L] int32 (PAD at the patch positions)
  image_start: jax.Array  # [B] (or [B, M] interleaved) int32 flat index of each image's p_1
  targets: jax.Array  # [B, L] int32 the next token at each position
  target_mask: jax.Array  # [B, L] float32 1 where targets[:, i] is a text target


def layout(cfg: TransfusionConfig, label, ocr) -> Sequence:
  """label int32 [B, S] (the string's character ids, 0 = blank) and ocr bool [B] (True: image
  -> text) -> the Sequence of the module doc's layouts. Blanks are squeezed out first, so the
  string is the label's non-zero slots in order."""
  S, N = cfg.label_len, cfg.num_patches
  L = S + N + 3
  if label.shape[-1] != S:
    raise ValueError(f'label has {label.shape[-1]} slots but model.label_len={S}; set '
                     'model.label_len to data.max_chars')
  B = label.shape[0]
  label = label.astype(jnp.int32)
  c = jnp.take_along_axis(label, jnp.argsort(label == PAD, axis=1, stable=True), axis=1)
  n = (c != PAD).sum(axis=1)[:, None]  # [B, 1] characters
  p = jnp.arange(L)[None]  # [1, L]
  char = lambda j: jnp.take_along_axis(c, jnp.clip(j, 0, S - 1), axis=1)  # c_{j+1}, [B, L]
  k = p - (S - n)  # generation: 0 at BOS
  gen = jnp.select([k < 0, k == 0, p <= S, p == S + 1, p == L - 1],
                   [PAD, cfg.bos, char(k - 1), cfg.boi, cfg.eoi], PAD)
  j = p - (N + 2)  # OCR: 0 at c_1
  rec = jnp.select([p == 0, p <= N, p == N + 1, j < n, j == n],
                   [cfg.boi, PAD, cfg.eoi, char(j), cfg.eos], PAD)
  ocr = jnp.broadcast_to(jnp.asarray(ocr, bool), (B,))[:, None]
  tokens = jnp.where(ocr, rec, gen)
  targets = jnp.concatenate([tokens[:, 1:], jnp.full((B, 1), PAD, jnp.int32)], axis=1)
  mask = jnp.where(ocr, (j >= -1) & (j <= n - 1), (k >= 0) & (p <= S))
  start = jnp.where(ocr[:, 0], 1, S + 2).astype(jnp.int32)
  return Sequence(tokens=tokens.astype(jnp.int32), image_start=start, targets=targets,
                  target_mask=mask.astype(jnp.float32))


def interleaved_layout(cfg: TransfusionConfig, labels) -> Sequence:
  """Item 8: M (string, image) pairs in one sequence, right-padded to M (S + N + 2) + 2:
      [BOS] c^1 [BOI] I^1 [EOI] c^2 [BOI] I^2 [EOI] .. c^M [BOI] I^M [EOI] [EOS] [PAD..]
  labels int32 [B, M, S] -> Sequence with image_start [B, M]. Text targets: every text token
  after BOS (characters, each BOI: the model decides when an image starts, and EOS), none at
  or into the patches; EOI is input only."""
  B, M, S = labels.shape
  N = cfg.num_patches
  L = M * (S + N + 2) + 2
  labels = labels.astype(jnp.int32)
  c = jnp.take_along_axis(labels, jnp.argsort(labels == PAD, axis=2, stable=True), axis=2)
  n = (c != PAD).sum(axis=2)  # [B, M]
  seg = 1 + jnp.cumsum(n + N + 2, axis=1) - (n + N + 2)  # [B, M] first index of segment m
  p = jnp.arange(L)[None]  # [1, L]
  end = seg[:, -1:] + n[:, -1:] + N + 2  # [B, 1] the EOS
  tokens = jnp.where(p == 0, cfg.bos, jnp.where(p == end, cfg.eos, PAD))
  image = jnp.zeros((B, L), bool)
  for m in range(M):
    j = p - seg[:, m:m + 1]
    nm = n[:, m:m + 1]
    ch = jnp.take_along_axis(c[:, m], jnp.clip(j, 0, S - 1), axis=1)
    tokens = jnp.select([(j >= 0) & (j < nm), j == nm, j == nm + N + 1],
                        [ch, cfg.boi, cfg.eoi], tokens)
    image = image | ((j > nm) & (j <= nm + N))
  targets = jnp.concatenate([tokens[:, 1:], jnp.full((B, 1), PAD, jnp.int32)], axis=1)
  after = jnp.concatenate([image[:, 1:], jnp.zeros((B, 1), bool)], axis=1)
  mask = (p < end) & ~image & ~after
  return Sequence(tokens=tokens.astype(jnp.int32), image_start=(seg + n + 1).astype(jnp.int32),
                  targets=targets, target_mask=mask.astype(jnp.float32))


def sequence_ids(cfg: TransfusionConfig, tokens, positions, image_start):
  """The block-causal mask ids [B, T] of the module doc: the flat index for text, its image's
  last index for a patch, EMPTY for PAD. tokens, positions [B, T]; image_start [B] or [B, M]
  (M images; a start <= -N marks an absent one)."""
  image, m, _ = locate(cfg, positions, image_start)
  last = jnp.take_along_axis(image_start.reshape(tokens.shape[0], -1), m, axis=1)
  last = last + cfg.num_patches - 1
  return jnp.where(image, last, jnp.where(tokens == PAD, EMPTY, positions)).astype(jnp.int32)


def locate(cfg: TransfusionConfig, positions, image_start):
  """Which positions are patches: positions [B, T], image_start [B] or [B, M] -> (is_image bool
  [B, T], image index m [B, T], patch index k in [0, N) [B, T]; m, k are 0 at text)."""
  B = positions.shape[0]
  k = positions[:, :, None] - image_start.reshape(B, 1, -1)  # [B, T, M]
  inside = (k >= 0) & (k < cfg.num_patches)
  m = jnp.argmax(inside, axis=-1)
  k = jnp.take_along_axis(k, m[..., None], axis=-1)[..., 0]
  image = inside.any(axis=-1)
  return image, m, jnp.where(image, k, 0)


def attention_mask(cfg: TransfusionConfig, tokens, image_start):
  """The Transfusion mask of a whole sequence as an explicit boolean [B, L, L] (query, key),
  the one the network's 'block_causal' ids give (for tests and inspection)."""
  pos = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
  ids = sequence_ids(cfg, tokens, pos, image_start)
  return mask_from_ids('block_causal', ids, ids)[:, 0]


class Transfusion(nn.Module):
  """The shared scanned Blocks (`paradigms.nn.transformer`) over mixed text / patch positions.

  tokens int32 [B, T] (any id at patch positions); x float32 [B, N, P] the noised patches x_t of
  one image per row, or [B, M, N, P] of M (interleaved sequences); t float32 [B] (or [B, M])
  their flow times; image_start int32 [B] (or [B, M]): the flat index of each image's p_1 (it
  occupies image_start .. image_start + N - 1; a start <= -N marks an absent image);
  positions [B, T] (default cache.index + arange(T)); cache: a stacked KVCache (`init_cache`)
  or None. A chunk may hold any part of the sequence: a patch position reads x at its index
  within its image. Returns (logits [B, T, V] float32, v_hat [B, (M,) N, P] float32 read at
  each image's positions counted from positions[:, 0] (meaningful where the chunk holds that
  whole image), cache)."""
  cfg: TransfusionConfig

  def init_cache(self, batch: int) -> KVCache:
    """An empty cache of seq_len slots for `batch` rows."""
    return Transformer(self.cfg.backbone(), parent=None).init_cache(batch, self.cfg.seq_len)

  @nn.compact
  def __call__(self, tokens, x, t, image_start, *, positions=None, cache: KVCache | None = None):
    cfg, bb = self.cfg, self.cfg.backbone()
    dt, pdt = bb.compute_dtype, jnp.dtype(cfg.param_dtype)
    d, N, P = cfg.d_model, cfg.num_patches, cfg.patch_dim
    B, T = tokens.shape
    one = x.ndim == 3  # [B, N, P]: one image per row
    x = x[:, None] if one else x  # [B, M, N, P]
    M = x.shape[1]
    if x.shape[2:] != (N, P):
      raise ValueError(f'patches have shape {x.shape[2:]}, the model expects ({N}, {P}) '
                       '(model.image_size, image_width, patch_size, channels)')
    if positions is None:
      start = 0 if cache is None else cache.index[0]
      positions = jnp.broadcast_to(start + jnp.arange(T, dtype=jnp.int32), (B, T))
    image_start = jnp.broadcast_to(jnp.asarray(image_start, jnp.int32).reshape(B, -1), (B, M))
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32).reshape(-1, 1) if jnp.ndim(t) < 2 else t,
                         (B, M))

    def dense(h, n_in, n_out, name, std=None, names=(None, 'embed')):
      init = zeros_init(names) if std == 0 else normal_init(std or n_in ** -0.5, names)
      w = self.param(f'{name}_w', init, (n_in, n_out), pdt)
      b = self.param(f'{name}_b', zeros_init(names[1:]), (n_out,), pdt)
      return jnp.einsum('...i,io->...o', h.astype(dt), w.astype(dt)) + b.astype(dt)

    embed = Embed(cfg.vocab_size, d, True, dt, pdt, name='embed')
    temb = timestep_features(t.reshape(-1), cfg.freq_dim)  # [B M, F]
    temb = dense(nn.silu(dense(temb, cfg.freq_dim, d, 't1', std=0.02)), d, d, 't2', std=0.02,
                 names=('embed', None)).reshape(B, M, 1, d)
    img = dense(x, P, d, 'patch_in') + jnp.asarray(sincos_2d(cfg.grid, d), dt) + temb
    image, m, k = locate(cfg, positions, image_start)  # [B, T] each
    picked = jnp.take_along_axis(img.reshape(B, M * N, d), (m * N + k)[..., None], axis=1)
    h = jnp.where(image[..., None], picked, embed(tokens))
    h = nn.with_logical_constraint(h, ('batch', 'length', 'act_embed'))
    ids = sequence_ids(cfg, tokens, positions, image_start)
    h, cache = run_blocks(block_stack(bb), h, cache, positions, ids, None, None)
    h = RMSNorm(cfg.norm_eps, dt, pdt, name='final_norm')(h)
    logits = embed.attend(h)
    at = image_start[..., None] - positions[:, :1, None] + jnp.arange(N)  # [B, M, N]
    at = jnp.clip(at, 0, T - 1).reshape(B, M * N)
    v = dense(jnp.take_along_axis(h, at[..., None], axis=1), d, P, 'patch_out', std=0,
              names=('embed', None)).reshape(B, M, N, P).astype(jnp.float32)
    return logits, (v[:, 0] if one else v), cache


def lm_loss(logits, targets, mask):
  """L_LM: mean -log softmax(logits)[target] over mask. logits [B, L, V], targets [B, L],
  mask [B, L] float -> (mean [], nats summed [], count []); 0 when the mask is empty."""
  nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(
      logits, targets[..., None], axis=-1)[..., 0]
  nats, count = jnp.sum(nll * mask), jnp.sum(mask)
  return nats / jnp.maximum(count, 1.0), nats, count


def flow_loss(v_hat, v, weight):
  """L_diff: mean over the weighted images' patches of ||v_hat - v||^2 / P. v_hat, v
  [B, N, P]; weight [B] float -> (mean [], per-image MSE [B]); 0 when every weight is 0."""
  per = jnp.mean((v_hat - v) ** 2, axis=(1, 2))  # [B]
  return jnp.sum(per * weight) / jnp.maximum(jnp.sum(weight), 1.0), per


def drop_prompt(rng, label, rate: float):
  """label [B, S] -> [B, S] with each row blanked (the empty prompt) with probability rate."""
  if not rate:
    return label
  keep = jax.random.uniform(rng, (label.shape[0], 1)) >= rate
  return jnp.where(keep, label, PAD)


def _patches(cfg: TransfusionConfig, image):
  want = (cfg.image_size, cfg.width, cfg.channels)
  if image.shape[1:] != want:
    raise ValueError(f'images have shape {image.shape[1:]}, the model expects {want}: copy '
                     'data.image_size / image_width / channels into model.*')
  return patchify(image.astype(jnp.float32), cfg.patch_size)  # [B, N, P]


def forward(model: Transfusion, params, seq: Sequence, x0, t, eps):
  """Noise and run one laid-out batch: x0, eps [B, (M,) N, P] clean patches and noise, t
  [B, (M)] -> (logits [B, L, V], v_hat, v = eps - x_0 (both like x0))."""
  tb = t[..., None, None]
  x_t = (1 - tb) * x0 + tb * eps
  logits, v_hat, _ = model.apply({'params': params}, seq.tokens, x_t, t, seq.image_start)
  return logits, v_hat, eps - x0


# --- The paradigm contract ---------------------------------------------------------------------

def build(cfg: TransfusionConfig) -> Transfusion:
  return Transfusion(cfg)


def example_batch(batch_size: int, data, model_cfg: TransfusionConfig) -> dict:
  """images [B, H, W, C] float32 and labels [B, max_chars] int32."""
  width = getattr(data, 'image_width', 0) or data.image_size
  return {'image': jax.ShapeDtypeStruct((batch_size, data.image_size, width, data.channels),
                                        jnp.float32),
          'label': jax.ShapeDtypeStruct((batch_size, data.max_chars), jnp.int32)}


def init(model: Transfusion, rng, batch) -> dict:
  cfg = model.cfg
  B = batch['label'].shape[0]
  return model.init(rng, jnp.zeros((B, cfg.seq_len), jnp.int32),
                    jnp.zeros((B, cfg.num_patches, cfg.patch_dim)), jnp.zeros((B,)),
                    jnp.full((B,), cfg.label_len + 2, jnp.int32))


def loss(params, batch, rng, *, model: Transfusion, **options):
  """L = L_LM + lambda L_diff (module doc, Transfusion eq. 4) on a batch whose first
  round(ocr_fraction B) rows are OCR examples, or (loss.interleaved) of interleaved sequences
  of model.max_images consecutive rows each. Metrics: lm_nll, lm_bits_per_token, flow_mse."""
  o = Options(**options)
  cfg = model.cfg
  x0, label = _patches(cfg, batch['image']), batch['label']
  B = label.shape[0]
  r_drop, r_t, r_eps = jax.random.split(rng, 3)
  t = jax.nn.sigmoid(o.flow_mean + o.flow_std * jax.random.normal(r_t, (B,)))
  eps = jax.random.normal(r_eps, x0.shape)
  if o.interleaved:
    M = cfg.max_images
    if M < 2 or B % M:
      raise ValueError(f'loss.interleaved needs model.max_images >= 2 (got {M}) dividing '
                       f'data.batch_size={B}')
    seq = interleaved_layout(cfg, label.reshape(B // M, M, -1))
    shape = lambda a: a.reshape((B // M, M) + a.shape[1:])
    logits, v_hat, v = forward(model, params, seq, shape(x0), shape(t), shape(eps))
    v_hat, v, weight = v_hat.reshape(x0.shape), v.reshape(x0.shape), jnp.ones((B,))
  else:
    ocr = jnp.arange(B) < int(round(o.ocr_fraction * B))
    label = jnp.where(ocr[:, None], label, drop_prompt(r_drop, label, o.label_dropout))
    seq = layout(cfg, label, ocr)
    t = jnp.where(ocr, o.ocr_t_max * t, t)
    logits, v_hat, v = forward(model, params, seq, x0, t, eps)
    weight = jnp.where(ocr, float(o.ocr_t_max > 0), 1.0)
  l_lm, _, _ = lm_loss(logits, seq.targets, seq.target_mask)
  l_diff, _ = flow_loss(v_hat, v, weight)
  total = l_lm + o.diffusion_weight * l_diff
  return total, {'lm_nll': l_lm, 'lm_bits_per_token': l_lm / jnp.log(2.0), 'flow_mse': l_diff}


def evaluate(params, batch, rng, *, model: Transfusion, **options) -> dict:
  """Held-out sums: {'nats', 'tokens'} of OCR text (every row laid out image -> text with the
  clean image, t = 0: bits per caption token, EOS included) and {'flow_mse_sum', 'count'} of
  generation rows (true prompts) at stratified t_b = (b + 1/2) / B."""
  del options
  x0, label = _patches(model.cfg, batch['image']), batch['label']
  B = label.shape[0]
  seq = layout(model.cfg, label, jnp.ones((B,), bool))
  logits, _, _ = forward(model, params, seq, x0, jnp.zeros((B,)), jnp.zeros_like(x0))
  _, nats, count = lm_loss(logits, seq.targets, seq.target_mask)
  t = (jnp.arange(B) + 0.5) / B
  eps = jax.random.normal(rng, x0.shape)
  seq = layout(model.cfg, label, jnp.zeros((B,), bool))
  _, v_hat, v = forward(model, params, seq, x0, t, eps)
  _, per = flow_loss(v_hat, v, jnp.ones((B,)))
  return {'nats': nats, 'tokens': count, 'flow_mse_sum': per.sum(),
          'count': jnp.asarray(B, jnp.float32)}
