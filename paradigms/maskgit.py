"""MaskGIT: masked generative image transformer over VQ tokens, prompt-conditioned
(Chang et al. 2022).

The image is the h x w code map of a single-scale VQ-VAE, flattened in raster order to
Y = (y_1..y_N), N = h w, and the prompt its S character tokens c (`label`, 0 = null). A
bidirectional Transformer (the network of `paradigms/raster_ar.py` with mask='bidirectional')
reads [c ; Y_M], where Y_M replaces the positions of a mask M by the [MASK] id, and predicts
every masked code. Training (MaskGIT Sec. 3.1-3.2):
    r ~ U(0, 1),  gamma(r) = cos(pi r / 2)                      (the cosine mask schedule)
    M = a uniformly random set of n = ceil(gamma(r) N) positions (at least one)
    L_mask = - E [ sum_{i in M} log p_theta(y_i | Y_M, c) ]                    (MaskGIT eq. 1)
normalised here per masked token of the batch (sum over masked positions / their count).
Prompt positions carry no loss. Classifier-free guidance: the prompt becomes the null prompt
(all slots 0) with probability `label_dropout` (as in Muse / MaskGIT's text-conditional
successors), so one network gives p_theta(. | Y_M) and p_theta(. | Y_M, c).
Decoding (MaskGIT Sec. 3.2, `sample/maskgit.py`): T steps; after step t the number of masks
left is n_t = floor(gamma((t + 1) / T) N), the least confident predictions are re-masked.

`evaluate` reports the masked-token cross entropy on held-out images at mask ratios drawn from
the training schedule, stratified over the batch (r_b = (u + b / B) mod 1): the training
objective's value in nats per masked token, not a likelihood bound (MaskGIT has none).

Batch: as raster AR's ({'tokens' [B, N], 'inputs' [B, 0, Cz], 'label' [B, S]}).
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp

from paradigms import raster_ar
from paradigms.raster_ar import (TokenImageConfig, TokenImageTransformer, build,  # noqa: F401
                                 drop_prompt, example_batch, init, prompt_tokens)

TOKENIZED = True


@dataclasses.dataclass(frozen=True)
class MaskGITConfig(TokenImageConfig):
  """The raster AR fields (`paradigms/raster_ar.py`), bidirectional, with a [MASK] id."""
  MASKED: ClassVar[bool] = True


Config = MaskGITConfig


def gamma(r):
  """The cosine mask schedule gamma(r) = cos(pi r / 2): the masked fraction at progress r in
  [0, 1] (gamma(0) = 1, all masked; gamma(1) = 0). Works on floats and arrays."""
  if isinstance(r, (int, float)):
    return math.cos(0.5 * math.pi * r)
  return jnp.cos(0.5 * jnp.pi * r)


def random_mask(rng, r, N: int):
  """M for mask ratios gamma(r): r [B] -> bool [B, N], exactly ceil(gamma(r_b) N) (>= 1) True
  positions per row, a uniformly random subset."""
  n = jnp.clip(jnp.ceil(gamma(r) * N), 1, N).astype(jnp.int32)  # [B]
  u = jax.random.uniform(rng, (r.shape[0], N))
  rank = jnp.argsort(jnp.argsort(u, axis=1), axis=1)  # a uniform random permutation
  return rank < n[:, None]


def masked_inputs(cfg: MaskGITConfig, tokens, label, masked):
  """[c ; Y_M]: tokens [B, N], label [B, S], masked bool [B, N] -> ids [B, S + N]."""
  raster_ar.check_tokens(cfg, tokens)
  y = jnp.where(masked, cfg.mask_id, tokens.astype(jnp.int32))
  return jnp.concatenate([prompt_tokens(cfg, label), y], axis=1)


def masked_nll(model: TokenImageTransformer, params, tokens, label, masked):
  """-log p_theta(y_i | Y_M, c) at every image position [B, N] (zero where not masked) and the
  logits [B, N, V] of the image positions."""
  S = model.cfg.label_len
  logits, _ = model.apply({'params': params}, masked_inputs(model.cfg, tokens, label, masked))
  logits = logits[:, S:]  # [B, N, V]
  target = jnp.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0]
  return jnp.where(masked, jax.nn.logsumexp(logits, axis=-1) - target, 0.0), logits


def _terms(params, batch, r, rng, model):
  tokens = batch['tokens']
  masked = random_mask(rng, r, tokens.shape[1])
  return masked, *masked_nll(model, params, tokens, batch['label'], masked)


def loss(params, batch, rng, *, model: TokenImageTransformer, label_dropout: float = 0.1):
  """MaskGIT eq. 1 per masked token (module doc), prompts dropped with probability
  `label_dropout`. Metrics: nll (per masked token), bits_per_token, accuracy (masked),
  mask_ratio."""
  k_drop, k_r, k_mask = jax.random.split(rng, 3)
  B = batch['tokens'].shape[0]
  batch = {**batch, 'label': drop_prompt(k_drop, batch['label'], label_dropout)}
  masked, nll, logits = _terms(params, batch, jax.random.uniform(k_r, (B,)), k_mask, model)
  count = jnp.maximum(masked.sum(), 1)
  ce = nll.sum() / count
  hit = (jnp.argmax(logits, axis=-1) == batch['tokens']) & masked
  return ce, {'nll': ce, 'bits_per_token': ce / jnp.log(2.0), 'accuracy': hit.sum() / count,
              'mask_ratio': masked.mean()}


def evaluate(params, batch, rng, *, model: TokenImageTransformer,
             label_dropout: float = 0.1) -> dict:
  """Held-out sums over rows of the per-row mean masked-token NLL and accuracy, at stratified
  mask ratios r_b = (u + b / B) mod 1 (module doc), with the true prompts: {'masked_nll_sum',
  'masked_accuracy_sum', 'count'}."""
  del label_dropout
  k_r, k_mask = jax.random.split(rng)
  B = batch['tokens'].shape[0]
  r = jnp.mod(jax.random.uniform(k_r, ()) + jnp.arange(B) / B, 1.0)  # [B]
  masked, nll, logits = _terms(params, batch, r, k_mask, model)
  count = masked.sum(axis=1)  # [B], >= 1
  hit = ((jnp.argmax(logits, axis=-1) == batch['tokens']) & masked).sum(axis=1)
  return {'masked_nll_sum': (nll.sum(axis=1) / count).sum(),
          'masked_accuracy_sum': (hit / count).sum(),
          'count': jnp.asarray(B, jnp.float32)}
