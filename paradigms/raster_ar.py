"""Raster-order autoregression over VQ tokens, prompt-conditioned (LlamaGen, Sun et al. 2024).

An image is the h x w code map r of a single-scale VQ-VAE (`paradigms/vqvae.py` with
model.scales=(h,): the finest scale only), read in raster order x_1..x_N, N = h w, and a prompt
is its S character tokens c_1..c_S (`label`: 1 + index in the alphabet, 0 = blank / null). One
causal sequence on the shared Transformer (`paradigms/nn/transformer.py`, RoPE, KV cache):
    z = [c_1 .. c_S ; x_1 .. x_N]                                               # [B, S + N]
    p(x | c) = prod_{i=1..N} p_theta(x_i | c, x_{<i})                (LlamaGen eq. 1, GPT)
The network reads z_{1..S+N-1} and the logit at position S - 1 + i predicts x_i; prompt
positions carry no loss. Loss: the mean next-token cross entropy over the N image tokens,
    L = -1/N sum_i log p_theta(x_i | c, x_{<i}),
with the prompt replaced by the null prompt (all slots 0) with probability `label_dropout`, so
the same network gives the unconditional p_theta(x_i | x_{<i}) for classifier-free guidance
(LlamaGen Sec. 2.3; `sample/raster_ar.py` mixes l = l_null + w (l_cond - l_null)). `evaluate`
gives the exact held-out NLL in bits per image token.

Vocabulary of the one embedding table: ids [0, V) are the V image codes, V + j the prompt
token of label id j in [0, label_vocab) (so V is the null token), and, for MaskGIT
(`paradigms/maskgit.py`, which shares this network with a bidirectional mask), one mask id
V + label_vocab. The output head is the tied embedding restricted to the V image codes.
Positions: 1-D RoPE over the flat sequence (LlamaGen's 2-D RoPE is not used; the raster index
i = row w + col determines both coordinates for a fixed grid).

Batch (from image batches through data.tokenizer, `pipelines/sources.py`): {'tokens': int32
[B, N] raster order, 'inputs': float32 [B, 0, Cz] (empty: no next-scale inputs with one
scale), 'label': int32 [B, S]}.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from paradigms.nn.attention import KVCache
from paradigms.nn.transformer import Transformer, TransformerConfig

# a paradigm that trains on token batches of a VQ-VAE run (config.data.tokenizer)
TOKENIZED = True


@dataclasses.dataclass(frozen=True)
class TokenImageConfig:
  """Fields of the raster AR and MaskGIT networks (`config.model`). scales / codebook_size /
  latent_dim are the tokenizer's (checked against data.tokenizer by `load_tokenizer`); the
  token grid is h = scales[0] rows by w = a h columns, a = image_width / image_size (the
  tokenizer's aspect, as `paradigms/vqvae.py`; image_width 0 = square)."""
  MASKED: ClassVar[bool] = False  # MaskGIT: bidirectional attention and one extra mask id

  scales: tuple = (8,)  # the tokenizer's model.scales: one scale, the latent height h
  image_size: int = 32  # H (data.image_size): with image_width, only the aspect is used
  image_width: int = 0  # W (data.image_width), a multiple of H; 0 = square
  codebook_size: int = 256  # V (the tokenizer's model.codebook_size)
  latent_dim: int = 16  # Cz (the tokenizer's; the network does not read it)
  label_len: int = 3  # S prompt tokens (data.max_chars)
  label_vocab: int = 32  # ids per prompt slot, 0 = blank / null
  max_images: int = 1  # M >= 2: interleaved text-image sequences (raster AR only; module doc)
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
    scales = tuple(int(s) for s in self.scales)  # a loaded config.json gives a list
    object.__setattr__(self, 'scales', scales)
    if len(scales) != 1 or scales[0] < 1:
      raise ValueError(f'model.scales={scales}: raster AR and MaskGIT read the codes of a '
                       'single-scale tokenizer, model.scales=(h,); train one with '
                       'configs/vqvae_glyphs.py:<preset>,single')
    if self.image_size < 1 or self.image_width < 0 or self.image_width % self.image_size:
      raise ValueError(f'model.image_width={self.image_width} must be 0 (square) or a multiple '
                       f'of model.image_size={self.image_size} (the tokenizer\'s)')
    if self.codebook_size < 2 or self.latent_dim < 1:
      raise ValueError(f'model.codebook_size={self.codebook_size} must be >= 2 and '
                       f'model.latent_dim={self.latent_dim} >= 1 (copy the tokenizer\'s)')
    if self.label_len < 1 or self.label_vocab < 2:
      raise ValueError(f'model.label_len={self.label_len} must be >= 1 and model.label_vocab='
                       f'{self.label_vocab} >= 2 (0 is the null prompt token)')
    if self.max_images < 1 or (self.max_images > 1 and self.MASKED):
      raise ValueError(f'model.max_images={self.max_images} must be 1, or >= 2 for interleaved '
                       'sequences of a raster AR model (MaskGIT draws one image)')
    self.backbone()  # validates the shared fields

  @property
  def aspect(self) -> int:
    """a = W/H (1 when square; `next_scale.check_tokenizer` compares it with the tokenizer's)."""
    return self.image_width // self.image_size if self.image_width else 1

  @property
  def grid(self) -> tuple:
    """(h, w): the token grid."""
    h = self.scales[0]
    return h, h * self.aspect

  @property
  def num_tokens(self) -> int:
    """N = h w image tokens."""
    h, w = self.grid
    return h * w

  @property
  def interleaved(self) -> bool:
    return self.max_images > 1

  @property
  def seq_len(self) -> int:
    """Positions the network reads: S + N - 1 (AR: the last code is never an input),
    S + N (MaskGIT), or M (S + N + 2) + 2 (an interleaved sequence of M images)."""
    if self.interleaved:
      return self.max_images * (self.label_len + self.num_tokens + 2) + 2
    return self.label_len + self.num_tokens - (0 if self.MASKED else 1)

  @property
  def pad_id(self) -> int:
    """PAD of an interleaved sequence: the null prompt id V."""
    return self.codebook_size

  @property
  def bos(self) -> int:
    """The interleaved specials BOS, EOS, BOI, EOI follow the prompt ids (M >= 2 only)."""
    return self.codebook_size + self.label_vocab

  @property
  def eos(self) -> int:
    return self.bos + 1

  @property
  def boi(self) -> int:
    return self.bos + 2

  @property
  def eoi(self) -> int:
    return self.bos + 3

  @property
  def vocab_size(self) -> int:
    """V codes + label_vocab prompt ids + ([MASK] for MaskGIT, or 4 interleaved specials)."""
    extra = 1 if self.MASKED else (4 if self.interleaved else 0)
    return self.codebook_size + self.label_vocab + extra

  @property
  def mask_id(self) -> int:
    """MaskGIT's [MASK] input id (after the image codes and the prompt ids)."""
    return self.codebook_size + self.label_vocab

  def backbone(self) -> TransformerConfig:
    """The shared Transformer: causal (raster AR) or bidirectional (MaskGIT)."""
    return TransformerConfig(
        vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads,
        n_kv_heads=self.n_kv_heads, d_ff=self.d_ff, max_len=self.seq_len,
        mask='bidirectional' if self.MASKED else 'causal', rope_base=self.rope_base,
        norm_eps=self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
        remat_policy=self.remat_policy, scan_unroll=self.scan_unroll,
        attention_impl=self.attention_impl)

  def num_params(self) -> int:
    """Exact parameter count (tested against the initialised tree)."""
    return self.backbone().num_params()


Config = TokenImageConfig


class TokenImageTransformer(nn.Module):
  """The shared Transformer over [prompt ; image codes]: tokens int32 [B, T] (ids as in the
  module doc) -> (logits [B, T, V] float32 over the V image codes, or over the whole vocabulary
  for an interleaved model, cache). `cache` (a KVCache
  with a leading [n_layers] axis, `init_cache`) decodes a few positions at a time."""
  cfg: TokenImageConfig

  def setup(self):
    self.net = Transformer(self.cfg.backbone())

  def init_cache(self, batch: int) -> KVCache:
    """An empty cache of seq_len slots for `batch` rows."""
    return Transformer(self.cfg.backbone(), parent=None).init_cache(batch, self.cfg.seq_len)

  def __call__(self, tokens, *, cache: KVCache | None = None):
    logits, cache = self.net(tokens, cache=cache)
    return (logits if self.cfg.interleaved else logits[..., :self.cfg.codebook_size]), cache


def prompt_tokens(cfg: TokenImageConfig, label):
  """label int32 [B, S] (0 = null) -> prompt ids V + label [B, S]."""
  if label.shape[-1] != cfg.label_len:
    raise ValueError(f'label has {label.shape[-1]} slots but model.label_len={cfg.label_len}; '
                     'set model.label_len to data.max_chars')
  return cfg.codebook_size + label.astype(jnp.int32)


def drop_prompt(rng, label, rate: float):
  """Classifier-free guidance training: each row's prompt becomes the null prompt (all 0) with
  probability `rate`. label [B, S] -> [B, S]."""
  if not 0 <= rate < 1:
    raise ValueError(f'loss.label_dropout={rate} must be in [0, 1)')
  if not rate:
    return label
  keep = jax.random.uniform(rng, (label.shape[0], 1)) >= rate
  return jnp.where(keep, label, 0)


# --- The paradigm contract ---------------------------------------------------------------------

def build(cfg: TokenImageConfig) -> TokenImageTransformer:
  return TokenImageTransformer(cfg)


def example_batch(batch_size: int, data, model_cfg: TokenImageConfig) -> dict:
  """Shapes of one token batch: tokens [B, N], the empty next-scale inputs [B, 0, Cz] the
  pipeline adds, label [B, S] (plus 'residual' [B, N, Cz] with data.tokenizer_residual)."""
  N, Cz = model_cfg.num_tokens, model_cfg.latent_dim
  batch = {'tokens': jax.ShapeDtypeStruct((batch_size, N), jnp.int32),
           'inputs': jax.ShapeDtypeStruct((batch_size, 0, Cz), jnp.float32),
           'label': jax.ShapeDtypeStruct((batch_size, data.max_chars), jnp.int32)}
  if getattr(data, 'tokenizer_residual', False):
    batch['residual'] = jax.ShapeDtypeStruct((batch_size, N, Cz), jnp.float32)
  return batch


def init(model: TokenImageTransformer, rng, batch) -> dict:
  """Initial variables (a full-length zero sequence; the batch gives only B)."""
  B = batch['label'].shape[0]
  return model.init(rng, jnp.zeros((B, model.cfg.seq_len), jnp.int32))


def check_tokens(cfg: TokenImageConfig, tokens) -> None:
  """Fail loudly when the batch's codes do not fill the model's h x w grid."""
  if tokens.shape[1] != cfg.num_tokens:
    raise ValueError(f'the batch has {tokens.shape[1]} image tokens but the model\'s grid '
                     f'{cfg.grid} has {cfg.num_tokens}; copy model.scales / image_size / image_width '
                     "from the single-scale tokenizer run's config.json")


def image_nll(model: TokenImageTransformer, params, tokens, label):
  """-log p_theta(x_i | c, x_{<i}) per image token [B, N] and the logits [B, N, V] that
  predict them (positions S-1 .. S+N-2 of the sequence). tokens [B, N], label [B, S]."""
  cfg = model.cfg
  check_tokens(cfg, tokens)
  S = cfg.label_len
  z = jnp.concatenate([prompt_tokens(cfg, label), tokens[:, :-1]], axis=1)  # [B, S + N - 1]
  logits, _ = model.apply({'params': params}, z)
  logits = logits[:, S - 1:]  # [B, N, V]: only image tokens are predicted
  target = jnp.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0]
  return jax.nn.logsumexp(logits, axis=-1) - target, logits


