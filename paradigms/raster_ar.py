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
    self.backbone()  # validates the shared fields

  @property
  def grid(self) -> tuple:
    """(h, w): the token grid."""
    h = self.scales[0]
    return h, h * (self.image_width // self.image_size if self.image_width else 1)

  @property
  def num_tokens(self) -> int:
    """N = h w image tokens."""
    h, w = self.grid
    return h * w

  @property
  def seq_len(self) -> int:
    """Positions the network reads: S + N - 1 (AR: the last code is never an input),
    S + N (MaskGIT)."""
    return self.label_len + self.num_tokens - (0 if self.MASKED else 1)

  @property
  def mask_id(self) -> int:
    """MaskGIT's [MASK] input id (after the image codes and the prompt ids)."""
    return self.codebook_size + self.label_vocab

  def backbone(self) -> TransformerConfig:
    """The shared Transformer: causal (raster AR) or bidirectional (MaskGIT)."""
    vocab = self.codebook_size + self.label_vocab + (1 if self.MASKED else 0)
    return TransformerConfig(
        vocab_size=vocab, d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads,
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
  module doc) -> (logits [B, T, V] float32 over the V image codes, cache). `cache` (a KVCache
  with a leading [n_layers] axis, `init_cache`) decodes a few positions at a time."""
  cfg: TokenImageConfig

  def setup(self):
    self.net = Transformer(self.cfg.backbone())

  def init_cache(self, batch: int) -> KVCache:
    """An empty cache of seq_len slots for `batch` rows."""
    return Transformer(self.cfg.backbone(), parent=None).init_cache(batch, self.cfg.seq_len)

  def __call__(self, tokens, *, cache: KVCache | None = None):
    logits, cache = self.net(tokens, cache=cache)
    return logits[..., :self.cfg.codebook_size], cache


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
  null with probability `label_dropout`. Metrics: nll, bits_per_token, accuracy."""
  label = drop_prompt(rng, batch['label'], label_dropout)
  nll, logits = image_nll(model, params, batch['tokens'], label)
  ce = nll.mean()
  hit = (jnp.argmax(logits, axis=-1) == batch['tokens']).astype(jnp.float32)
  return ce, {'nll': ce, 'bits_per_token': ce / jnp.log(2.0), 'accuracy': hit.mean()}


def evaluate(params, batch, rng, *, model: TokenImageTransformer,
             label_dropout: float = 0.1) -> dict:
  """Held-out sums {'nats', 'tokens'} of the exact NLL with the true prompts (bits per image
  token)."""
  del rng, label_dropout
  nll, _ = image_nll(model, params, batch['tokens'], batch['label'])
  return {'nats': nll.sum(), 'tokens': jnp.asarray(nll.size, jnp.float32)}
