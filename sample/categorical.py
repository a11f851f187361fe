"""Categorical sampling with temperature, top-k and top-p, shared by every token sampler.

We sample by inverting the CDF, not by the Gumbel-max trick. Gumbel-max in float32 caps the
noise at -log(-log(1 - 2^-24)) ~ 16.6, which never picks tokens more than ~16 nats below the
top logit and under-samples the tail: the effective temperature drops and sample entropy falls
(Zheng et al. 2024, "Masked diffusion models are secretly time-agnostic masked models and
exploit inaccurate categorical sampling"). Inverse-CDF sampling with one uniform draw per row
is exact up to the uniform's 2^-24 resolution: no token's probability is biased by more than
~6e-8, whatever its rank.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def filtered_probs(logits, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
  """Probabilities after temperature, top-k and top-p.

  logits: [..., V]. Returns (probs [..., K], token_ids [..., K] or None). Without filtering
  (top_k=0, top_p=1) probs cover the vocabulary in id order and token_ids is None (no sort:
  the inverse CDF works in any order). Otherwise the K = top_k or V most likely tokens come in
  descending order, renormalised. Nucleus (Holtzman et al. 2020): keep the smallest prefix
  whose mass reaches top_p (always at least the most likely token).
  """
  if temperature <= 0:
    raise ValueError(f'temperature must be > 0 (use greedy=True for argmax), got {temperature}')
  if not 0 < top_p <= 1:
    raise ValueError(f'top_p must be in (0, 1], got {top_p}')
  V = logits.shape[-1]
  if top_k < 0 or top_k > V:
    raise ValueError(f'top_k must be in [0, {V}] (0 = off), got {top_k}')
  scaled = logits.astype(jnp.float32) / temperature
  if top_k == 0 and top_p == 1:
    return jax.nn.softmax(scaled, axis=-1), None
  vals, ids = jax.lax.top_k(scaled, top_k or V)  # [..., K] sorted, descending
  probs = jax.nn.softmax(vals, axis=-1)
  if top_p < 1:
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly more likely tokens
    probs = jnp.where(mass_before < top_p, probs, 0.0)
    probs = probs / probs.sum(axis=-1, keepdims=True)
  return probs, ids


def sample_probs(rng, probs):
  """One index per row of probs [..., K] (non-negative, any total > 0) by inverting the CDF:
  the first k with cdf_k > u * total, u ~ U[0, 1). Returns [...] int32."""
  cdf = jnp.cumsum(probs, axis=-1)  # [..., K]
  u = jax.random.uniform(rng, probs.shape[:-1] + (1,), jnp.float32)  # [..., 1]
  k = jnp.sum(cdf <= u * cdf[..., -1:], axis=-1)
  return jnp.minimum(k, probs.shape[-1] - 1).astype(jnp.int32)  # guards cdf[-1] rounding


def full_probs(logits, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               greedy: bool = False):
  """`filtered_probs` over the whole vocabulary in id order (zeros where filtered out), or
  one-hot at the argmax when greedy: [..., V] -> [..., V] float32. Speculative sampling needs
  the target's p and the drafter's q on one support."""
  V = logits.shape[-1]
  if greedy:
    return jax.nn.one_hot(jnp.argmax(logits, axis=-1), V, dtype=jnp.float32)
  probs, ids = filtered_probs(logits, temperature, top_k, top_p)
  if ids is None:
    return probs
  flat_p, flat_i = probs.reshape(-1, probs.shape[-1]), ids.reshape(-1, ids.shape[-1])
  full = jnp.zeros((flat_p.shape[0], V), jnp.float32)
  full = full.at[jnp.arange(flat_p.shape[0])[:, None], flat_i].set(flat_p)
  return full.reshape(logits.shape)


def sample_categorical(rng, logits, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                       greedy: bool = False):
  """Draw one token per row. logits: [..., V] -> ids [...] int32 (inverse-CDF sampling)."""
  if greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  probs, ids = filtered_probs(logits, temperature, top_k, top_p)
  k = sample_probs(rng, probs)
  if ids is None:
    return k
  return jnp.take_along_axis(ids, k[..., None], axis=-1)[..., 0]