def loss(params, batch, rng, *, model: TokenImageTransformer, label_dropout: float = 0.1):
  """Mean next-token cross entropy over the N image tokens (module doc), prompts dropped to
  null with probability `label_dropout`. Metrics: nll, bits_per_token, accuracy. An interleaved
  model (max_images >= 2) trains on the interleaved sequences (`interleaved_layout`)."""
  if model.cfg.interleaved:
    del rng  # no prompt dropout: the model writes its own prompts
    return _interleaved_nll(model, params, batch, mean=True)
  label = drop_prompt(rng, batch['label'], label_dropout)
  nll, logits = image_nll(model, params, batch['tokens'], label)
  ce = nll.mean()
  hit = (jnp.argmax(logits, axis=-1) == batch['tokens']).astype(jnp.float32)
  return ce, {'nll': ce, 'bits_per_token': ce / jnp.log(2.0), 'accuracy': hit.mean()}


def evaluate(params, batch, rng, *, model: TokenImageTransformer,
             label_dropout: float = 0.1) -> dict:
  """Held-out sums {'nats', 'tokens'} of the exact NLL with the true prompts (bits per image
  token)."""
  if model.cfg.interleaved:
    return _interleaved_nll(model, params, batch, mean=False)
  del rng, label_dropout
  nll, _ = image_nll(model, params, batch['tokens'], batch['label'])
  return {'nats': nll.sum(), 'tokens': jnp.asarray(nll.size, jnp.float32)}


