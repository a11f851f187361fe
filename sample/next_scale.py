"""VAR sampling: one network pass per scale against a KV cache (Tian et al. 2024, Algorithm 2).

    f_hat = 0;  x = start token (the label's embedding)
    for k = 1..K:                                           # one pass of h_k w_k rows each
        l_c, l_u = VAR(x | label), VAR(x | null label)           # with the cached scales < k
        l = (1 + t_k) l_c - t_k l_u,  t_k = (w - 1) (k - 1)/(K - 1)       # VAR's ramped CFG
        r_k ~ Cat(softmax(l / T)) restricted to top-k / top-p    # sample/categorical.py
        f_hat, x = vqvae.add_scale(f_hat, r_k, k)   # f_hat += phi_k(up(e[r_k])); x = down(f_hat)
    image = Decoder(f_hat)

CFG follows VAR's code (`autoregressive_infer_cfg` in FoundationVision/VAR models/var.py:
`t = cfg * si / (K - 1); logits = (1 + t) * logits[:B] - t * logits[B:]`): no guidance at the
first scale, rising linearly to the full weight at the last. Our `cfg` is this repo's guidance
weight w (l = l_u + w (l_c - l_u); w = 1 is off, as for the diffusion samplers and the CLI), so
t_k = (w - 1) k/(K - 1) with 0-based k: VAR's `cfg=c` is our `cfg=1 + c` (their FID setting
c = 1.5 is w = 2.5). With K = 1 the single scale takes the full weight. CFG doubles the batch
(conditional rows, then null-label rows), not the passes: NFE = K network passes either way.

Scales may be rectangular, h_k x w_k = s_k x a s_k for images a = W/H times wider than tall
(paradigms/next_scale.py); the sampler only follows the VAR's and the tokenizer's shapes.

The whole loop is one `jax.jit` (a Python loop over the K scales, static shapes per scale), with
a KV cache of L = sum_k h_k w_k slots preallocated for the (doubled) batch; deterministic given
`rng` (scale k draws with fold_in(rng, k), so w = 1 and w != 1 share their random numbers).

The tokenizer enters through a small seam, `Tokenizer` (start / add_scale / decode), whose
default implementation calls `paradigms/vqvae.py`; tests substitute a closed-form one.

    # a trained run (train.checkpoint.load_run / load_tokenizer read it from disk):
    config, var_model, var_params = load_run('runs/var_glyphs')
    vq_model, vq_params = load_tokenizer(config)              # the run named by data.tokenizer
    out = next_scale.sample(var_model, var_params, vq_model, vq_params, labels, jax.random.key(0),
                            cfg=2.5, top_k=100)              # out.images [B, H, W, C], out.nfe = K
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from sample.categorical import sample_categorical


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  """The sampler's tokenizer seam over a multi-scale residual VQ-VAE module (hashable by value).

  start(params, batch) -> f_hat [B, h, w, Cz] zeros; add_scale(params, f_hat, idx [B, h_k w_k],
  k) -> (f_hat, next input [B, h_{k+1} w_{k+1}, Cz] or None after the last scale);
  decode(params, f_hat) -> images [B, H, W, C]."""
  model: Any

  def start(self, params, batch: int):
    c = self.model.cfg
    return jnp.zeros((batch,) + c.latent_shape + (c.latent_dim,), jnp.float32)

  def add_scale(self, params, f_hat, idx, k: int):
    from paradigms import vqvae
    return vqvae.add_scale(self.model, params, f_hat, idx, k)

  def decode(self, params, f_hat):
    return self.model.apply({'params': params}, f_hat, method='decode')


@struct.dataclass
class VAROutput:
  tokens: jax.Array  # [B, L] int32, scale-major, raster within a scale
  inputs: jax.Array  # [B, L - h_1 w_1, Cz] the teacher-forcing inputs built on the way
  f_hat: jax.Array  # [B, h, w, Cz] the summed residual reconstruction
  images: jax.Array  # [B, H, W, C] decoded, about [-1, 1]
  nfe: jax.Array  # [] int32 network passes (K)
  rows: jax.Array  # [] int32 rows per pass (B, or 2B with CFG)
  hidden: jax.Array | None = None  # [B, h_K w_K, D] last-scale hidden states (return_hidden)


def cfg_ratio(k: int, K: int) -> float:
  """The ramp k/(K - 1) of VAR's guidance (0-based scale k of K); 1 when K = 1."""
  return k / (K - 1) if K > 1 else 1.0


