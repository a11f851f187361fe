"""MaskGIT iterative decoding with classifier-free guidance (Chang et al. 2022, Sec. 3.2).

    Y = all [MASK]; n_{-1} = N
    for t = 0..T-1:                                     # one network pass over 2B rows each
        l = l_null + w (l_cond - l_null)                 # CFG on every image position
        y_hat_i ~ Cat(softmax(l_i / temp)) (top-k/top-p) at every masked i  # sample/categorical.py
        s_i = log softmax(l_i)[y_hat_i] + tau (1 - (t+1)/T) g_i,  g_i ~ Gumbel(0, 1)
        n_t = floor(gamma((t + 1) / T) N),  gamma(r) = cos(pi r / 2)    # masks left after t
        keep the n_t masked positions of lowest s masked; commit y_hat elsewhere
    image = VQ decoder(Y as an h x w map)

The plan (`mask_plan`) clips n_t as MaskGIT's code does (`parallel_decode.py`: mask_len =
max(1, min(unknown - 1, floor(N gamma)))): every step reveals at least one code, one stays
masked until the last step, and the last step (t = T - 1, gamma(1) = 0) reveals all of them;
so step t reveals exactly n_{t-1} - n_t codes. Committed codes are never re-masked.

Confidence: s is the (guided, untempered) log-probability of the drawn code, as MaskGIT's
`selected_probs`. `choice_temperature` tau > 0 adds MaskGIT's annealed Gumbel noise to the
ranking (its default 4.5: `mask_by_random_topk` with temperature tau (1 - r)), so early steps
choose positions almost at random and later ones by confidence; tau = 0 (our default) ranks by
confidence alone. The noise only perturbs which positions are committed; the codes themselves
are drawn by inverse CDF (never float32 Gumbel-max). The loop is
`sample.parallel_decoding.decode_loop` (one `lax.while_loop`) with the `Planned` rule; NFE = T.
Step t draws with fold_in(rng, t), so w = 1 and w != 1 share their random numbers.

    out = maskgit.sample(model, params, vq_model, vq_params, labels, rng, steps=8, cfg=3.0)
    out.images [B, H, W, C]; out.tokens [B, N]; out.history [T, B] masks left after each step
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from paradigms.maskgit import gamma
from paradigms.raster_ar import prompt_tokens
from sample.categorical import sample_categorical
from sample.parallel_decoding import decode_loop
from sample.raster_ar import (TokenImageOutput, check_options, check_tokenizer, decode, guide,
                              stream_rows)


def mask_plan(N: int, steps: int) -> tuple:
  """(n_0, ..., n_{T-1}): the codes still masked after each of T steps from N masks (module
  doc): n_t = max(1, min(n_{t-1} - 1, floor(gamma((t + 1) / T) N))), n_{T-1} = 0."""
  if not 1 <= steps <= N:
    raise ValueError(f'steps={steps} must be in [1, N={N}] (each step reveals at least one of the '
                     'N codes); lower --steps')
  plan, left = [], N
  for t in range(steps - 1):
    left = max(1, min(left - 1, math.floor(gamma((t + 1) / steps) * N)))
    plan.append(left)
  return tuple(plan) + (0,)


@dataclasses.dataclass(frozen=True)
class Planned:
  """A `decode_loop` rule that commits n_{t-1} - n_t proposals at step t (`mask_plan`)."""
  plan: tuple  # masks left after each step

  def count(self, s_sorted, m0, i):
    m = jnp.sum(jnp.isfinite(s_sorted), axis=1)  # [B] masks before this step
    return m - jnp.asarray(np.asarray(self.plan, np.int32))[i]


@functools.partial(jax.jit, static_argnames=('model', 'steps', 'cfg', 'top_k', 'top_p',
                                             'temperature', 'choice_temperature'))
def generate_tokens(model, params, label, rng, *, steps: int = 8, cfg: float = 1.0,
                    top_k: int = 0, top_p: float = 1.0, temperature: float = 1.0,
                    choice_temperature: float = 0.0) -> TokenImageOutput:
  """The module doc's loop. model: a MaskGIT `TokenImageTransformer` (cfg.MASKED); label
  int32 [B, S] (all-zero rows are unconditional); cfg: the guidance weight w (1 = off).
  Returns a TokenImageOutput without images: tokens [B, N], nfe = T, rows, history [T, B]."""
  c = model.cfg
  if not c.MASKED:
    raise ValueError('a MaskGIT sampler needs a MaskGIT model (paradigms.maskgit), got a causal '
                     'raster AR one; use sample.raster_ar')
  B, N, S = label.shape[0], c.num_tokens, c.label_len
  check_options(temperature, top_k, top_p, c.codebook_size)
  if choice_temperature < 0:
    raise ValueError(f'choice_temperature={choice_temperature} must be >= 0 (0 = no noise)')
  plan = mask_plan(N, steps)
  rows = stream_rows(label, cfg)  # [R, S]
  prompt = prompt_tokens(c, rows)  # [R, S]

  def propose(rng, y, t):  # y [B, N] -> (y_hat [B, N], s [B, N], t + 1)
    y_rows = jnp.concatenate([y, y]) if cfg != 1.0 else y  # [R, N]
    logits, _ = model.apply({'params': params}, jnp.concatenate([prompt, y_rows], axis=1))
    g = guide(logits[:, S:], B, cfg)  # [B, N, V]
    k_draw, k_noise = jax.random.split(rng)
    y_hat = sample_categorical(k_draw, g, temperature or 1.0, top_k, top_p,
                               greedy=temperature == 0)
    logp = jax.nn.log_softmax(g.astype(jnp.float32), axis=-1)
    s = jnp.take_along_axis(logp, y_hat[..., None], axis=-1)[..., 0]  # [B, N]
    if choice_temperature:
      tau = choice_temperature * (1.0 - (t + 1) / steps)
      s = s + tau * jax.random.gumbel(k_noise, s.shape)
    return y_hat, s, t + 1

  y = jnp.full((B, N), c.mask_id, jnp.int32)
  region = jnp.ones((B, N), bool)
  y, nfe, history, _ = decode_loop(propose, y, rng, region, Planned(plan), steps, c.mask_id,
                                   carry=jnp.zeros((), jnp.int32))
  return TokenImageOutput(tokens=y, images=None, nfe=nfe,
                          rows=jnp.asarray(rows.shape[0], jnp.int32), history=history)


def sample(model, params, vq_model, vq_params, label, rng, *, steps: int = 8, cfg: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, temperature: float = 1.0,
           choice_temperature: float = 0.0) -> TokenImageOutput:
  """Draw one image per prompt row (label int32 [B, S]) in `steps` MaskGIT steps and decode it
  through the single-scale tokenizer. Returns tokens [B, N], images [B, H, W, C], nfe = T,
  rows (2B with CFG), history [T, B]."""
  check_tokenizer(model, vq_model)
  out = generate_tokens(model, params, jnp.asarray(label, jnp.int32), rng, steps=int(steps),
                        cfg=float(cfg), top_k=int(top_k), top_p=float(top_p),
                        temperature=float(temperature),
                        choice_temperature=float(choice_temperature))
  return out.replace(images=decode(vq_model, vq_params, out.tokens))
