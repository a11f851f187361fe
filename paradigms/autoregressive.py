"""Causal Transformer LM (GPT-2 / LLaMA family): next-token cross-entropy with optional z-loss.

Loss (maximum likelihood, per token):
    L = -1/N sum_i log p_theta(x_{i+1} | x_{<=i})  +  z * 1/N sum_i (log Z_i)^2
where Z_i = sum_v exp(logit_{i,v}) and the z-loss term (PaLM, Chowdhery et al. 2022, Sec. 5)
keeps the softmax normaliser near 1. Held-out quality is reported in bits per token,
NLL / ln 2, which for the byte-level tokenizer is bits per byte.

Batch: {'tokens': int32 [B, L + 1]}; inputs are tokens[:, :-1], targets tokens[:, 1:].

Two regularisers for data-constrained training (the controls Gao et al. 2025 run against
Prabhudesai et al. 2025's diffusion-beats-AR finding), both off by default:
  model.dropout          residual dropout inside the backbone (training only);
  loss.input_mask_rate   each input token is replaced by `mask_id` with this probability while
                         the targets stay whole: x_in = where(u < p, m, x), u ~ U(0, 1).

Memory: `loss.xent_chunk` = c > 0 computes the NLL = log Z - z_y from the final hidden states
c positions at a time (paradigms/nn/xent.py, rematerialised in the backward pass), so the
[B, L, V] logits are never held at once; 0 (the default) takes the full logits.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from paradigms.nn import xent
from paradigms.nn.transformer import Transformer, TransformerConfig, apply_layers, unstack_layers

Config = TransformerConfig


def build(cfg: TransformerConfig) -> Transformer:
  """The network: the shared backbone with a causal mask."""
  if cfg.mask != 'causal':
    raise ValueError(f"the autoregressive paradigm needs model.mask='causal', got {cfg.mask!r}")
  return Transformer(cfg)


def example_batch(batch_size: int, data, model_cfg) -> dict:
  """Shapes and dtypes of one batch (`data` is config.data), for `jax.eval_shape` init."""
  return {'tokens': jax.ShapeDtypeStruct((batch_size, data.seq_len + 1), jnp.int32)}


def init(model: Transformer, rng, batch) -> dict:
  """Initial variables (params boxed with their logical axis names)."""
  return model.init(rng, batch['tokens'][:, :-1])


def token_nll(model: Transformer, params, tokens, inputs=None, rng=None, xent_chunk: int = 0):
  """-log p(x_{i+1} | x_{<=i}) and log Z per predicted position. tokens: [B, L+1] -> 2 x [B, L].

  `inputs` [B, L] replaces tokens[:, :-1] as the network's input (input masking); `rng` turns
  on dropout when the model has it (training); `xent_chunk` > 0 takes the NLL from the hidden
  states [B, L, D] that many positions at a time (`xent.chunked_nll`), 0 from the full logits."""
  if isinstance(xent_chunk, bool) or not isinstance(xent_chunk, int) or xent_chunk < 0:
    raise ValueError(f'loss.xent_chunk={xent_chunk!r} must be an int >= 0 (positions per '
                     'cross-entropy chunk; 0 = off, the full logits)')
  inputs = tokens[:, :-1] if inputs is None else inputs
  rngs = {'dropout': rng} if rng is not None and model.cfg.dropout else {}
  if xent_chunk:
    h, _ = model.apply({'params': params}, inputs, rngs=rngs, features=True)  # [B, L, D]
    return xent.chunked_nll(xent.output_head(model.cfg), params['embed'], h, tokens[:, 1:],
                            xent_chunk)
  logits, _ = model.apply({'params': params}, inputs, rngs=rngs)  # [B, L, V] float32
  return xent.nll_from_logits(logits, tokens[:, 1:])


def loss(params, batch, rng, *, model: Transformer, z_loss: float = 0.0,
         input_mask_rate: float = 0.0, mask_id: int = 257, xent_chunk: int = 0):
  """Mean next-token NLL (+ z-loss). Returns (scalar, metrics). `rng` draws the input mask
  and the dropout (module doc; None is allowed when both are off); mask_id 257 is the byte
  tokenizer's MASK; xent_chunk > 0 chunks the cross-entropy (module doc)."""
  if not 0 <= input_mask_rate < 1:
    raise ValueError(f'loss.input_mask_rate={input_mask_rate} must be in [0, 1)')
  if input_mask_rate and not 0 <= mask_id < model.cfg.vocab_size:
    raise ValueError(f'loss.mask_id={mask_id} must be below model.vocab_size={model.cfg.vocab_size}')
  if rng is None and (input_mask_rate or model.cfg.dropout):
    raise ValueError('loss.input_mask_rate and model.dropout draw random numbers: pass an rng')
  tokens = batch['tokens']
  r_mask, r_drop = (None, None) if rng is None else jax.random.split(rng)
  inputs = tokens[:, :-1]
  if input_mask_rate:
    hide = jax.random.bernoulli(r_mask, input_mask_rate, inputs.shape)  # [B, L]
    inputs = jnp.where(hide, mask_id, inputs)
  nll, log_z = token_nll(model, params, tokens, inputs, r_drop, xent_chunk)
  ce = nll.mean()
  total = ce + z_loss * jnp.mean(log_z ** 2)
  return total, {'nll': ce, 'bits_per_token': ce / jnp.log(2.0), 'log_z_sq': jnp.mean(log_z ** 2)}


def evaluate(params, batch, rng, *, model: Transformer, z_loss: float = 0.0,
             input_mask_rate: float = 0.0, mask_id: int = 257, xent_chunk: int = 0) -> dict:
  """Sums for held-out bits per token: {'nats': sum NLL, 'tokens': count}. Exact, no sampling,
  no dropout and no input masking.

  Takes the same keyword options as `loss` (the trainer passes `config.loss` to both)."""
  del rng, z_loss, input_mask_rate, mask_id
  nll, _ = token_nll(model, params, batch['tokens'], xent_chunk=xent_chunk)
  return {'nats': nll.sum(), 'tokens': jnp.asarray(nll.size, jnp.float32)}


@dataclasses.dataclass(frozen=True)
class LogitsFn:
  """The token sampler seam: `(params, tokens [B, T], cache, positions=None, ids=None) ->
  (logits [B, T, V], cache)`.

  Hashable by value (it holds only the module), so jitted samplers compile once per model.
  `prepare(params, cache)` (run once by a sampler before its loop) splits the layer stack of
  the weights (`unstack_layers`); the call takes either form. `positions`/`ids` [B, T] default
  to cache.index + arange(T); samplers give them for left-padded rows (pad slots: ids EMPTY,
  masked out of attention; without a cache give also `attn_mask` [B, 1, T, T], since the
  cache-free causal path otherwise takes index order and ignores ids).
  """
  model: Transformer

  def prepare(self, params, cache):
    return unstack_layers(params), cache

  def __call__(self, params, tokens, cache, positions=None, ids=None, attn_mask=None):
    return apply_layers(self.model, params, tokens, cache=cache, positions=positions, ids=ids,
                        attn_mask=attn_mask)