def guided_logits(l_c, l_u, k: int, K: int, cfg: float):
  """VAR's ramped CFG: (1 + t) l_c - t l_u with t = (cfg - 1) k/(K - 1). [..., V] -> [..., V]."""
  t = (cfg - 1.0) * cfg_ratio(k, K)
  return (1.0 + t) * l_c - t * l_u


@functools.partial(jax.jit, static_argnames=('var_model', 'tokenizer', 'cfg', 'top_k', 'top_p',
                                             'temperature', 'return_hidden'))
def sample_with(var_model, var_params, tokenizer: Tokenizer, tok_params, label, rng, *,
                cfg: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                temperature: float = 1.0, return_hidden: bool = False) -> VAROutput:
  """`sample` over any `Tokenizer` seam (see the module doc). label: int32 [B, S];
  temperature 0 takes the argmax at every scale. `return_hidden` also returns the last scale's
  hidden states of the conditional rows (HART's diffusion head conditions on them)."""
  c = var_model.cfg
  B, K = label.shape[0], c.num_scales
  guided = cfg != 1.0
  rows_label = jnp.concatenate([label, jnp.zeros_like(label)]) if guided else label  # [R, S]
  cache = var_model.init_cache(rows_label.shape[0])  # L slots
  f_hat = tokenizer.start(tok_params, B)  # [B, h, w, Cz]
  x, tokens, inputs, hidden = None, [], [], None
  for k in range(K):
    both = return_hidden and k == K - 1
    logits, cache = var_model.apply({'params': var_params}, rows_label, x, scale=k, cache=cache,
                                    features='both' if both else False)  # [R, h_k w_k, V]
    if both:
      logits, hidden = logits[0], logits[1][:B]  # hidden [B, h_K w_K, D]
    if guided:
      logits = guided_logits(logits[:B], logits[B:], k, K, cfg)
    idx = sample_categorical(jax.random.fold_in(rng, k), logits, temperature or 1.0, top_k, top_p,
                             greedy=temperature == 0)
    tokens.append(idx)  # [B, h_k w_k]
    f_hat, nxt = tokenizer.add_scale(tok_params, f_hat, idx, k)
    if k + 1 < K:
      inputs.append(nxt)  # [B, h_{k+1} w_{k+1}, Cz]
      x = jnp.concatenate([nxt, nxt]) if guided else nxt
  Cz = c.latent_dim
  return VAROutput(
      tokens=jnp.concatenate(tokens, axis=1),
      inputs=jnp.concatenate(inputs, axis=1) if inputs else jnp.zeros((B, 0, Cz), jnp.float32),
      f_hat=f_hat, images=tokenizer.decode(tok_params, f_hat).astype(jnp.float32),
      nfe=jnp.asarray(K, jnp.int32), rows=jnp.asarray(rows_label.shape[0], jnp.int32),
      hidden=hidden)


def sample(var_model, var_params, vq_model, vq_params, label, rng, *, cfg: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, temperature: float = 1.0) -> VAROutput:
  """Draw one image per label row (label int32 [B, S], all-zero = unconditional).

  vq_model: the VQ-VAE module of the tokenizer run (or any `Tokenizer`). Returns a VAROutput:
  tokens [B, L], f_hat, images [B, H, W, C], nfe = K (and rows = 2B with CFG)."""
  tok = vq_model if isinstance(vq_model, Tokenizer) else Tokenizer(vq_model)
  return sample_with(var_model, var_params, tok, vq_params, jnp.asarray(label, jnp.int32), rng,
                     cfg=float(cfg), top_k=int(top_k), top_p=float(top_p),
                     temperature=float(temperature))
