"""HART: VAR's discrete scales plus a diffusion head for the continuous residual (Tang et al. 2024).

HART's hybrid tokenizer writes the encoder's continuous latent f [h, w, Cz] as the sum of the
multi-scale VQ reconstruction and a residual (HART sec. 3.2):
    f = f_hat + r,   f_hat = sum_k phi_k(up(e[r_k]))   (paradigms/vqvae.py),   r = f - f_hat
The transformer is VAR's (paradigms/next_scale.py) and models the discrete tokens r_1..r_K.
A small MLP diffusion head (MAR's, paradigms/nn/residual_head.py) models the residual of each of
the h*w = h_K w_K latent positions (a rectangle s_K x a s_K for images a = W/H times wider than
tall, as VAR's scales; next_scale.py) given
    z_i = h_i + E_tok[r_K,i]                                              (HART sec. 3.3)
where h_i [D] is the transformer's last-layer hidden state at the position that predicts token
i of the last scale and E_tok a learned embedding of that token. Training (both jointly):
    L = CE(VAR) + lambda E_{sigma, n} ||F(r_i + sigma n | sigma, z_i) - F*||^2     (MAR eq. 2)
with the flow objective (logit-normal t, paradigms/image_diffusion.py), each residual drawn
`diffusion_mul` times per step (MAR's diffusion batch multiplier; the head is cheap). Sampling
(sample/hybrid.py): VAR's scale-by-scale decoding, then the residuals in a few (8) solver steps,
then the image is decode(f_hat + r).

Batch: VAR's {'tokens' [B, L], 'inputs' [B, L - h_1 w_1, Cz], 'label' [B, S]} plus 'residual'
float32 [B, h_K w_K, Cz] (pipelines/sources.py with data.tokenizer_residual).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from paradigms import image_diffusion as idf
from paradigms import next_scale
from paradigms.nn.attention import KVCache
from paradigms.nn.layers import normal_init
from paradigms.nn.residual_head import HeadConfig, ResidualHead


TOKENIZED = True  # trains on the token batches of a VQ-VAE run (config.data.tokenizer)


@dataclasses.dataclass(frozen=True)
class HARTConfig(next_scale.VARConfig):
  """VAR's fields plus the residual head's (`config.model`)."""
  head_width: int = 256  # W of the MLP head
  head_depth: int = 3  # residual blocks (MAR: 3)
  head_freq_dim: int = 128

  def head(self) -> HeadConfig:
    return HeadConfig(token_dim=self.latent_dim, cond_dim=self.d_model, width=self.head_width,
                      depth=self.head_depth, freq_dim=self.head_freq_dim)

  @property
  def residual_len(self) -> int:
    """h_K w_K = h w: the latent positions, one residual vector each."""
    return self.scale_sizes[-1]

  def num_params(self) -> int:
    """Exact parameter count (tested against the initialised tree)."""
    return super().num_params() + self.codebook_size * self.d_model + self.head().num_params()


Config = HARTConfig


@dataclasses.dataclass(frozen=True)
class Options:
  """The loss's knobs (`config.loss`)."""
  label_dropout: float = 0.1  # CFG, as VAR
  head_weight: float = 1.0  # lambda
  diffusion_mul: int = 4  # noise draws per residual per step (MAR's diffusion_batch_mul)
  flow_mean: float = 0.0  # logit-normal t of the head's flow objective
  flow_std: float = 1.0

  def __post_init__(self):
    if not 0 <= self.label_dropout < 1:
      raise ValueError(f'loss.label_dropout={self.label_dropout} must be in [0, 1)')
    if self.head_weight < 0 or self.diffusion_mul < 1:
      raise ValueError(f'loss.head_weight={self.head_weight} must be >= 0 and '
                       f'loss.diffusion_mul={self.diffusion_mul} >= 1')

  def head_options(self) -> idf.Options:
    return idf.Options(objective='flow', flow_mean=self.flow_mean, flow_std=self.flow_std,
                       label_dropout=0.0)


class HART(nn.Module):
  """VAR with a residual head. `__call__` is VAR's (same arguments and outputs, so VAR's sampler
  drives it); `condition` builds the head's z; the head itself is `head_module(cfg)` applied to
  params['head']."""
  cfg: HARTConfig

  def setup(self):
    self.var = next_scale.VAR(self.cfg)
    self.token_embed = self.param('token_embed', normal_init(0.02, ('vocab', 'embed')),
                                  (self.cfg.codebook_size, self.cfg.d_model))
    self.head = ResidualHead(self.cfg.head())

  def init_cache(self, batch: int) -> KVCache:
    return next_scale.VAR(self.cfg, parent=None).init_cache(batch)

  def __call__(self, label, inputs=None, *, scale: int | None = None,
               cache: KVCache | None = None, features: bool | str = False):
    return self.var(label, inputs, scale=scale, cache=cache, features=features)

  def logits(self, h, label):
    """VAR's output head on hidden states h [B, n, D] -> [B, n, V] float32."""
    return self.var.logits(h, self.var.label_embedding(label))

  def condition(self, h_last, tokens_last):
    """z = h + E_tok[token]: h_last [B, n, D], tokens_last int32 [B, n] -> [B, n, D]."""
    return h_last.astype(jnp.float32) + self.token_embed[tokens_last].astype(jnp.float32)

  def init_all(self, label, inputs):
    """Touches every parameter (used by `init`)."""
    h, _ = self.var(label, inputs, features=True)
    n = self.cfg.residual_len
    z = self.condition(h[:, -n:], jnp.zeros(h.shape[:1] + (n,), jnp.int32))
    B = z.shape[0]
    x = jnp.zeros((B * n, self.cfg.latent_dim))
    return self.logits(h, label), self.head(x, jnp.zeros(B * n), z.reshape(B * n, -1))