# --- Interleaved text-image sequences (issue 25 item 8; model.max_images = M >= 2) ------------

def interleaved_layout(cfg: TokenImageConfig, labels, codes):
  """M (string, image) pairs as one token sequence, right-padded to L = M (S + N + 2) + 2:
      [BOS] c^1 [BOI] x^1_1 .. x^1_N [EOI] c^2 [BOI] x^2 [EOI] .. c^M [BOI] x^M [EOI] [EOS] [PAD..]
  labels int32 [B, M, S] (character ids, 0 = blank: squeezed out), codes int32 [B, M, N] ->
  (tokens [B, L], targets [B, L] (the next token), mask float32 [B, L]: 1 where targets[:, i]
  is trained, i.e. every token after BOS up to EOS but EOI, which the sampler writes itself;
  image [B, L] bool: targets[:, i] is an image code). The characters are ids V + label, PAD is
  V (the null prompt id)."""
  B, M, S = labels.shape
  N, V = cfg.num_tokens, cfg.codebook_size
  L = cfg.seq_len
  if (M, S, codes.shape[-1]) != (cfg.max_images, cfg.label_len, N):
    raise ValueError(f'interleaved batch of {M} images x {S} slots x {codes.shape[-1]} codes; '
                     f'the model has model.max_images={cfg.max_images}, label_len='
                     f'{cfg.label_len}, {N} codes per image')
  labels = labels.astype(jnp.int32)
  c = jnp.take_along_axis(labels, jnp.argsort(labels == 0, axis=2, stable=True), axis=2)
  n = (c != 0).sum(axis=2)  # [B, M] characters per string
  seg = 1 + jnp.cumsum(n + N + 2, axis=1) - (n + N + 2)  # [B, M] index of each string's c_1
  p = jnp.arange(L)[None]  # [1, L]
  end = seg[:, -1:] + n[:, -1:] + N + 2  # [B, 1] the EOS
  tokens = jnp.where(p == 0, cfg.bos, jnp.where(p == end, cfg.eos, cfg.pad_id))
  image = jnp.zeros((B, L), bool)
  for m in range(M):
    j = p - seg[:, m:m + 1]
    nm = n[:, m:m + 1]
    ch = V + jnp.take_along_axis(c[:, m], jnp.clip(j, 0, S - 1), axis=1)
    code = jnp.take_along_axis(codes[:, m].astype(jnp.int32), jnp.clip(j - nm - 1, 0, N - 1),
                               axis=1)
    inside = (j > nm) & (j <= nm + N)
    tokens = jnp.select([(j >= 0) & (j < nm), j == nm, inside, j == nm + N + 1],
                        [ch, cfg.boi, code, cfg.eoi], tokens)
    image = image | inside
  shift = lambda a, fill: jnp.concatenate([a[:, 1:], jnp.full((B, 1), fill, a.dtype)], axis=1)
  targets = shift(tokens, cfg.pad_id)
  mask = (p < end) & (targets != cfg.eoi)
  return tokens, targets, mask.astype(jnp.float32), shift(image, False)


