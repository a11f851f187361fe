"""The Transformer backbone shared by every token paradigm: pre-norm blocks scanned over depth.

Block (pre-norm, LLaMA-style, with the DiT adaLN-Zero hook when `cond_dim > 0`):
    h = x + g1 * Attn(mod(RMSNorm(x), b1, s1))
    y = h + g2 * SwiGLU(mod(RMSNorm(h), b2, s2))
where (b, s, g) come from adaLN(cond) and are (0, 0, 1) when conditioning is off.

Layers are stacked with `nn.scan` (one compiled block, params with a leading 'layers' axis) and
optionally rematerialised (`remat_policy`). Activations at block boundaries are constrained to
the logical axes ('batch', 'length', 'act_embed').
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import flax.linen as nn

from paradigms.nn.attention import Attention, KVCache, MASK_FORMS
from paradigms.nn.layers import AdaLN, Embed, RMSNorm, RopeScaling, SwiGLU, modulate

REMAT_POLICIES = {
    'none': None,  # no rematerialisation
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    'save_all': jax.checkpoint_policies.everything_saveable,
}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Everything the backbone needs, and nothing else (built from `config.model`)."""
  vocab_size: int = 258
  d_model: int = 128
  n_layers: int = 4
  n_heads: int = 4
  n_kv_heads: int = 0  # 0 -> n_heads (plain multi-head attention)
  head_dim: int = 0  # 0 -> d_model // n_heads
  d_ff: int = 0  # 0 -> SwiGLU's 8/3 d rounded up to a multiple of 64
  max_len: int = 256  # default KV cache length
  mask: str = 'causal'  # 'causal' | 'block_causal' | 'bidirectional'
  rope_base: float = 10_000.0  # 0 switches RoPE off (e.g. DiT's absolute 2-D embedding)
  norm_eps: float = 1e-6
  tie_embeddings: bool = True
  cond_dim: int = 0  # > 0 switches on the adaLN-Zero hook
  dtype: str = 'float32'  # compute dtype: 'float32' | 'bfloat16'
  param_dtype: str = 'float32'
  remat_policy: str = 'none'  # a key of REMAT_POLICIES
  scan_unroll: int = 0  # layers per iteration of the layer scan; 0 = automatic: all of them on a
  #                       CPU backend (no loop: XLA:CPU zero-fills and copies the scan's stacked
  #                       residuals, ~10% of a small-preset step), 1 elsewhere
  attention_impl: str = 'xla'  # 'xla' | 'cudnn' | '' (JAX chooses)
  dropout: float = 0.0  # residual dropout (GPT-2) on each block's attention and MLP outputs;
  #                       active only when the caller passes a 'dropout' rng (training)
  # Options of imported model families (interop/hf.py), each off by default:
  qkv_bias: bool = False  # biases on the q, k, v projections (Qwen2/2.5)
  qk_norm: bool = False  # RMSNorm over head_dim on q and k before RoPE (Qwen3)
  rope_scaling: str = ''  # '' | 'linear' | 'llama3' (RopeScaling; 'yarn' is refused)
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0  # llama3 only
  rope_high_freq_factor: float = 4.0  # llama3 only
  rope_original_max_len: int = 8192  # llama3 only: the pre-training context C
  sliding_window: int = 0  # > 0: a query sees only itself and the W - 1 keys before it (Mistral)
  vocab_multiple: int = 1  # embedding rows padded to a multiple of this (128 shards well);
  #                          the padding rows' logits are masked (layers.PAD_LOGIT)
  shift_logits: bool = False  # Dream: the logit at i predicts token i + 1 (`shift_logits_right`)

  def __post_init__(self):
    if self.mask not in MASK_FORMS:
      raise ValueError(f'model.mask={self.mask!r}: choose one of {MASK_FORMS}')
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f'model.remat_policy={self.remat_policy!r}: choose one of {tuple(REMAT_POLICIES)}')
    if self.attention_impl not in ('xla', 'cudnn', ''):
      raise ValueError(f"model.attention_impl={self.attention_impl!r}: choose 'xla', 'cudnn' or ''")
    if self.n_heads % self.kv_heads:
      raise ValueError(f'model.n_heads={self.n_heads} must be a multiple of model.n_kv_heads={self.kv_heads}')
    if not 0 <= self.dropout < 1:
      raise ValueError(f'model.dropout={self.dropout} must be in [0, 1)')
    if self.rope_base < 0:
      raise ValueError(f'model.rope_base={self.rope_base} must be >= 0 (0 = no RoPE)')
    if self.head_size % 2:
      raise ValueError(f'head_dim={self.head_size} must be even for RoPE')
    self.rope  # validates the scaling fields
    if self.sliding_window < 0 or (self.sliding_window and self.mask != 'causal'):
      raise ValueError(f'model.sliding_window={self.sliding_window} needs model.mask=\'causal\' '
                       'and a value >= 0 (0 = full attention)')
    if self.scan_unroll < 0:
      raise ValueError(f'model.scan_unroll={self.scan_unroll} must be >= 0 (0 = automatic)')
    if self.vocab_multiple < 1:
      raise ValueError(f'model.vocab_multiple={self.vocab_multiple} must be >= 1 (1 = no padding)')
    for name in ('dtype', 'param_dtype'):
      if getattr(self, name) not in ('float32', 'bfloat16', 'float16'):
        raise ValueError(f'model.{name}={getattr(self, name)!r}: use float32 or bfloat16')

  @property
  def kv_heads(self) -> int:
    return self.n_kv_heads or self.n_heads

  @property
  def head_size(self) -> int:
    return self.head_dim or self.d_model // self.n_heads

  @property
  def ff_size(self) -> int:
    return self.d_ff or 64 * -(-(8 * self.d_model // 3) // 64)

  @property
  def padded_vocab(self) -> int:
    """Rows of the embedding table: vocab_size rounded up to a multiple of vocab_multiple."""
    return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

  @property
  def rope(self) -> RopeScaling:
    return RopeScaling(self.rope_scaling, self.rope_factor, self.rope_low_freq_factor,
                       self.rope_high_freq_factor, self.rope_original_max_len)

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def num_params(self, embeddings: bool = True) -> int:
    """Exact parameter count (tested against the initialised tree)."""
    d, h, k, dh, f = self.d_model, self.n_heads, self.kv_heads, self.head_size, self.ff_size
    block = d * dh * (2 * h + 2 * k) + 3 * d * f + 2 * d
    block += (h + 2 * k) * dh * self.qkv_bias + 2 * dh * self.qk_norm
    if self.cond_dim:
      block += 6 * d * (self.cond_dim + 1)
    emb = self.padded_vocab * d * (1 if self.tie_embeddings else 2)
    return self.n_layers * block + d + (emb if embeddings else 0)

  def flops_per_token(self, seq_len: int, causal: bool = True) -> float:
    """Training FLOPs per token: 6 N (non-embedding matmuls + output head) + attention.

    Attention scores and weighted sum cost 2 * 2 * L * H * Dh multiply-adds forward per token
    per layer (PaLM appendix B counts 6 * 2 * n_layers * L * H * Dh for fwd+bwd). With a causal
    mask only half of it is useful work; we count the useful half (causal=True), as MaxText does.
    """
    n = self.num_params(embeddings=False) - self.n_layers * 2 * self.d_model - self.d_model
    n += self.vocab_size * self.d_model  # output projection (the input lookup is not a matmul)
    attn = 12 * self.n_layers * seq_len * self.n_heads * self.head_size
    return 6 * n + (attn / 2 if causal else attn)


class Block(nn.Module):
  """One pre-norm Transformer block; the body of the layer scan.

  carry = (x [B, L, D], cache: the whole stacked KVCache or None, layer: int32 index of this
  block); positions, ids: [B, L]; cond: [B, C] or None. Returns ((x', cache', layer + 1), None).
  """
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, carry, positions, ids, cond, attn_mask):
    x, cache, layer = carry
    cfg = self.cfg
    dt, pdt = cfg.compute_dtype, jnp.dtype(cfg.param_dtype)
    out_std = 0.02 / (2 * cfg.n_layers) ** 0.5  # GPT-2's scaled init of residual projections
    if cfg.cond_dim:
      b1, s1, g1, b2, s2, g2 = AdaLN(cfg.d_model, 6, dt, pdt, name='adaln')(cond)
    else:
      b1 = s1 = b2 = s2 = 0.0
      g1 = g2 = 1.0
    h = modulate(RMSNorm(cfg.norm_eps, dt, pdt, name='attn_norm')(x), b1, s1)
    a, cache = Attention(cfg.n_heads, cfg.kv_heads, cfg.head_size, cfg.mask, cfg.rope_base, out_std,
                         cfg.attention_impl or None, dt, pdt, qkv_bias=cfg.qkv_bias,
                         qk_norm=cfg.qk_norm, norm_eps=cfg.norm_eps, window=cfg.sliding_window,
                         rope_scaling=cfg.rope, name='attn')(h, positions, ids, cache, attn_mask,
                                                             layer)
    drop = lambda y: y
    if cfg.dropout:  # residual dropout, only under a 'dropout' rng (so sampling is deterministic)
      drop = nn.Dropout(cfg.dropout, deterministic=not self.has_rng('dropout'))
    x = x + g1 * drop(a)
    h = modulate(RMSNorm(cfg.norm_eps, dt, pdt, name='mlp_norm')(x), b2, s2)
    x = x + g2 * drop(SwiGLU(cfg.ff_size, out_std, dt, pdt, name='mlp')(h))
    x = nn.with_logical_constraint(x, ('batch', 'length', 'act_embed'))
    return (x, cache, layer + 1), None


def block_stack(cfg: TransformerConfig, name: str = 'layers') -> nn.Module:
  """`cfg.n_layers` Blocks scanned over depth (one compiled block; params gain a leading
  'layers' axis), rematerialised per `cfg.remat_policy`. Build it in a compact method or
  setup and run it with `run_blocks`. Shared by every backbone (the token Transformer, DiT,
  VAR), so depth handling has one code path."""
  block = Block
  if cfg.remat_policy != 'none':
    block = nn.remat(Block, prevent_cse=False, policy=REMAT_POLICIES[cfg.remat_policy])
  unroll = cfg.scan_unroll or (cfg.n_layers if jax.default_backend() == 'cpu' else 1)
  stack = nn.scan(block, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
                  in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                  length=cfg.n_layers, metadata_params={nn.PARTITION_NAME: 'layers'},
                  unroll=min(unroll, cfg.n_layers))
  return stack(cfg, name=name)


def run_blocks(stack: nn.Module, x, cache, positions, ids, cond, attn_mask):
  """x [B, L, D] through a `block_stack`; cache: KVCache with a leading [n_layers] axis, or
  None. Returns (x', cache'). The stacked cache rides in the scan's carry and each block
  writes only its own layer's new slots (`KVCache.update(..., layer)`), so a decode step does
  not copy the whole cache."""
  (x, cache, _), _ = stack((x, cache, jnp.zeros((), jnp.int32)), positions, ids, cond, attn_mask)
  return x, cache


def unstack_layers(params) -> dict:
  """`params` with the stacked 'layers' subtree ([n_layers, ...] leaves) split into a tuple of
  per-layer trees, for `Transformer(..., layer_params=)`. Done once before a decode loop: in
  the layer scan XLA copies each layer's slice of the stacked weights at every step, which at
  batch 1 costs as much as the matmuls reading them (docs/speed.md)."""
  stacked = params['layers']
  n = jax.tree.leaves(stacked)[0].shape[0]
  return {**params, 'layers': tuple(jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(n))}


def apply_layers(model: 'Transformer', params, tokens, **kwargs):
  """`model.apply` on `params` in either form: stacked, or after `unstack_layers`."""
  layers = params.get('layers')
  if isinstance(layers, tuple):
    rest = {k: v for k, v in params.items() if k != 'layers'}
    return model.apply({'params': rest}, tokens, layer_params=layers, **kwargs)
  return model.apply({'params': params}, tokens, **kwargs)


def run_unstacked(cfg: TransformerConfig, layer_params: tuple, x, cache, positions, ids, cond,
                  attn_mask):
  """`run_blocks` over per-layer params (`unstack_layers`): the same Block, applied layer by
  layer (unrolled), so each reads its own weight buffers; the stacked cache is written in
  place at each layer. Inference only (no remat/dropout)."""
  block = Block(cfg, parent=None)
  for i, p in enumerate(layer_params):
    (x, cache, _), _ = block.apply({'params': p}, (x, cache, jnp.int32(i)), positions, ids, cond,
                                   attn_mask)
  return x, cache


class Transformer(nn.Module):
  """Token embedding -> n_layers scanned Blocks -> RMSNorm -> output logits.

  tokens: [B, L] int32, or float [B, L, K] weights over the first K embedding rows (relaxed
  one-hots: DUO's curriculum, paradigms/duo.py); positions: [B, L] (default: cache.index + arange(L));
  ids: [B, L] mask ids (default: positions; give level/segment ids for 'block_causal');
  cache: KVCache with a leading [n_layers] axis, or None; cond: [B, cond_dim] or None;
  attn_mask: optional extra boolean mask [B, 1|H, L, S]; layer_params: the blocks' weights as
  a tuple of per-layer trees (`unstack_layers`; then apply's params omit 'layers').
  Returns (logits [B, L, V] float32, cache); with features=True (chunked losses, paradigms/nn/
  xent.py) (h [B, L, D], cache), the final-norm states the logits are `embed.attend(h)` of.
  """
  cfg: TransformerConfig

  def init_cache(self, batch: int, max_len: int | None = None, kv_int8: bool = False) -> KVCache:
    """An empty cache for `batch` sequences of up to `max_len` (default cfg.max_len) tokens;
    `kv_int8` stores int8 codes with a scale per token and head (`KVCache`, 4x smaller)."""
    c = self.cfg
    dtype = jnp.int8 if kv_int8 else c.compute_dtype
    one = KVCache.zeros(batch, max_len or c.max_len, c.kv_heads, c.head_size, dtype)
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (c.n_layers,) + a.shape), one)

  @nn.compact
  def __call__(self, tokens, *, positions=None, ids=None, cache: KVCache | None = None,
               cond=None, attn_mask=None, layer_params: tuple | None = None,
               features: bool = False):
    cfg = self.cfg
    dt, pdt = cfg.compute_dtype, jnp.dtype(cfg.param_dtype)
    if cfg.cond_dim and cond is None:
      raise ValueError('model.cond_dim > 0 but no `cond` was passed')
    B, L = tokens.shape[:2]  # ids [B, L], or relaxed one-hots [B, L, K] (Embed)
    if positions is None:
      start = 0 if cache is None else cache.index[0]
      positions = jnp.broadcast_to(start + jnp.arange(L, dtype=jnp.int32), (B, L))
    if ids is None:
      if cfg.mask == 'block_causal':
        raise ValueError("mask='block_causal' needs per-position `ids` (segment or level ids)")
      ids = positions
    if cfg.shift_logits and cache is not None:
      raise ValueError('model.shift_logits=True (Dream) predicts position i from hidden state i - 1, '
                       'which a KV-cached chunk does not hold for its first position; sample '
                       'without the block cache')
    embed = Embed(cfg.vocab_size, cfg.d_model, cfg.tie_embeddings, dt, pdt, cfg.padded_vocab,
                  name='embed')
    x = nn.with_logical_constraint(embed(tokens), ('batch', 'length', 'act_embed'))

    if layer_params is None:
      x, cache = run_blocks(block_stack(cfg), x, cache, positions, ids, cond, attn_mask)
    else:  # per-layer weights given (unstack_layers): the params passed to apply lack 'layers'
      x, cache = run_unstacked(cfg, layer_params, x, cache, positions, ids, cond, attn_mask)
    x = RMSNorm(cfg.norm_eps, dt, pdt, name='final_norm')(x)
    if features:  # attend is row-wise, so shifting h shifts the logits
      return (shift_logits_right(x) if cfg.shift_logits else x), cache
    logits = embed.attend(x)
    return (shift_logits_right(logits) if cfg.shift_logits else logits), cache


def shift_logits_right(logits):
  """Dream's convention in ours (Ye et al. 2025; its generation_utils): Dream is trained so that
  the logit at position i predicts token i + 1, so the logit for token i is the one at i - 1;
  position 0 keeps its own. [B, L, V] -> [B, L, V]. The one place the shift happens."""
  return jnp.concatenate([logits[:, :1], logits[:, :-1]], axis=1)