def head_module(cfg: HARTConfig) -> ResidualHead:
  """The head alone, applied to params['head'] (the sampler's `Denoiser` seam uses it)."""
  return ResidualHead(cfg.head())


# --- The paradigm contract ---------------------------------------------------------------------

def build(cfg: HARTConfig) -> HART:
  return HART(cfg)


def example_batch(batch_size: int, data, model_cfg: HARTConfig) -> dict:
  """VAR's batch, whose 'residual' [B, h_K w_K, Cz] the head needs (data.tokenizer_residual)."""
  if not data.get('tokenizer_residual', False):
    raise ValueError('HART trains its head on the tokenizer residual f - f_hat: set '
                     '--config.data.tokenizer_residual=True')
  return next_scale.example_batch(batch_size, data, model_cfg)


def init(model: HART, rng, batch) -> dict:
  cfg = model.cfg
  B = batch['label'].shape[0]
  inputs = jnp.zeros((B, cfg.num_tokens - cfg.first_len, cfg.latent_dim), jnp.float32)
  return model.init(rng, jnp.zeros((B, cfg.label_len), jnp.int32), inputs, method='init_all')


def _losses(params, batch, rng, model: HART, opts: Options, label):
  """(token NLL [B, L], logits [B, L, V], head loss per drawn residual [B * n * mul])."""
  cfg = model.cfg
  next_scale._check_batch(model, batch)
  h, _ = model.apply({'params': params}, label, batch['inputs'], features=True)  # [B, L, D]
  logits = model.apply({'params': params}, h, label, method='logits')  # [B, L, V]
  target = jnp.take_along_axis(logits, batch['tokens'][..., None], axis=-1)[..., 0]
  nll = jax.nn.logsumexp(logits, axis=-1) - target  # [B, L]
  n = cfg.residual_len
  z = model.apply({'params': params}, h[:, -n:], batch['tokens'][:, -n:], method='condition')
  r = batch['residual']  # [B, n, Cz]
  if r.shape[1:] != (n, cfg.latent_dim):
    raise ValueError(f'residual {r.shape} does not match the last scale '
                     f'{cfg.scale_shapes[-1][0]}x{cfg.scale_shapes[-1][1]} = {n} positions x '
                     f'model.latent_dim={cfg.latent_dim}')
  m = opts.diffusion_mul
  x0 = jnp.repeat(r.reshape(-1, cfg.latent_dim), m, axis=0)  # [B n m, Cz]
  zz = jnp.repeat(z.reshape(-1, cfg.d_model), m, axis=0)  # [B n m, D]
  per, _ = idf.per_example_loss(params['head'], {'image': x0, 'label': zz}, rng,
                                model=head_module(cfg), opts=opts.head_options())
  return nll, logits, per


def loss(params, batch, rng, *, model: HART, **options):
  """CE over all L tokens + lambda * the head's diffusion loss (module doc). Returns (scalar,
  metrics)."""
  opts = Options(**options)
  r_drop, r_head = jax.random.split(rng)
  label = batch['label']
  if opts.label_dropout:
    keep = jax.random.uniform(r_drop, (label.shape[0], 1)) >= opts.label_dropout
    label = jnp.where(keep, label, 0)
  nll, logits, per = _losses(params, batch, r_head, model, opts, label)
  ce, head = nll.mean(), per.mean()
  acc = (jnp.argmax(logits, axis=-1) == batch['tokens']).astype(jnp.float32).mean()
  return ce + opts.head_weight * head, {'nll': ce, 'bits_per_token': ce / jnp.log(2.0),
                                        'accuracy': acc, 'head_mse': head}


def evaluate(params, batch, rng, *, model: HART, **options) -> dict:
  """Held-out sums: {'nats', 'tokens'} (bits per token of the discrete part) and
  {'head_mse_sum', 'count'} (the head's flow loss per residual, noise from `rng`)."""
  opts = Options(**options)
  nll, _, per = _losses(params, batch, rng, model, opts, batch['label'])
  return {'nats': nll.sum(), 'tokens': jnp.asarray(nll.size, jnp.float32),
          'head_mse_sum': per.sum(), 'count': jnp.asarray(per.size, jnp.float32)}
