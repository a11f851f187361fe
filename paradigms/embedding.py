"""Text embeddings from any text backbone: pooling and contrastive training (issue 26 item 4).

A text's embedding is a pooled, L2-normalised final hidden state of the shared Transformer
(`Transformer(..., features=True)`: after the final norm, before the output head) of a trained
AR, MDLM, SEDD or UDLM/DUO run:
    e = normalize(pool(h)),  pool = mean over the text's tokens ('mean') or the last token ('last',
    the natural choice for a causal model, whose last state has read the whole text).
Pad positions (id `pad_id`) are hidden from attention as keys and left out of the pool, so a
text's embedding does not depend on how much padding its batch row carries. Diffusion backbones
read the clean text (t = 0: their time condition, if any, is the features of t = 0). The mask is
the run's own (causal for AR, bidirectional for diffusion); `model.mask='bidirectional'` on an AR
run is the LLM2Vec-style control.

Contrastive loss (InfoNCE with in-batch negatives; van den Oord et al. 2018, as in DiffEmbed and
LLM2Vec): for B (query, document) pairs with embeddings q_i, d_j,
    L = -1/B sum_i log( exp(q_i . d_i / tau) / sum_j exp(q_i . d_j / tau) ),
and with `symmetric` the same over documents (d_i against all q_j), averaged.

Batch: {'query': int32 [B, Lq], 'doc': int32 [B, Ld]}, right-padded with pad_id.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from paradigms.masked_diffusion import time_embedding
from paradigms.nn.transformer import Transformer, TransformerConfig

Config = TransformerConfig
POOLING = ('mean', 'last')


@dataclasses.dataclass(frozen=True)
class Options:
  """The loss's knobs (`config.loss`)."""
  pooling: str = 'mean'
  temperature: float = 0.05  # tau
  pad_id: int = 257  # the byte tokenizer's MASK id is never a text byte
  symmetric: bool = False

  def __post_init__(self):
    if self.pooling not in POOLING:
      raise ValueError(f'loss.pooling={self.pooling!r}: choose one of {POOLING}')
    if self.temperature <= 0:
      raise ValueError(f'loss.temperature={self.temperature} must be > 0')


def pool(h, valid, how: str):
  """h [B, L, D], valid bool [B, L] (True at text tokens) -> [B, D]: the mean over valid
  positions, or the state at the last valid position."""
  if how == 'mean':
    w = valid.astype(h.dtype)[..., None]
    return (h * w).sum(1) / jnp.maximum(w.sum(1), 1.0)
  last = jnp.maximum(valid.sum(1) - 1, 0)  # right padding: the last text token
  return jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]


def encode(model: Transformer, params, tokens, opt: Options):
  """Embeddings of right-padded texts: tokens int32 [B, L] -> float32 [B, D], unit norm."""
  valid = tokens != opt.pad_id
  B = tokens.shape[0]
  cond = time_embedding(jnp.zeros((B,)), model.cfg.cond_dim) if model.cfg.cond_dim else None
  keys = valid[:, None, None, :]  # [B, 1, 1, L]: pad keys hidden from every query
  h, _ = model.apply({'params': params}, jnp.where(valid, tokens, 0), cond=cond, attn_mask=keys,
                     features=True)
  e = pool(h.astype(jnp.float32), valid, opt.pooling)
  return e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)


def info_nce(q, d, temperature: float, symmetric: bool = False):
  """The module doc's L for q, d [B, D]: (loss, in-batch top-1 accuracy of q -> d)."""
  logits = q @ d.T / temperature  # [B, B]
  n = jnp.arange(q.shape[0])
  loss = jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[n, n])
  if symmetric:
    loss = 0.5 * (loss + jnp.mean(jax.nn.logsumexp(logits, axis=0) - logits[n, n]))
  return loss, jnp.mean(jnp.argmax(logits, axis=1) == n)


# --- The paradigm contract ---------------------------------------------------------------------

def build(cfg: TransformerConfig) -> Transformer:
  return Transformer(cfg)


def example_batch(batch_size: int, data, model_cfg) -> dict:
  return {'query': jax.ShapeDtypeStruct((batch_size, data.query_len), jnp.int32),
          'doc': jax.ShapeDtypeStruct((batch_size, data.seq_len), jnp.int32)}


def init(model: Transformer, rng, batch) -> dict:
  x = batch['doc']
  cond = jnp.zeros((x.shape[0], model.cfg.cond_dim)) if model.cfg.cond_dim else None
  return model.init(rng, x, cond=cond)


def loss(params, batch, rng, *, model: Transformer, **options):
  """InfoNCE over the batch's pairs. Metrics: loss, top-1 in-batch retrieval accuracy."""
  del rng
  opt = Options(**options)
  if batch['query'].shape[0] < 2:
    raise ValueError('contrastive training needs at least 2 pairs per batch (in-batch negatives)')
  q, d = encode(model, params, batch['query'], opt), encode(model, params, batch['doc'], opt)
  value, acc = info_nce(q, d, opt.temperature, opt.symmetric)
  return value, {'info_nce': value, 'top1': acc}


def evaluate(params, batch, rng, *, model: Transformer, **options) -> dict:
  """Held-out sums: {'info_nce_sum', 'top1_sum', 'count'} (means per batch)."""
  value, m = loss(params, batch, rng, model=model, **options)
  return {'info_nce_sum': value, 'top1_sum': m['top1'], 'count': jnp.asarray(1.0)}
