"""HART sampling: VAR's scale-by-scale tokens, then the residual by a few diffusion-head steps.

    tokens, f_hat, h = VAR sampling (sample/next_scale.py, K passes, ramped CFG, top-k / top-p)
    z_i = h_i + E_tok[r_K,i]                    h_i: last-scale hidden state (conditional rows)
    r_i ~ p(r | z_i): `head_steps` solver steps of the MLP head on all B h_K w_K rows at once
    image = Decoder(f_hat + r)                                   (Tang et al. 2024, sec. 3.3)

The residual solver defaults to DPM-Solver++(2M) on a flow grid shifted toward low noise
(shift 0.3): the residual is small against unit noise, its flow path bends near t ~ s^2, and
8 uniform Euler steps shrink its spread (tests/test_residual_head.py measures both with the
exact Gaussian denoiser). Guidance acts on the token logits only (VAR's ramp); the head takes
the conditional rows' z.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct

from paradigms import image_diffusion as idf
from paradigms.hybrid import head_module
from sample import image_diffusion as diffusion
from sample import next_scale


@struct.dataclass
class HARTOutput:
  tokens: jax.Array  # [B, L] int32
  f_hat: jax.Array  # [B, h, w, Cz] the discrete reconstruction
  residual: jax.Array  # [B, h, w, Cz] the sampled continuous residual
  images: jax.Array  # [B, H, W, C] decode(f_hat + residual)
  nfe: jax.Array  # [] int32 transformer passes (K)
  head_nfe: jax.Array  # [] int32 head passes (over all B h_K w_K rows at once)


@functools.partial(jax.jit, static_argnames=('model', 'tokenizer', 'cfg', 'top_k', 'top_p',
                                             'temperature', 'head_sampler', 'head_steps',
                                             'head_shift'))
def sample_with(model, params, tokenizer: next_scale.Tokenizer, tok_params, label, rng, *,
                cfg: float = 1.0, top_k: int = 0, top_p: float = 1.0, temperature: float = 1.0,
                head_sampler: str = 'dpmpp_2m', head_steps: int = 8,
                head_shift: float = 0.3) -> HARTOutput:
  """`sample` over any tokenizer seam (see the module doc). label: int32 [B, S]."""
  c = model.cfg
  k_var, k_head = jax.random.split(rng)
  out = next_scale.sample_with(model, params, tokenizer, tok_params, label, k_var, cfg=cfg,
                               top_k=top_k, top_p=top_p, temperature=temperature,
                               return_hidden=True)
  n, B = c.residual_len, label.shape[0]
  z = model.apply({'params': params}, out.hidden, out.tokens[:, -n:], method='condition')
  sigmas = diffusion.flow_sigmas(head_steps, shift=head_shift)
  den = idf.Denoiser(head_module(c), 'flow')
  r = diffusion.sample(head_sampler, den, params['head'], sigmas, (B * n, c.latent_dim),
                       z.reshape(B * n, c.d_model), k_head)
  residual = r.x.reshape(out.f_hat.shape)
  images = tokenizer.decode(tok_params, out.f_hat + residual).astype(jnp.float32)
  return HARTOutput(tokens=out.tokens, f_hat=out.f_hat, residual=residual, images=images,
                    nfe=out.nfe, head_nfe=r.nfe)


def sample(model, params, vq_model, vq_params, label, rng, **options) -> HARTOutput:
  """Draw one image per label row (label int32 [B, S], all-zero = unconditional); options are
  `sample_with`'s (cfg, top_k, top_p, temperature, head_sampler, head_steps, head_shift)."""
  tok = vq_model if isinstance(vq_model, next_scale.Tokenizer) else next_scale.Tokenizer(vq_model)
  return sample_with(model, params, tok, vq_params, jnp.asarray(label, jnp.int32), rng, **options)
