"""Token cross-entropy from logits, or in chunks from hidden states (no [B, L, V] array at once).

Per position, with logits z = h W (W: the tied embedding's transpose or the untied head),
    NLL = -log softmax(z)_y = log Z - z_y,    log Z = logsumexp_v z_v,
so the loss needs only two numbers per row, log Z and the target's logit z_y. `chunked_nll`
computes them `chunk` sequence positions at a time inside a `lax.scan` whose body is wrapped in
`jax.checkpoint`: the forward pass keeps only (log Z, NLL) per chunk and the backward pass
recomputes that chunk's logits, so the largest logits buffer is [B, chunk, V] instead of
[B, L, V] (Liger Kernel's fused linear cross-entropy and Wijmans et al. 2024's "Cut Your
Losses" do the same on GPUs). The chunks run along the sequence axis with the whole batch in
each, so a batch sharded over the mesh stays sharded in every chunk.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from paradigms.nn.layers import Embed
from paradigms.nn.transformer import TransformerConfig


def nll_from_logits(logits, targets):
  """-log p(y) and log Z per row from full logits: [B, L, V] float32, [B, L] int -> 2 x [B, L]."""
  log_z = jax.nn.logsumexp(logits, axis=-1)  # [B, L]
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]  # [B, L]
  return log_z - target_logit, log_z


def output_head(cfg: TransformerConfig):
  """The Transformer's output projection as a function (embed params, h [B, c, D]) -> logits
  [B, c, V] float32: `Embed.attend` itself, built as `Transformer` builds its 'embed', so tied
  or untied, dtype and the padded-vocab masking (padding rows get PAD_LOGIT) are the same."""
  embed = Embed(cfg.vocab_size, cfg.d_model, cfg.tie_embeddings, cfg.compute_dtype,
                jnp.dtype(cfg.param_dtype), cfg.padded_vocab)
  return lambda p, h: embed.apply({'params': p}, h, method=Embed.attend)


def chunked_nll(project, head_params, h, targets, chunk: int):
  """`nll_from_logits(project(head_params, h), targets)` without the full logits.

  project: (head_params, h [B, c, D]) -> logits [B, c, V] float32 (e.g. `output_head(cfg)`);
  h: [B, L, D] final hidden states; targets: [B, L] int; chunk: positions per chunk (static
  int >= 1). Returns (nll [B, L], log_z [B, L]) float32.

  Peak logits memory is B * min(chunk, L) * V * 4 bytes, forward and backward. A chunk that
  does not divide L is handled: the sequence is padded with zero rows up to a multiple of it
  (their outputs are sliced off, so they add nothing to values or gradients).
  """
  if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
    raise ValueError(f'chunk={chunk!r} must be an int >= 1 (positions per chunk)')
  B, L, D = h.shape
  c = min(chunk, L)
  n = -(-L // c)
  if n * c > L:
    h = jnp.pad(h, ((0, 0), (0, n * c - L), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, n * c - L)))
  hs = h.reshape(B, n, c, D).swapaxes(0, 1)  # [n, B, c, D]
  ts = targets.reshape(B, n, c).swapaxes(0, 1)  # [n, B, c]

  @jax.checkpoint  # backward recomputes this chunk's logits instead of storing them
  def one(p, hc, tc):
    return nll_from_logits(project(p, hc), tc)  # 2 x [B, c]

  def body(carry, xs):
    return carry, one(head_params, *xs)

  _, (nll, log_z) = jax.lax.scan(body, None, (hs, ts))  # 2 x [n, B, c]
  unchunk = lambda a: a.swapaxes(0, 1).reshape(B, n * c)[:, :L]
  return unchunk(nll), unchunk(log_z)
