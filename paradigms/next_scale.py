"""VAR: next-scale prediction over a multi-scale residual VQ-VAE's token maps (Tian et al. 2024).

An image is the token maps r_1, ..., r_K of scales h_1 x w_1 < ... < h_K x w_K (r_k: h_k x w_k
ids of one shared codebook, `paradigms/vqvae.py`), and VAR factorises over scales, not raster
tokens:
    p(r_1, ..., r_K) = prod_k p(r_k | r_1, ..., r_{k-1})                     (VAR eq. 6)
with every token of r_k predicted in parallel. Teacher forcing (VAR sec. 3.2, Algorithm 2's
inputs): the input of scale k >= 2 is the cumulative reconstruction f_hat_{<k} = sum_{j<k}
phi_j(up(e[r_j])) area-downsampled to h_k x w_k (`vqvae.next_scale_inputs`); scale 1's input is
the start token, the class embedding ("class_emb" in VAR's code; here the sum of per-slot label
embeddings of a glyph string). Network (all positions of one image at once, L = sum_k h_k w_k):
    x = [start (h_1 w_1 rows); W_word inputs + b] + E_level[level] + E_pos[position]  # [B, L, D]
    h = the shared scanned Blocks, mask 'block_causal' with ids = level:              # [B, L, D]
        token i sees token j iff level(j) <= level(i) (VAR's attn_bias_for_masking)
    logits = W_head modulate(RMSNorm(h), adaLN(c)) + b_head                           # [B, L, V]
where c = sum_j E_j[label_j] is also the adaLN-Zero condition of every block (VAR's adaLN on
the class embedding). Positions: one learned embedding per position of the pyramid (VAR's
`pos_1LC`; RoPE is off, rope_base=0) plus one learned embedding per level (`lvl_embed`); VAR's
separate `pos_start` is folded into the first scale's rows of E_pos (a sum of two learned
vectors is one learned vector). Loss: the mean cross-entropy over all L positions (VAR trains
with equal weight 1/L per token), labels replaced by the null label (all slots 0) with
probability `label_dropout` so the same network gives the unconditional logits for CFG.

Prompt prefix (`prompt_prefix`, issue 25 item 6): the S prompt tokens E_j[label_j] (the same
per-slot table whose sum is c) also lead the sequence, as the text tokens of a text-to-image AR
model (LlamaGen's T2I prefix); they take mask level 0 and scale k level k + 1, so every token
sees the whole prompt, token by token, besides its pooled sum c in the start token and adaLN
(SD3 / HART keep the pooled text too). The prefix predicts nothing and adds no parameters; the
KV cache holds P + L slots (P = S) and the first cached pass writes the prefix with scale 1.

Rectangular images: `scales` are the maps' heights s_k and the width is an integer multiple a =
W/H of the height (`image_width` / `image_size`, the tokenizer's; 0 = square), so h_k x w_k =
s_k x a s_k (`paradigms/vqvae.py`, VAR Algorithm 1 in h x w form). The sequence is the same
pyramid with a s_k^2 rows per level; a square image (a = 1) is exactly the square model.

The network also runs one scale at a time against a KV cache (`scale=k`, `cache`): the sampler
feeds scale k's h_k w_k rows and gets their logits, the decoding of VAR Algorithm 2 / sec. 3.
`features=True` returns the blocks' output h [B, n, D] before the head (HART's diffusion head
conditions on it), and `embed_latents` is W_word (HART's token embedding of a latent).

Batch: {'tokens': int32 [B, L] (scale-major, raster within a scale), 'inputs': float32
[B, L - h_1 w_1, Cz] (teacher-forcing inputs), 'label': int32 [B, S] (0 = null)}, made from image
batches by `pipelines/sources.py` when `data.tokenizer` names a trained VQ-VAE run.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from paradigms.nn.attention import KVCache
from paradigms.nn.layers import AdaLN, RMSNorm, modulate, normal_init, zeros_init
from paradigms.nn.transformer import TransformerConfig, block_stack, run_blocks
from paradigms.vqvae import scale_shapes

# a paradigm that trains on token batches of a VQ-VAE run (config.data.tokenizer)
TOKENIZED = True


@dataclasses.dataclass(frozen=True)
class VARConfig:
  """VAR's fields (`config.model`). scales / codebook_size / latent_dim must be the tokenizer's."""
  scales: tuple = (1, 2, 3, 4, 6, 8)  # heights s_1 < ... < s_K (the tokenizer's model.scales)
  image_size: int = 32  # H and W of the tokenizer's images: only a = W/H is used (scale k is
  image_width: int = 0  # s_k x a s_k); image_width 0 = square
  codebook_size: int = 512  # V (the tokenizer's model.codebook_size)
  latent_dim: int = 16  # Cz (the tokenizer's model.latent_dim)
  label_len: int = 3  # label slots S (data.max_chars)
  label_vocab: int = 32  # ids per slot, 0 = null
  prompt_prefix: bool = False  # the S prompt tokens also lead the sequence (module doc)
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
    scales = tuple(int(s) for s in self.scales)  # a loaded config.json gives a list
    object.__setattr__(self, 'scales', scales)
    if not scales or scales[0] < 1 or any(b <= a for a, b in zip(scales, scales[1:])):
      raise ValueError(f'model.scales={scales} must be increasing positive sizes, e.g. (1, 2, 4)')
    if self.codebook_size < 2 or self.latent_dim < 1:
      raise ValueError(f'model.codebook_size={self.codebook_size} must be >= 2 and '
                       f'model.latent_dim={self.latent_dim} >= 1 (copy the tokenizer\'s)')
    if self.image_size < 1 or self.image_width < 0 or self.image_width % self.image_size:
      raise ValueError(f'model.image_width={self.image_width} must be 0 (square) or a multiple '
                       f'of model.image_size={self.image_size} (the tokenizer\'s data.image_width '
                       'and data.image_size)')
    if self.label_len < 1 or self.label_vocab < 2:
      raise ValueError(f'model.label_len={self.label_len} must be >= 1 and model.label_vocab='
                       f'{self.label_vocab} >= 2: the label gives the start token (all-zero = '
                       'unconditional)')
    self.backbone()  # validates the shared fields

  @property
  def num_scales(self) -> int:
    return len(self.scales)

  @property
  def aspect(self) -> int:
    """a = W/H (1 when square)."""
    return self.image_width // self.image_size if self.image_width else 1

  @property
  def scale_shapes(self) -> tuple:
    """((h_k, w_k), ...) = ((s_k, a s_k), ...)."""
    return scale_shapes(self.scales, self.aspect)

  @property
  def scale_sizes(self) -> tuple:
    """(h_k w_k, ...): the rows of each level."""
    return tuple(h * w for h, w in self.scale_shapes)

  @property
  def num_tokens(self) -> int:
    """L = sum_k h_k w_k."""
    return sum(self.scale_sizes)

  @property
  def prefix_len(self) -> int:
    """P: the prompt tokens before the pyramid (S with prompt_prefix, else 0)."""
    return self.label_len if self.prompt_prefix else 0

  @property
  def first_len(self) -> int:
    """h_1 w_1: the rows the start token fills."""
    return self.scale_sizes[0]

  @property
  def offsets(self) -> tuple:
    """Start of each scale in the flat sequence, plus L: (0, h_1 w_1, h_1 w_1 + h_2 w_2, ..., L)."""
    return tuple(int(x) for x in np.cumsum((0,) + self.scale_sizes))

  def level_ids(self) -> np.ndarray:
    """The level (scale index k, 0-based) of each position: int32 [L]."""
    return np.concatenate([np.full(n, k, np.int32) for k, n in enumerate(self.scale_sizes)])

  def backbone(self) -> TransformerConfig:
    """The shared blocks: block-causal over levels, adaLN-Zero on the label, no RoPE."""
    return TransformerConfig(
        vocab_size=self.codebook_size, d_model=self.d_model, n_layers=self.n_layers,
        n_heads=self.n_heads, d_ff=self.d_ff, max_len=self.prefix_len + self.num_tokens,
        mask='block_causal',
        rope_base=0.0, norm_eps=self.norm_eps, cond_dim=self.d_model, dtype=self.dtype,
        param_dtype=self.param_dtype, remat_policy=self.remat_policy, scan_unroll=self.scan_unroll,
        attention_impl=self.attention_impl)

  def num_params(self) -> int:
    """Exact parameter count (tested against the initialised tree)."""
    d, bb, V = self.d_model, self.backbone(), self.codebook_size
    blocks = bb.num_params(embeddings=False) - d  # minus the token model's final norm
    embed = self.latent_dim * d + d + self.label_len * self.label_vocab * d
    embed += (self.num_scales + self.num_tokens) * d
    head = d + 2 * d * (d + 1) + d * V + V
    return blocks + embed + head


Config = VARConfig


class VAR(nn.Module):
  """The next-scale predictor. Full forward: label [B, S], inputs [B, L - h_1 w_1, Cz] -> (logits
  [B, L, V] float32, None). One scale k against a cache: inputs [B, h_k w_k, Cz] (ignored at
  k=0) -> (logits [B, h_k w_k, V], cache). `features=True` returns h [B, n, D] instead of logits,
  `features='both'` returns ((logits, h), cache)."""
  cfg: VARConfig

  def setup(self):
    cfg = self.cfg
    d, pdt = cfg.d_model, jnp.dtype(cfg.param_dtype)
    self.word_w = self.param('word_embed_w', normal_init(cfg.latent_dim ** -0.5, (None, 'embed')),
                             (cfg.latent_dim, d), pdt)
    self.word_b = self.param('word_embed_b', zeros_init(('embed',)), (d,), pdt)
    self.label_table = self.param('label_embed', normal_init(0.02, (None, 'vocab', 'embed')),
                                  (cfg.label_len, cfg.label_vocab, d), pdt)
    self.level_table = self.param('level_embed', normal_init(0.02, (None, 'embed')),
                                  (cfg.num_scales, d), pdt)
    self.pos_table = self.param('pos_embed', normal_init(0.02, (None, 'embed')),
                                (cfg.num_tokens, d), pdt)
    bb = cfg.backbone()
    self.layers = block_stack(bb)
    self.head_adaln = AdaLN(d, 2, bb.compute_dtype, pdt)
    self.head_norm = RMSNorm(cfg.norm_eps, bb.compute_dtype, pdt)
    self.head_w = self.param('head_w', normal_init(0.02, ('embed', 'vocab')),
                             (d, cfg.codebook_size), pdt)
    self.head_b = self.param('head_b', zeros_init(('vocab',)), (cfg.codebook_size,), pdt)

  def init_cache(self, batch: int) -> KVCache:
    """An empty cache for `batch` images (P + L slots, a leading [n_layers] axis)."""
    bb = self.cfg.backbone()
    one = KVCache.zeros(batch, self.cfg.prefix_len + self.cfg.num_tokens, bb.kv_heads, bb.head_size, bb.compute_dtype)
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (bb.n_layers,) + a.shape), one)

  def label_embedding(self, label):
    """c = sum_j E_j[label_j]: label int32 [B, S] -> [B, D] (start token and adaLN condition)."""
    return self.prompt_embeddings(label).sum(axis=1)

  def prompt_embeddings(self, label):
    """The per-slot embeddings E_j[label_j]: label int32 [B, S] -> [B, S, D] (their sum is c;
    with prompt_prefix they are also the prefix tokens)."""
    S = self.cfg.label_len
    if label.shape[-1] != S:
      raise ValueError(f'label has {label.shape[-1]} slots but model.label_len={S}; set '
                       'model.label_len to data.max_chars')
    return self.label_table[jnp.arange(S)[None, :], label].astype(jnp.dtype(self.cfg.dtype))

  def embed_latents(self, z):
    """W_word z + b (VAR's `word_embed`): latents [B, n, Cz] -> [B, n, D]."""
    dt = jnp.dtype(self.cfg.dtype)
    return jnp.einsum('bnc,cd->bnd', z.astype(dt), self.word_w.astype(dt)) + self.word_b.astype(dt)

  def logits(self, h, c):
    """The output head: h [B, n, D], c [B, D] -> logits [B, n, V] float32."""
    dt = jnp.dtype(self.cfg.dtype)
    shift, scale = self.head_adaln(c)
    h = modulate(self.head_norm(h), shift, scale)
    out = jnp.einsum('bnd,dv->bnv', h, self.head_w.astype(dt)) + self.head_b.astype(dt)
    return nn.with_logical_constraint(out.astype(jnp.float32), ('batch', 'length', 'act_vocab'))

  def __call__(self, label, inputs=None, *, scale: int | None = None,
               cache: KVCache | None = None, features: bool | str = False):
    cfg = self.cfg
    B = label.shape[0]
    c = self.label_embedding(label)  # [B, D]
    start = jnp.broadcast_to(c[:, None, :], (B, cfg.first_len, cfg.d_model))  # [B, h_1 w_1, D]
    off = cfg.offsets
    if scale is None:  # the whole pyramid, teacher-forced
      want = (B, cfg.num_tokens - cfg.first_len, cfg.latent_dim)
      if inputs is None or inputs.shape != want:
        raise ValueError(f'VAR expects inputs {want} (model.scales={cfg.scales}, W/H='
                         f'{cfg.aspect}, model.latent_dim={cfg.latent_dim}), got '
                         f'{None if inputs is None else inputs.shape}; model.scales/latent_dim '
                         "and the image width must match the tokenizer run's config.json")
      x, lo, hi = jnp.concatenate([start, self.embed_latents(inputs)], axis=1), 0, cfg.num_tokens
    elif not 0 <= scale < cfg.num_scales:
      raise ValueError(f'scale={scale} must be in [0, {cfg.num_scales})')
    elif scale == 0:
      x, lo, hi = start, 0, cfg.first_len
    else:
      lo, hi = off[scale], off[scale + 1]
      if inputs is None or inputs.shape[1:] != (hi - lo, cfg.latent_dim):
        raise ValueError(f'scale {scale} takes inputs [B, {hi - lo}, {cfg.latent_dim}], got '
                         f'{None if inputs is None else inputs.shape}')
      x = self.embed_latents(inputs)
    levels = jnp.asarray(cfg.level_ids()[lo:hi])  # [n]
    x = x + (self.level_table[levels] + self.pos_table[lo:hi]).astype(x.dtype)[None]
    P = cfg.prefix_len
    ids = levels + (1 if P else 0)  # the prefix is level 0 of the mask: every position sees it
    if P and lo == 0:  # the pass that holds scale 1 also writes the prompt prefix
      x = jnp.concatenate([self.prompt_embeddings(label), x], axis=1)
      ids, lo = jnp.concatenate([jnp.zeros((P,), jnp.int32), ids]), -P
    x = nn.with_logical_constraint(x, ('batch', 'length', 'act_embed'))
    positions = jnp.broadcast_to(jnp.arange(lo + P, hi + P, dtype=jnp.int32), (B, hi - lo))
    ids = jnp.broadcast_to(ids, (B, hi - lo))
    h, cache = run_blocks(self.layers, x, cache, positions, ids, c, None)
    if P and lo == -P:
      h = h[:, P:]  # no prediction from the prefix
    if features == 'both':
      return (self.logits(h, c), h), cache
    return (h if features else self.logits(h, c)), cache


# --- The paradigm contract ---------------------------------------------------------------------

def build(cfg: VARConfig) -> VAR:
  return VAR(cfg)


def check_tokenizer(cfg: VARConfig, spec: dict, path: str = 'data.tokenizer') -> None:
  """Fail loudly when the VAR's model fields differ from the tokenizer's, naming the flags.
  spec: the tokenizer's {'scales', 'codebook_size', 'latent_dim'} and, when known, its
  'image_size' and 'image_width' (0 = square; their ratio W/H must be the VAR's)."""
  mine = {'scales': cfg.scales, 'codebook_size': cfg.codebook_size, 'latent_dim': cfg.latent_dim}
  bad = [f"--config.model.{k}='{spec[k]}'".replace(' ', '') for k in mine if mine[k] != spec[k]]
  H, W = spec.get('image_size', 0), spec.get('image_width', 0)
  aspect = W // H if W and H else 1
  if aspect != cfg.aspect:
    bad.append(f'--config.data.image_width={W}' if H == cfg.image_size else
               f'--config.data.image_size={H} --config.data.image_width={W}')
  if bad:
    raise ValueError(f'the tokenizer {path} was trained with other scales / codebook / latent '
                     f'size / width than this VAR ({mine}, W/H={cfg.aspect}); set '
                     f'{" ".join(bad)}')


def example_batch(batch_size: int, data, model_cfg: VARConfig) -> dict:
  """Shapes of one batch: L and Cz from the model's (= the tokenizer's) scales, width and
  latent_dim, plus the 'residual' [B, h*w, Cz] the pipeline adds with data.tokenizer_residual
  (VAR ignores it)."""
  L, Cz = model_cfg.num_tokens, model_cfg.latent_dim
  batch = {'tokens': jax.ShapeDtypeStruct((batch_size, L), jnp.int32),
           'inputs': jax.ShapeDtypeStruct((batch_size, L - model_cfg.first_len, Cz), jnp.float32),
           'label': jax.ShapeDtypeStruct((batch_size, data.max_chars), jnp.int32)}
  if getattr(data, 'tokenizer_residual', False):  # the last scale is the latent grid
    batch['residual'] = jax.ShapeDtypeStruct((batch_size, model_cfg.scale_sizes[-1], Cz),
                                             jnp.float32)
  return batch


def init(model: VAR, rng, batch) -> dict:
  """Initial variables; the teacher-forcing inputs are built from model.cfg (batch shapes are
  checked by `loss`)."""
  cfg = model.cfg
  B = batch['label'].shape[0]
  inputs = jnp.zeros((B, cfg.num_tokens - cfg.first_len, cfg.latent_dim), jnp.float32)
  return model.init(rng, jnp.zeros((B, cfg.label_len), jnp.int32), inputs)


def _check_batch(model: VAR, batch) -> None:
  cfg = model.cfg
  L, Cz = batch['tokens'].shape[1], batch['inputs'].shape[-1]
  if L != cfg.num_tokens or Cz != cfg.latent_dim:
    raise ValueError(f'the batch has L={L} tokens of latent size Cz={Cz} (from data.tokenizer) but '
                     f'model.scales={cfg.scales} gives L={cfg.num_tokens} and model.latent_dim='
                     f'{cfg.latent_dim}; copy model.scales/latent_dim/codebook_size from the '
                     "tokenizer run's config.json")


def token_nll(model: VAR, params, batch, label):
  """-log p(r_i | r_{<level(i)}) per position [B, L] and the logits [B, L, V]."""
  _check_batch(model, batch)
  logits, _ = model.apply({'params': params}, label, batch['inputs'])
  target = jnp.take_along_axis(logits, batch['tokens'][..., None], axis=-1)[..., 0]  # [B, L]
  return jax.nn.logsumexp(logits, axis=-1) - target, logits


def loss(params, batch, rng, *, model: VAR, label_dropout: float = 0.1):
  """Mean cross-entropy over all L positions (VAR's 1/L weights), labels dropped to the null
  label with probability `label_dropout` (CFG). Metrics: nll, bits_per_token, accuracy and the
  accuracy of each scale ('acc_<h_k>x<w_k>')."""
  if not 0 <= label_dropout < 1:
    raise ValueError(f'loss.label_dropout={label_dropout} must be in [0, 1)')
  label = batch['label']
  if label_dropout:
    keep = jax.random.uniform(rng, (label.shape[0], 1)) >= label_dropout
    label = jnp.where(keep, label, 0)
  nll, logits = token_nll(model, params, batch, label)
  ce = nll.mean()
  hit = (jnp.argmax(logits, axis=-1) == batch['tokens']).astype(jnp.float32)  # [B, L]
  cfg = model.cfg
  metrics = {'nll': ce, 'bits_per_token': ce / jnp.log(2.0), 'accuracy': hit.mean()}
  for k, (h, w) in enumerate(cfg.scale_shapes):
    metrics[f'acc_{h}x{w}'] = hit[:, cfg.offsets[k]:cfg.offsets[k + 1]].mean()
  return ce, metrics


def evaluate(params, batch, rng, *, model: VAR, label_dropout: float = 0.1) -> dict:
  """Held-out sums {'nats': sum NLL, 'tokens': count} with the true labels (bits per token)."""
  del rng, label_dropout
  nll, _ = token_nll(model, params, batch, batch['label'])
  return {'nats': nll.sum(), 'tokens': jnp.asarray(nll.size, jnp.float32)}