def _interleaved_nll(model: TokenImageTransformer, params, batch, *, mean: bool):
  """Next-token cross entropy of interleaved sequences made from M consecutive batch rows
  (tokens [B, N], label [B, S]; B a multiple of M). mean: (loss, metrics) with bits per image
  code and per text token; else held-out sums {'nats', 'tokens'} over every target."""
  cfg = model.cfg
  check_tokens(cfg, batch['tokens'])
  B, M = batch['tokens'].shape[0], cfg.max_images
  if B % M:
    raise ValueError(f'an interleaved model packs model.max_images={M} images per sequence: '
                     f'data.batch_size={B} must be a multiple of it')
  tokens, targets, mask, image = interleaved_layout(
      cfg, batch['label'].reshape(B // M, M, -1), batch['tokens'].reshape(B // M, M, -1))
  logits, _ = model.apply({'params': params}, tokens[:, :-1])  # the last token is never read
  logits, targets, mask, image = logits, targets[:, :-1], mask[:, :-1], image[:, :-1]
  nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
  if not mean:
    return {'nats': (nll * mask).sum(), 'tokens': mask.sum()}
  img, txt = mask * image, mask * ~image
  per = lambda w: (nll * w).sum() / jnp.maximum(w.sum(), 1.0)
  ce = per(mask)
  return ce, {'nll': ce, 'bits_per_token': ce / jnp.log(2.0),
              'bits_per_code': per(img) / jnp.log(2.0), 'bits_per_text': per(txt) / jnp.log(2.0)}
